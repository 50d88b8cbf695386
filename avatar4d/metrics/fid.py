"""Fréchet Inception Distance (Heusel et al. 2017) through torchmetrics' ``FrechetInceptionDistance``.

``paper``: torch-fidelity's FID Inception-v3 (the TF-ported 2015-12-05 weights every published FID
uses), 2048-d pool3 features, its weights from a local file. ``tiny``: a small random CNN (seeded)
whose pooled activations are the features: FIDs of it compare runs with each other, never with
published numbers.

torchmetrics keeps the first and second moments of each set in float64 (sums, outer-product sums,
counts): :meth:`FrechetDistance.state` and :meth:`FrechetDistance.merge` move them between processes
(the evaluation's Ray workers each see a share of the frames) without keeping any features.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from avatar4d.metrics.config import FidConfig
from avatar4d.metrics.weights import read_weights_file

logger = logging.getLogger(__name__)


class TinyFeatureNet(nn.Module):
    """Random CNN features for the ``tiny`` preset: three stride-2 convolutions + global mean."""

    def __init__(self, num_features: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.num_features = num_features
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            width = max(num_features // 4, 4)
            self.net = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.ReLU(), nn.Conv2d(width, width * 2, 3, 2, 1),
                                     nn.ReLU(), nn.Conv2d(width * 2, num_features, 3, 2, 1))
        self.requires_grad_(False).eval()

    def forward(self, images: Tensor) -> Tensor:
        # images [N, 3, H, W] in [0, 1] → features [N, F]
        return self.net(images.float() * 2 - 1).mean(dim=(2, 3))


class FeaturePassThrough(nn.Module):
    """Precomputed features [N, F] handed to torchmetrics as they are (FIDs of given feature sets)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features.flatten(1)


class FrechetDistance:
    """FID between the ``real`` and the ``fake`` images added with :meth:`update`."""

    def __init__(self, features: nn.Module | None = None, *, inception_weights: str | Path | None = None,
                 device: str | torch.device = "cpu") -> None:
        from torchmetrics.image.fid import FrechetInceptionDistance

        if (features is None) == (inception_weights is None):
            raise ValueError("give either a feature network or the Inception weights file")
        if inception_weights is not None:
            # torch-fidelity reads the file with weights_only=False: it was checked to hold tensors only
            path, _ = read_weights_file(inception_weights, "FID Inception-v3")
            self.metric = FrechetInceptionDistance(feature=2048, normalize=True,
                                                   feature_extractor_weights_path=str(path))
        else:
            self.metric = FrechetInceptionDistance(feature=features, normalize=True)
        self.metric = self.metric.to(device)
        self.device = torch.device(device)

    @classmethod
    def from_config(cls, config: FidConfig, *, seed: int = 0, device: str | torch.device = "cpu") -> FrechetDistance:
        if config.inception_weights is not None:
            return cls(inception_weights=config.inception_weights, device=device)
        return cls(TinyFeatureNet(config.tiny_features, seed), device=device)

    @classmethod
    def for_features(cls, num_features: int) -> FrechetDistance:
        """FID of feature vectors given to :meth:`update` directly."""
        return cls(FeaturePassThrough(num_features))

    @torch.no_grad()
    def update(self, images: Tensor, *, real: bool) -> None:
        """Add images [N, 3, H, W] in [0, 1] (or features [N, F] for :meth:`for_features`)."""
        self.metric.update(images.to(self.device), real=real)

    def compute(self) -> float:
        """The distance (needs ≥ 2 images on each side)."""
        counts = int(self.metric.real_features_num_samples), int(self.metric.fake_features_num_samples)
        if min(counts) < 2:
            raise ValueError(f"FID needs at least 2 real and 2 generated images, got {counts[0]} and {counts[1]}")
        return float(self.metric.compute())

    def state(self) -> dict[str, Any]:
        """The accumulated moments (float64 tensors on the CPU), to merge elsewhere."""
        return {name: value.detach().cpu() for name, value in self.metric.metric_state.items()}

    def merge(self, state: dict[str, Any]) -> None:
        self.metric.merge_state({name: value.to(self.device) for name, value in state.items()})
        # torchmetrics' merge_state adds the moments but leaves two things ``update`` sets: its update
        # counter (compute warns at 0) and the features' dtype (compute casts the result to it)
        self.metric._update_count += 1
        if not hasattr(self.metric, "orig_dtype"):
            self.metric.orig_dtype = torch.float32
