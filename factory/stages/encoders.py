"""The image encoders moved to the core (:mod:`avatar4d.encoders`): the inference pipeline runs them too,
and the core never imports ``factory``. This module keeps the factory's import path."""

from avatar4d.encoders import (  # noqa: F401
    CLIP_MEAN,
    CLIP_STD,
    ENCODER_PRESETS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClipEncoderConfig,
    ClipImageEncoder,
    DinoEncoderConfig,
    DinoImageEncoder,
    EncoderConfig,
    ImageEncoders,
    preprocess_images,
)
