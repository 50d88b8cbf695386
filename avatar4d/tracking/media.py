"""Reading portraits and videos, writing overlay videos (PyAV: FFmpeg's codecs ship inside its wheel).

Every failure a user can cause becomes one :class:`~avatar4d.errors.UserError` line: a missing
file, a file that is neither an image nor a video, a corrupt file, a video without decodable
frames. PyAV and Pillow are imported when a function runs, never with this module.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from avatar4d.errors import UserError

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
TEXT_FORMATS = {"tty", "srt", "ass", "webvtt"}
VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".gif"}


@dataclasses.dataclass
class Media:
    """Decoded frames [N, H, W, 3] uint8 (RGB), frames per second (None for a still image), and the
    frame indices that failed to decode (they are kept as missing, never dropped silently)."""

    frames: np.ndarray
    fps: float | None
    path: Path
    undecodable: list[int] = dataclasses.field(default_factory=list)

    @property
    def is_video(self) -> bool:
        return self.fps is not None


def read_media(path: str | Path, *, max_frames: int | None = None, progress: bool = False) -> Media:
    """A portrait (PNG, JPEG, …) or every frame of a video, in order."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"file not found: {path}")
    if path.is_dir():
        raise UserError(f"{path} is a folder; give an image or a video file")
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty")
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _read_image(path)
    try:
        return _read_video(path, max_frames=max_frames, progress=progress)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 — not a video: maybe an image with an unusual name
        if path.suffix.lower() in VIDEO_SUFFIXES:
            raise UserError(f"{path} is a corrupt or truncated video ({_short(exc)})") from None
        try:
            return _read_image(path)
        except UserError:
            raise UserError(f"{path} is neither an image nor a video FFmpeg can read ({_short(exc)})") from None


def _short(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__


def _read_image(path: Path) -> Media:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:
        raise UserError(f"{path} is not an image or video avatar4d can read") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise UserError(f"{path} is a corrupt or truncated image ({_short(exc)})") from None
    return Media(frames=array[None], fps=None, path=path)


def _read_video(path: Path, *, max_frames: int | None, progress: bool) -> Media:
    import av
    from tqdm import tqdm

    with av.open(str(path)) as container:
        if not container.streams.video:
            raise UserError(f"{path} has no video stream")
        stream = container.streams.video[0]
        if container.format.name in TEXT_FORMATS:  # FFmpeg "plays" any text file as ANSI art
            raise UserError(f"{path} is neither an image nor a video (FFmpeg sees {container.format.name!r} text)")
        fps = float(stream.average_rate or stream.base_rate or 25)
        total = stream.frames or None
        frames: list[np.ndarray] = []
        undecodable: list[int] = []
        bar = tqdm(total=total, desc=f"reading {path.name}", unit="frame", disable=not progress)
        try:
            for packet in container.demux(stream):
                try:
                    decoded = packet.decode()
                except av.error.InvalidDataError:
                    undecodable.append(len(frames) + len(undecodable))
                    continue
                for frame in decoded:
                    frames.append(frame.to_ndarray(format="rgb24"))
                    bar.update(1)
                if max_frames is not None and len(frames) >= max_frames:
                    break
        finally:
            bar.close()
    if not frames:
        raise UserError(f"{path} has no decodable video frames")
    if undecodable:
        logger.warning("%s: %d packets could not be decoded", path, len(undecodable))
    return Media(frames=np.stack(frames[:max_frames]), fps=fps, path=path, undecodable=undecodable)


def write_video(path: str | Path, frames: np.ndarray, fps: float, *, codec: str = "libx264",
                progress: bool = False) -> Path:
    """Write frames [N, H, W, 3] uint8 as an H.264 MP4 (yuv420p; sides rounded up to even numbers)."""
    import av
    from tqdm import tqdm

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    height, width = frames.shape[1] + frames.shape[1] % 2, frames.shape[2] + frames.shape[2] % 2
    padded = np.zeros((frames.shape[0], height, width, 3), dtype=np.uint8)
    padded[:, :frames.shape[1], :frames.shape[2]] = frames
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=round(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for array in tqdm(padded, desc=f"writing {path.name}", unit="frame", disable=not progress):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")))
        container.mux(stream.encode())
    return path
