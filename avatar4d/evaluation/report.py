"""The evaluation report: ``report.json`` (every number, per case and per task) and ``report.html``
(the paper's table-1 layout with AvatarArtist's published numbers as a reference row, the extra
columns, and sample sheets: source, driving or true frames, generated frames).

Every string that reaches the page is HTML-escaped; the page is self-contained but for the sample
PNGs next to it (``samples/``), so a copied folder or an MLflow artifact view still shows it.
"""

from __future__ import annotations

import dataclasses
import datetime
import html
import json
import math
import platform
from pathlib import Path
from typing import Any

from avatar4d import __version__
from avatar4d.evaluation.protocol import COLUMNS, LOWER_IS_BETTER, CaseResult

#: AvatarArtist, CVPR 2025, table 1 (VFHQ, 100 clips; 512² frames, the paper's networks)
PAPER_REFERENCE = {"self": {"lpips": 0.26, "fid": 52.62, "id": 0.69, "aed": 0.032, "apd": 11.72},
                   "cross": {"fid": 89.3, "clip": 0.84, "akd": 2.58, "apd": 52.3}}
PAPER_COLUMNS = {"self": ("lpips", "fid", "id", "aed", "apd"), "cross": ("fid", "clip", "akd", "apd")}
LABELS = {"lpips": "LPIPS", "fid": "FID", "id": "ID", "aed": "AED", "apd": "APD", "akd": "AKD", "clip": "CLIP",
          "psnr": "PSNR (dB)", "ssim": "SSIM", "face_found": "face found"}


def _arrow(metric: str) -> str:
    return "↓" if metric in LOWER_IS_BETTER else "↑"


def _number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "–"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    return f"{value:.3f}" if abs(value) < 10 else f"{value:.2f}"


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None


@dataclasses.dataclass
class ModelResult:
    """One evaluated avatar maker: its summary per task and its cases."""

    name: str
    summary: dict[str, dict[str, float]]
    cases: list[CaseResult]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class EvalReport:
    models: list[ModelResult]
    meta: dict[str, Any]

    @staticmethod
    def environment() -> dict[str, Any]:
        import torch

        return {"avatar4d": __version__, "torch": torch.__version__, "python": platform.python_version(),
                "machine": platform.machine(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}

    def to_dict(self) -> dict[str, Any]:
        return {"meta": self.meta, "reference": {"name": "AvatarArtist (CVPR 2025, table 1, VFHQ)",
                                                 "metrics": PAPER_REFERENCE},
                "models": [{"name": m.name, "info": m.info,
                            "summary": {task: {k: _json_number(v) for k, v in row.items()}
                                        for task, row in m.summary.items()},
                            "cases": [{"task": c.task, "name": c.name, "source_domain": c.source_domain,
                                       "driving_domain": c.driving_domain, "frames": c.frames,
                                       "seconds": round(c.seconds, 3),
                                       "metrics": {k: _json_number(v) for k, v in c.metrics.items()}}
                                      for c in m.cases]} for m in self.models]}

    def write(self, out: str | Path) -> tuple[Path, Path]:
        """``<out>/report.json``, ``<out>/report.html`` and ``<out>/samples/*.png``."""
        from PIL import Image

        out = Path(out)
        (out / "samples").mkdir(parents=True, exist_ok=True)
        samples: list[tuple[str, str]] = []
        for m_index, model in enumerate(self.models):
            for c_index, case in enumerate(model.cases):
                if case.sample is None:
                    continue
                name = f"samples/{m_index}-{c_index}-{case.task}.png"
                Image.fromarray(case.sample).save(out / name)
                samples.append((f"{model.name}: {case.name}", name))
        json_path = out / "report.json"
        data = self.to_dict()
        data["samples"] = [{"caption": caption, "path": path} for caption, path in samples]
        json_path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
        html_path = out / "report.html"
        html_path.write_text(self.html(samples))
        return json_path, html_path

    def html(self, samples: list[tuple[str, str]]) -> str:
        esc = html.escape
        head = ("<tr><th rowspan=2>Method</th><th colspan=5>Self reenactment</th>"
                "<th colspan=4>Cross reenactment</th></tr><tr>"
                + "".join(f"<th>{LABELS[c]}{_arrow(c)}</th>" for task in ("self", "cross")
                          for c in PAPER_COLUMNS[task]) + "</tr>")

        def row(name: str, summary: dict[str, dict[str, float]], css: str = "") -> str:
            cells = "".join(f"<td>{_number(summary.get(task, {}).get(c))}</td>" for task in ("self", "cross")
                            for c in PAPER_COLUMNS[task])
            return f"<tr class='{css}'><th>{esc(name)}</th>{cells}</tr>"

        body = "".join(row(m.name, m.summary) for m in self.models)
        body += row("AvatarArtist (paper, VFHQ)", PAPER_REFERENCE, "reference")
        extra = []
        for task in ("self", "cross"):
            columns = [c for c in COLUMNS[task] if c not in PAPER_COLUMNS[task] and c != "fid"]
            header = "".join(f"<th>{LABELS[c]}{_arrow(c) if c != 'face_found' else ''}</th>" for c in columns)
            lines = "".join(f"<tr><th>{esc(m.name)}</th>"
                            + "".join(f"<td>{_number(m.summary.get(task, {}).get(c))}</td>" for c in columns)
                            + f"<td>{int(m.summary.get(task, {}).get('cases', 0))}</td>"
                            f"<td>{int(m.summary.get(task, {}).get('frames', 0))}</td></tr>" for m in self.models)
            extra.append(f"<h3>{task}-reenactment: more columns</h3><table><tr><th>Method</th>{header}"
                         f"<th>cases</th><th>frames</th></tr>{lines}</table>")
        figures = "".join(f"<figure><figcaption>{esc(caption)}</figcaption><img src='{esc(path)}' "
                          f"alt='{esc(caption)}'></figure>" for caption, path in samples)
        meta = "".join(f"<li><b>{esc(str(k))}</b>: {esc(str(v))}</li>" for k, v in self.meta.items())
        note = ("Metric networks: <b>tiny</b> (random weights): numbers compare the rows above with each other, "
                "not with the paper's." if self.meta.get("metrics_preset") == "tiny" else
                "Metric networks: the published ones, from local files.")
        return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>avatar4d evaluation</title>
<style>
body {{ font-family: sans-serif; margin: 24px; color: #222; }}
table {{ border-collapse: collapse; margin: 8px 0 20px; }}
th, td {{ border: 1px solid #999; padding: 4px 10px; text-align: center; }}
tr.reference {{ background: #eef; font-style: italic; }}
figure {{ display: block; margin: 12px 0; }} figcaption {{ font-weight: bold; }}
img {{ image-rendering: pixelated; max-width: 720px; }}
</style></head><body>
<h1>avatar4d evaluation</h1>
<h2 id="table1">Table 1 layout</h2>
<table id="metrics">{head}{body}</table>
<p>{note} ↓ lower is better, ↑ higher is better; – not measured.</p>
{''.join(extra)}
<h2>Samples</h2>{figures}
<h2>Run</h2><ul>{meta}</ul>
</body></html>
"""
