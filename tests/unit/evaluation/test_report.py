"""The report: JSON with every number (NaN as null) and the paper's reference row; an HTML page
with the table-1 layout, escaped names and the sample sheets next to it."""

from __future__ import annotations

import json
import math

import numpy as np

from avatar4d.evaluation.protocol import CaseResult
from avatar4d.evaluation.report import PAPER_REFERENCE, EvalReport, ModelResult


def _report() -> EvalReport:
    sample = np.zeros((20, 30, 3), np.uint8)
    cases = [CaseResult("self", "self/a", "pixar", "pixar", 3, {"psnr": 21.5, "akd": math.nan}, 0.5, sample),
             CaseResult("cross", "cross/a<-b", "pixar", "lego", 4, {"clip": 0.7}, 0.4, None)]
    summary = {"self": {"lpips": 0.31, "fid": 12.5, "id": 0.4, "aed": 0.05, "apd": 3.2, "psnr": 21.5,
                        "akd": math.nan, "cases": 1.0, "frames": 3.0},
               "cross": {"fid": 20.0, "clip": 0.7, "akd": 4.0, "apd": 5.0, "cases": 1.0, "frames": 4.0}}
    return EvalReport(models=[ModelResult("<b>model</b>", summary, cases)], meta={"metrics_preset": "tiny"})


def test_json_has_every_number_nan_as_null_and_the_reference_row(tmp_path):
    json_path, html_path = _report().write(tmp_path)
    data = json.loads(json_path.read_text())
    assert data["reference"]["metrics"] == PAPER_REFERENCE
    model = data["models"][0]
    assert model["summary"]["self"]["lpips"] == 0.31 and model["summary"]["self"]["akd"] is None
    assert model["cases"][0]["metrics"] == {"psnr": 21.5, "akd": None}
    assert data["samples"] == [{"caption": "<b>model</b>: self/a", "path": "samples/0-0-self.png"}]
    assert (tmp_path / "samples" / "0-0-self.png").is_file() and html_path.is_file()


def test_html_has_the_table_layout_escaped_names_and_the_samples(tmp_path):
    _, html_path = _report().write(tmp_path)
    page = html_path.read_text()
    assert "<b>model</b>" not in page and "&lt;b&gt;model&lt;/b&gt;" in page
    assert "Self reenactment" in page and "Cross reenactment" in page
    assert "AvatarArtist (paper, VFHQ)" in page and "52.62" in page and "<td>0.310</td>" in page
    assert "src='samples/0-0-self.png'" in page and "random weights" in page
