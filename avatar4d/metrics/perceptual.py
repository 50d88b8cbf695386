"""LPIPS (Zhang et al. 2018) from the ``lpips`` package, with its trunk weights from a local file.

The package's linear calibration layers (v0.1) ship inside its wheel; the trunk (AlexNet for the
metric as published) is read from a local torchvision state dict, or randomly initialised
(``pnet_rand=True``: torchvision builds it without downloading). :func:`build_lpips` is the one
place that builds LPIPS: the VAE loss (``train.vae.losses``) and the evaluation use it.
"""

from __future__ import annotations

import logging
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar4d.errors import UserError
from avatar4d.metrics.weights import read_weights_file

logger = logging.getLogger(__name__)

#: LPIPS' AlexNet trunk shrinks a 32² image to 1² by its fourth layer; smaller inputs are upsampled to this
MIN_RESOLUTION = 64


def _trunk_key(lpips_key: str) -> str:
    """``sliceN.<index>.<param>`` of the lpips trunk → ``features.<index>.<param>`` of torchvision."""
    _, index, param = lpips_key.split(".", 2)
    return f"features.{index}.{param}"


def build_lpips(net: str, backbone: str | None, *, random_backbone: bool = False, seed: int = 0) -> nn.Module:
    """A frozen ``lpips.LPIPS`` (v0.1 calibration layers from the wheel) whose trunk is read from the
    local torchvision weights file ``backbone``, or random (drawn from ``seed``: the same trunk in
    every process) when ``random_backbone``."""
    import lpips

    if backbone is None and not random_backbone:
        raise UserError(f"LPIPS needs the local weights of its {net} trunk (torchvision state dict): set "
                        "--lpips-backbone PATH (nothing is downloaded)")
    with warnings.catch_warnings(), torch.random.fork_rng(devices=[]):
        warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")  # its deprecated pretrained=
        torch.manual_seed(seed)
        module = lpips.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    if backbone is not None:
        path, state = read_weights_file(backbone, "LPIPS backbone")
        trunk = module.net.state_dict()
        missing = [k for k in trunk if not isinstance(state, dict) or _trunk_key(k) not in state]
        if missing:
            raise UserError(f"{path} is not a torchvision {net} state dict (no {_trunk_key(missing[0])})")
        module.net.load_state_dict({k: state[_trunk_key(k)] for k in trunk})
        logger.info("LPIPS %s trunk loaded from %s", net, path)
    return module.eval().requires_grad_(False)


class LPIPSMetric(nn.Module):
    """Per-image LPIPS distance [N] of two image batches [N, 3, H, W] in [0, 1] (0 for identical images;
    symmetric). Images narrower than :data:`MIN_RESOLUTION` are upsampled (bilinear) first."""

    def __init__(self, net: str = "alex", backbone: str | None = None, *, random_backbone: bool = False,
                 seed: int = 0) -> None:
        super().__init__()
        self.lpips = build_lpips(net, backbone, random_backbone=random_backbone, seed=seed)

    @torch.no_grad()
    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        if prediction.shape != target.shape or prediction.ndim != 4:
            raise ValueError(f"expected two image batches [N, 3, H, W] of one shape, got {list(prediction.shape)} "
                             f"and {list(target.shape)}")
        side = max(prediction.shape[-1], MIN_RESOLUTION)
        if side != prediction.shape[-1]:
            prediction = F.interpolate(prediction, size=(side, side), mode="bilinear", align_corners=False)
            target = F.interpolate(target, size=(side, side), mode="bilinear", align_corners=False)
        # [N, 3, S, S] in [0, 1] → lpips' [-1, 1] → distances [N, 1, 1, 1]
        return self.lpips(prediction.float() * 2 - 1, target.float() * 2 - 1).reshape(-1)
