"""The inference pipeline (core, no Ray): portrait → avatar → driven frames from any camera.

See :mod:`avatar4d.pipeline.pipeline` for the flow; the CLI (``avatar4d create`` / ``animate``), the
Ray Serve deployments (``serve/``), the benchmark and the end-to-end demo call it.
"""

from avatar4d.pipeline.avatar import Avatar
from avatar4d.pipeline.cameras import cameras_from_degrees, parse_camera, turntable
from avatar4d.pipeline.checkpoints import PipelineCheckpoints, resolve_checkpoints
from avatar4d.pipeline.config import PIPELINE_PRESETS, PipelineConfig
from avatar4d.pipeline.driving import PRESETS, DrivingSequence, from_arrays, from_file, from_video, preset_sequence
from avatar4d.pipeline.images import InvalidImageError, decode_image, encode_png
from avatar4d.pipeline.pipeline import AvatarPipeline, make_job
from avatar4d.pipeline.stages import FrameStage, PortraitStage, RenderJob, TriplaneSampler, to_uint8

__all__ = [
    "PIPELINE_PRESETS", "PRESETS", "Avatar", "AvatarPipeline", "DrivingSequence", "FrameStage", "InvalidImageError",
    "PipelineCheckpoints", "PipelineConfig", "PortraitStage", "RenderJob", "TriplaneSampler", "cameras_from_degrees",
    "decode_image", "encode_png", "from_arrays", "from_file", "from_video", "make_job", "parse_camera",
    "preset_sequence", "resolve_checkpoints", "to_uint8", "turntable",
]
