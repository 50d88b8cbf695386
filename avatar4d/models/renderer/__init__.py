"""The motion-aware cross-domain renderer and its motion encoder.

    from avatar4d.models.renderer import RendererConfig, RENDERER_PRESETS, MotionAwareRenderer, MotionEncoder

``MotionAwareRenderer(RENDERER_PRESETS.get("tiny"))(source_image, parametric_triplane, motion,
target_mesh, camera, source_motion=...)`` → dict(image, image_raw, depth, opacity, features, planes);
``MotionEncoder(MOTION_ENCODER_PRESETS.get("tiny"))(driving_image)`` → [B, D]. Signatures and shapes:
:mod:`avatar4d.models.renderer.model` and :mod:`avatar4d.models.renderer.motion`.
"""

from avatar4d.models.renderer.config import RENDERER_PRESETS, RendererConfig
from avatar4d.models.renderer.model import OUTPUT_KEYS, MotionAwareRenderer, as_camera
from avatar4d.models.renderer.motion import (
    MOTION_ENCODER_PRESETS,
    MotionEncoder,
    MotionEncoderConfig,
    load_motion_encoder,
)

__all__ = [
    "MOTION_ENCODER_PRESETS",
    "OUTPUT_KEYS",
    "RENDERER_PRESETS",
    "MotionAwareRenderer",
    "MotionEncoder",
    "MotionEncoderConfig",
    "RendererConfig",
    "as_camera",
    "load_motion_encoder",
]
