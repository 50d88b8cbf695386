"""All of AvatarArtist's table-1 metrics over driven frames, with the networks built once.

Self-reenactment (the avatar of a subject driven by the same subject's frames; ground truth
exists): PSNR, SSIM, LPIPS against the true frames, FID of the generated against the true frames,
ID similarity to the source portrait, AKD, APD and AED against the true frames. Cross-reenactment
(a source from another domain driven by someone else's frames; no ground truth): FID against the
driving frames, CLIP score to the source portrait, AKD, APD (and AED) against the driving frames.
The paper reports self: LPIPS, FID, ID, AED, APD and cross: FID, CLIP, AKD, APD; the others are
extra columns.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

from avatar4d.errors import UserError
from avatar4d.metrics.config import MetricsConfig
from avatar4d.metrics.fid import FrechetDistance
from avatar4d.metrics.image import psnr, ssim
from avatar4d.metrics.motion import MotionTracker, MotionTracks, motion_distances

logger = logging.getLogger(__name__)

TASKS = ("self", "cross")


class MetricSuite:
    """Scores batches of driven frames; FID moments accumulate per task until :meth:`fid`."""

    def __init__(self, config: MetricsConfig, *, device: str | torch.device = "cpu",
                 tracker: MotionTracker | None = None) -> None:
        if config.require_pretrained and config.missing_weights():
            raise UserError(f"the paper metrics need local weights: set {', '.join(config.missing_weights())} "
                            "(or use the tiny metrics preset; nothing is downloaded)")
        from avatar4d.metrics.clip_score import ClipScore
        from avatar4d.metrics.identity import IdentitySimilarity
        from avatar4d.metrics.perceptual import LPIPSMetric

        self.config, self.device = config, torch.device(device)
        seed = config.init_seed
        self.lpips = LPIPSMetric(config.lpips.net, config.lpips.backbone, random_backbone=config.lpips.random_backbone,
                                 seed=seed).to(self.device)
        self.clip = ClipScore(config.clip, seed=seed).to(self.device)
        self.identity = IdentitySimilarity(config.identity, seed=seed).to(self.device)
        self.tracker = tracker or MotionTracker()
        self.reset()

    def reset(self) -> None:
        """Forget the FID moments (before the next model)."""
        config = self.config
        self.fids = {task: FrechetDistance.from_config(config.fid, seed=config.init_seed, device=self.device)
                     for task in TASKS}

    def track(self, frames: Tensor) -> MotionTracks:
        return self.tracker.track(frames)

    @torch.no_grad()
    def self_reenactment(self, source: Tensor, generated: Tensor, truth: Tensor,
                         tracks: tuple[MotionTracks, MotionTracks, MotionTracks] | None = None) -> dict[str, Tensor]:
        """Per-frame metrics [T] of generated frames [T, 3, H, W] against the true frames [T, 3, H, W],
        the source portrait [1, 3, H, W] (all in [0, 1]); adds both sets to the self FID."""
        generated, truth = generated.float().clamp(0, 1).cpu(), truth.float().clamp(0, 1).cpu()
        source_tracks, generated_tracks, truth_tracks = tracks or self._track_all(source, generated, truth)
        out = {"psnr": psnr(generated, truth), "ssim": ssim(generated, truth) if min(truth.shape[-2:]) >= 11
               else torch.full((truth.shape[0],), float("nan")),
               "lpips": self.lpips(generated.to(self.device), truth.to(self.device)).cpu(),
               "id": self._identity(source, source_tracks, generated, generated_tracks)}
        out.update(motion_distances(generated_tracks, truth_tracks, resolution=self.config.landmark_resolution))
        out["face_found"] = generated_tracks.present.float()
        self.fids["self"].update(truth, real=True)
        self.fids["self"].update(generated, real=False)
        return out

    @torch.no_grad()
    def cross_reenactment(self, source: Tensor, generated: Tensor, driving: Tensor,
                          tracks: tuple[MotionTracks, MotionTracks, MotionTracks] | None = None) -> dict[str, Tensor]:
        """Per-frame metrics [T] of generated frames driven by ``driving`` [T, 3, H, W] (another
        subject); adds the driving frames (real) and generated frames to the cross FID."""
        generated, driving = generated.float().clamp(0, 1).cpu(), driving.float().clamp(0, 1).cpu()
        _, generated_tracks, driving_tracks = tracks or self._track_all(source, generated, driving)
        out = {"clip": self.clip(source.to(self.device), generated.to(self.device)).cpu()}
        out.update(motion_distances(generated_tracks, driving_tracks, resolution=self.config.landmark_resolution))
        out["face_found"] = generated_tracks.present.float()
        self.fids["cross"].update(driving, real=True)
        self.fids["cross"].update(generated, real=False)
        return out

    def fid(self) -> dict[str, float]:
        """FID per task that saw at least 2 frames on each side."""
        out = {}
        for task, metric in self.fids.items():
            try:
                out[task] = metric.compute()
            except ValueError:
                continue
        return out

    def _track_all(self, source: Tensor, generated: Tensor, other: Tensor) -> tuple[MotionTracks, ...]:
        """One tracker call for the source, the generated and the reference frames."""
        frames = torch.cat([source.float().cpu(), generated, other]).clamp(0, 1)
        tracks = self.track(frames)
        counts = [source.shape[0], generated.shape[0], other.shape[0]]
        parts, start = [], 0
        for count in counts:
            parts.append(MotionTracks(tracks.landmarks[start:start + count], tracks.angles[start:start + count],
                                      tracks.expression[start:start + count], tracks.present[start:start + count]))
            start += count
        return tuple(parts)

    def _identity(self, source: Tensor, source_tracks: MotionTracks, generated: Tensor,
                  generated_tracks: MotionTracks) -> Tensor:
        """ID similarity [T]; NaN for frames (or a source) without a face."""
        out = torch.full((generated.shape[0],), float("nan"))
        if not bool(source_tracks.present[0]):
            return out
        found = generated_tracks.present
        if found.any():
            out[found] = self.identity(source[:1].to(self.device), source_tracks.landmarks[:1],
                                       generated[found].to(self.device), generated_tracks.landmarks[found]).cpu()
        return out
