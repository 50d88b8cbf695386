"""Video/image I/O: frame-exact round trips and one-line errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest

from avatar4d.errors import UserError
from avatar4d.tracking.media import read_media, write_video


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    gen = np.random.default_rng(0)
    frames = np.zeros((12, 48, 64, 3), dtype=np.uint8)
    for i in range(12):  # a bright square moving right: the frame order is checkable after lossy coding
        frames[i, 10:30, 4 * i:4 * i + 12] = 255
    return frames + gen.integers(0, 8, frames.shape, dtype=np.uint8)


@pytest.mark.parametrize("suffix", [".mp4", ".mkv"])
def test_video_round_trip_keeps_every_frame_in_order(tmp_path, clip, suffix):
    path = write_video(tmp_path / f"clip{suffix}", clip, fps=12)
    media = read_media(path)
    assert media.is_video and media.fps == pytest.approx(12) and media.frames.shape == clip.shape
    centres = [(media.frames[i, :, :, 0] > 128).nonzero()[1].mean() for i in range(12)]
    assert np.allclose(centres, 4 * np.arange(12) + 5.5, atol=2.0), centres  # 4 px apart
    assert np.abs(media.frames.astype(int) - clip).mean() < 12
    assert read_media(path, max_frames=5).frames.shape[0] == 5


def test_image_is_one_frame(tmp_path, clip):
    from PIL import Image

    Image.fromarray(clip[0]).save(tmp_path / "face.png")
    media = read_media(tmp_path / "face.png")
    assert not media.is_video and media.frames.shape == (1, 48, 64, 3)
    assert np.array_equal(media.frames[0], clip[0])


def _error(path) -> str:
    with pytest.raises(UserError) as info:
        read_media(path)
    message = str(info.value)
    assert "\n" not in message and len(message) < 300
    return message


def test_bad_inputs_get_one_line_errors(tmp_path, clip):
    assert "not found" in _error(tmp_path / "missing.mp4")
    assert "folder" in _error(tmp_path)
    (tmp_path / "empty.mp4").write_bytes(b"")
    assert "empty" in _error(tmp_path / "empty.mp4")
    (tmp_path / "notes.txt").write_text("hello, this is not a video\n" * 20)
    assert "neither an image nor a video" in _error(tmp_path / "notes.txt")
    write_video(tmp_path / "clip.mp4", clip, fps=12)
    data = (tmp_path / "clip.mp4").read_bytes()
    (tmp_path / "cut.mp4").write_bytes(data[: len(data) // 2])  # the index (moov) is at the end: gone
    assert "corrupt or truncated video" in _error(tmp_path / "cut.mp4")
    write_video(tmp_path / "clip.mkv", clip, fps=12)
    data = bytearray((tmp_path / "clip.mkv").read_bytes())
    data[700:] = bytes(len(data) - 700)  # header intact, every frame's data zeroed
    (tmp_path / "zeroed.mkv").write_bytes(bytes(data))
    assert "no decodable video frames" in _error(tmp_path / "zeroed.mkv")
    png = tmp_path / "face.png"
    from PIL import Image

    Image.fromarray(clip[0]).save(png)
    (tmp_path / "cut.png").write_bytes(png.read_bytes()[:200])
    assert "corrupt or truncated image" in _error(tmp_path / "cut.png")


def test_tracking_imports_without_pyav_or_pillow():
    """PyAV and Pillow are imported when a function runs: avatar4d.tracking imports with torch + numpy."""
    import subprocess
    import sys

    code = ("import sys\nclass Block:\n    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('av', 'PIL'):\n            raise ImportError(name)\n"
            "sys.meta_path.insert(0, Block())\nimport avatar4d.tracking, avatar4d.tracking.media, "
            "avatar4d.tracking.output, avatar4d.tracking.train_regressor, avatar4d.commands.track\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
