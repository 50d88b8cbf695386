"""The paper's evaluation metrics (AvatarArtist §4, table 1), batched, CPU or GPU.

- :mod:`~avatar4d.metrics.image`: PSNR, SSIM (torchmetrics);
- :mod:`~avatar4d.metrics.perceptual`: LPIPS (the ``lpips`` package; trunk weights from a local file);
- :mod:`~avatar4d.metrics.fid`: FID (torchmetrics + torch-fidelity's Inception-v3 from a local file);
- :mod:`~avatar4d.metrics.clip_score`: CLIP score (open_clip, local weights);
- :mod:`~avatar4d.metrics.identity`: ID similarity (ArcFace IResNet, local ``backbone.pth``);
- :mod:`~avatar4d.metrics.motion`: AKD, APD, AED from the face tracker;
- :mod:`~avatar4d.metrics.suite`: all of them over self- and cross-reenactment frames.

Each network has a ``tiny`` randomly initialised variant (:data:`METRIC_PRESETS`), so tests never
download. Heavy libraries are imported when a metric is built, not with this package.
"""

from avatar4d.metrics.config import (
    METRIC_PRESETS,
    ClipScoreConfig,
    FidConfig,
    IdentityConfig,
    LpipsConfig,
    MetricsConfig,
)
from avatar4d.metrics.image import psnr, ssim

__all__ = ["METRIC_PRESETS", "ClipScoreConfig", "FidConfig", "IdentityConfig", "LpipsConfig", "MetricsConfig",
           "psnr", "ssim"]
