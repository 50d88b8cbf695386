"""``avatar4d track`` end to end on a world clip: files written, frames without a face listed,
one-line errors for bad input, ``--help`` without torch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from avatar4d.cli import main
from avatar4d.tracking.media import write_video
from avatar4d.tracking.world_data import world_video


@pytest.fixture(scope="module")
def clip_path(tmp_path_factory) -> tuple:
    torch.set_num_threads(2)
    clip = world_video(8, seed=11)
    frames = (clip.images.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)  # [8, 64, 64, 3]
    blank = np.zeros_like(frames[:1])
    frames = np.concatenate([frames[:3], blank, frames[3:5], blank, frames[5:]])  # no face at 3 and 6
    path = write_video(tmp_path_factory.mktemp("clip") / "drive.mp4", frames, fps=10)
    return path, frames


def test_track_video_writes_json_and_overlays(clip_path, tmp_path):
    path, frames = clip_path
    out = tmp_path / "out"
    assert main(["track", str(path), "--out", str(out), "--iterations", "80"]) == 0
    document = json.loads((out / "tracking.json").read_text())
    assert document["kind"] == "video" and document["frames"] == 10 and document["missing_frames"] == [3, 6]
    records = document["per_frame"]
    assert [r["face"] for r in records] == [i not in (3, 6) for i in range(10)]
    assert "camera" not in records[3] and len(records[0]["camera"]["label25"]) == 25
    assert len(records[0]["landmarks_fitted_px"]) == 68 and records[0]["coefficients"]["head"] == "procedural"
    identities = {tuple(r["coefficients"]["identity"]) for r in records if r["face"]}
    assert len(identities) == 1  # one identity for the whole video
    assert (out / "overlay.png").stat().st_size > 1000 and (out / "overlay.mp4").stat().st_size > 1000


def test_bad_input_is_one_line(tmp_path, capsys):
    from PIL import Image

    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8)).save(tmp_path / "black.png")
    (tmp_path / "notes.txt").write_text("not a video\n" * 10)
    for argv, expected in (((str(tmp_path / "black.png"),), "no face found in the image"),
                           ((str(tmp_path / "notes.txt"),), "neither an image nor a video"),
                           ((str(tmp_path / "nothing.mp4"),), "file not found"),
                           ((str(tmp_path / "black.png"), "--head", "flame"), "--head flame needs --head-model")):
        assert main(["track", *argv, "--out", str(tmp_path / "o")]) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("avatar4d: error:") and expected in lines[0], lines


def test_track_help_does_not_import_torch():
    code = ("import sys\nfrom avatar4d.cli import main\ntry:\n    main(['track', '--help'])\nexcept SystemExit as e:\n"
            "    assert e.code == 0\nassert 'torch' not in sys.modules\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
