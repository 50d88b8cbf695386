"""Batched fitting of cameras and morphable-model coefficients to 2D landmarks.

Per frame: yaw, pitch, roll and a camera-frame translation (:mod:`avatar4d.tracking.pose`),
expression coefficients and the jaw opening; identity coefficients either per frame (independent
portraits) or one row shared by all frames (a video). The objective is a MAP estimate: squared
landmark residuals in pixels of a ``reference_resolution`` image over ``landmark_sigma_px``²,
Gaussian priors on the coefficients and, for videos, squared second differences (accelerations) of
pose and expression over three consecutive frames that all have a face: steady motion is not pulled
back, jitter is damped. Frames without a face (``present`` false) take no part and come back as
NaN: they are reported, never invented.

The optimiser is Adam with autograd gradients: a rigid stage (pose only), then everything, with a
cosine-decayed step, all frames in one batch. Landmarks are evaluated on a copy of the head
restricted to its 68 landmark vertices when the model's deformation is per-vertex (the procedural
head, FaceVerse; checked numerically against the full mesh), else on the full mesh (FLAME, whose
jaw joint is regressed from the whole mesh).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math

import torch
from torch import Tensor, nn

from avatar4d.config import Config
from avatar4d.geometry.camera import Camera
from avatar4d.geometry.morphable import FaceParams, MorphableModel
from avatar4d.tracking.pose import CameraFraming, HeadPose, pose_camera

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class FitConfig(Config):
    """Optimisation settings. Pixel quantities are in pixels of a ``reference_resolution`` image."""

    rigid_iterations: int = 60
    iterations: int = 240
    learning_rate: float = 0.03
    final_learning_rate: float = 0.001
    reference_resolution: int = 512
    landmark_sigma_px: float = 2.0
    identity_std: float = 1.5
    expression_std: float = 0.6
    jaw_std: float = 0.2
    translation_std: float = 0.1
    smooth_pose: float = 0.0  # weight of (pose_{t+1} − 2 pose_t + pose_{t−1})² per rad² / unit² (videos)
    smooth_expression: float = 0.0
    robust_px: float | None = None  # Huber threshold on residual norms (pixels); None = plain squares
    cpu_threads: int | None = 1  # torch threads while fitting on a CPU: the tensors are tiny, and on a busy
    # 2-core machine 2 threads made a 64-frame fit 18× slower than 1 (52 s vs 2.9 s); None = leave as is

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.rigid_iterations < 0:
            raise ValueError("iterations must be >= 1 and rigid_iterations >= 0")
        if min(self.learning_rate, self.final_learning_rate, self.landmark_sigma_px) <= 0:
            raise ValueError("learning rates and landmark_sigma_px must be > 0")


@dataclasses.dataclass
class FitResult:
    """Fitted values per frame ([N, ...]; rows of frames without a face are NaN).

    ``landmarks``: the fitted model's 68 landmarks projected to normalised image coordinates
    [N, 68, 2] (x right, y down, in [0, 1] across the image); ``error_px``: mean distance to the
    target landmarks in pixels of a ``reference_resolution`` image [N].
    """

    pose: HeadPose
    camera: Camera
    params: FaceParams
    landmarks: Tensor
    present: Tensor
    error_px: Tensor
    reference_resolution: int

    @property
    def missing_frames(self) -> list[int]:
        return [int(i) for i in torch.nonzero(~self.present).flatten()]


def landmark_head(head: MorphableModel) -> MorphableModel:
    """A copy of ``head`` whose per-vertex constants are cut to the 68 landmark vertices (so
    ``vertices`` costs 68 vertices, not thousands), or ``head`` itself when the cut changes the
    landmarks (a deformation that is not per-vertex, barycentric landmarks)."""
    if getattr(head, "landmark_barycentrics", None) is not None or hasattr(head, "joint_regressor"):
        return head
    indices = head.landmark_indices
    count = head.num_vertices
    small = copy.copy(head)
    small._buffers = dict(head._buffers)  # noqa: SLF001 — a shallow module copy with its own buffer table
    for name, value in head._buffers.items():
        if value is not None and value.ndim >= 1 and value.shape[0] == count:
            small._buffers[name] = value[indices]
    small._buffers["_landmark_indices"] = torch.arange(indices.numel(), device=indices.device)
    small._buffers["_faces"] = torch.zeros(1, 3, dtype=torch.long, device=indices.device)
    generator = torch.Generator().manual_seed(0)
    params = head.random_params(2, generator=generator)
    with torch.no_grad():
        full = head.landmarks(head.vertices(params))
        cut = small.landmarks(small.vertices(params))
    if not torch.allclose(full, cut, atol=1e-5):
        logger.debug("%s: landmark-only evaluation differs from the full mesh; using the full mesh",
                     type(head).__name__)
        return head
    return small


class _Variables(nn.Module):
    """The optimised tensors: pose [N, 3] + [N, 3], identity [1 or N, Ni], expression [N, Ne], jaw [N, 1]."""

    def __init__(self, frames: int, identity_rows: int, head: MorphableModel, dtype: torch.dtype,
                 device: torch.device) -> None:
        super().__init__()
        zeros = lambda *shape: nn.Parameter(torch.zeros(*shape, dtype=dtype, device=device))  # noqa: E731
        self.angles = zeros(frames, 3)
        self.translation = zeros(frames, 3)
        self.identity = zeros(identity_rows, head.identity_dim)
        self.expression = zeros(frames, head.expression_dim)
        self.jaw = zeros(frames, 1)
        self.supports_jaw = head.supports_jaw

    def pose(self) -> HeadPose:
        return HeadPose(self.angles[:, 0], self.angles[:, 1], self.angles[:, 2], self.translation)

    def params(self) -> FaceParams:
        frames = self.expression.shape[0]
        jaw = torch.cat([self.jaw if self.supports_jaw else self.jaw.detach() * 0,
                         self.jaw.new_zeros(frames, 2)], dim=-1)  # [N, 3] (only the opening is fitted)
        return FaceParams(identity=self.identity.expand(frames, -1), expression=self.expression, jaw=jaw)


def project_landmarks(head: MorphableModel, params: FaceParams, camera: Camera) -> Tensor:
    """Normalised image coordinates [N, 68, 2] of the head's landmarks for ``params`` seen by ``camera``."""
    points = head.landmarks(head.vertices(params))  # [N, 68, 3]
    uv, _ = camera.project(points.to(camera.cam2world))
    return uv


class LandmarkFitter:
    """Fits a morphable head and cameras to landmarks; build once per head, call per batch/video."""

    def __init__(self, head: MorphableModel, config: FitConfig | None = None,
                 framing: CameraFraming | None = None) -> None:
        self.head = head
        self.small_head = landmark_head(head)
        self.config = config or FitConfig()
        self.framing = framing or CameraFraming.default()

    def _loss(self, variables: _Variables, targets: Tensor, present: Tensor, video: bool) -> tuple[Tensor, Tensor]:
        """Total loss and per-frame residual norms [N, 68] in reference pixels."""
        cfg = self.config
        camera = pose_camera(variables.pose(), self.framing)
        projected = project_landmarks(self.small_head, variables.params(), camera)  # [N, 68, 2]
        residual = (projected - targets).nan_to_num(0.0) * cfg.reference_resolution  # [N, 68, 2] px
        norms = residual.square().sum(-1).add(1e-12).sqrt()  # [N, 68]
        if cfg.robust_px is None:
            data = norms.square()
        else:
            data = torch.nn.functional.huber_loss(norms, torch.zeros_like(norms), delta=cfg.robust_px,
                                                  reduction="none") * 2
        weight = present.to(norms.dtype)  # [N]
        loss = 0.5 * (data.sum(-1) * weight).sum() / cfg.landmark_sigma_px ** 2
        identity_weight = weight.sum() if variables.identity.shape[0] == 1 else weight[:, None]
        loss = loss + 0.5 * (variables.identity.square() * identity_weight).sum() / cfg.identity_std ** 2
        loss = loss + 0.5 * (variables.expression.square().sum(-1) * weight).sum() / cfg.expression_std ** 2
        loss = loss + 0.5 * (variables.jaw.square().sum(-1) * weight).sum() / cfg.jaw_std ** 2
        loss = loss + 0.5 * (variables.translation.square().sum(-1) * weight).sum() / cfg.translation_std ** 2
        if video and targets.shape[0] > 2:
            # second differences (accelerations): steady motion is not pulled back, jitter is damped
            triple = (present[2:] & present[1:-1] & present[:-2]).to(norms.dtype)  # [N-2]
            pose = torch.cat([variables.angles, variables.translation], dim=-1)
            coeffs = torch.cat([variables.expression, variables.jaw], dim=-1)
            loss = loss + cfg.smooth_pose * (pose.diff(n=2, dim=0).square().sum(-1) * triple).sum()
            loss = loss + cfg.smooth_expression * (coeffs.diff(n=2, dim=0).square().sum(-1) * triple).sum()
        return loss / weight.sum().clamp_min(1.0), norms

    def fit(self, landmarks: Tensor, present: Tensor | None = None, *, shared_identity: bool = False) -> FitResult:
        """Fit frames' landmarks [N, 68, 2] (normalised image coordinates; ``present`` [N] bool
        marks frames with a face). ``shared_identity``: one identity for all frames and temporal
        smoothing (a video); otherwise each frame is an independent portrait."""
        if landmarks.ndim != 3 or landmarks.shape[1:] != (68, 2):
            raise ValueError(f"landmarks must be [N, 68, 2], got {tuple(landmarks.shape)}")
        frames = landmarks.shape[0]
        dtype = torch.float32
        device = self.head.template.device
        targets = landmarks.to(device=device, dtype=dtype)
        present = (torch.ones(frames, dtype=torch.bool) if present is None else present.bool()).to(device)
        present = present & torch.isfinite(targets).all(-1).all(-1)
        variables = _Variables(frames, 1 if shared_identity else frames, self.head, dtype, device)
        cfg = self.config
        if present.any():
            threads = torch.get_num_threads()
            if cfg.cpu_threads is not None and device.type == "cpu":
                torch.set_num_threads(cfg.cpu_threads)
            try:
                rigid = [variables.angles, variables.translation]
                self._run(variables, rigid, cfg.rigid_iterations, targets, present, shared_identity)
                self._run(variables, list(variables.parameters()), cfg.iterations, targets, present,
                          shared_identity)
            finally:
                torch.set_num_threads(threads)
        with torch.no_grad():
            _, norms = self._loss(variables, targets, present, shared_identity)
            pose = variables.pose().detach()
            camera = pose_camera(pose, self.framing)
            params = variables.params()
            params = FaceParams(params.identity.detach().clone(), params.expression.detach(), params.jaw.detach())
            fitted = project_landmarks(self.head, params, camera)
        missing = ~present
        nan = float("nan")
        for tensor in (pose.yaw, pose.pitch, pose.roll, pose.translation, camera.cam2world, params.identity,
                       params.expression, params.jaw, fitted):
            tensor[missing] = nan
        error = norms.mean(-1).masked_fill(missing, nan)
        return FitResult(pose=pose, camera=camera, params=params, landmarks=fitted, present=present.cpu(),
                         error_px=error, reference_resolution=cfg.reference_resolution)

    def _run(self, variables: _Variables, parameters: list[nn.Parameter], steps: int, targets: Tensor,
             present: Tensor, video: bool) -> None:
        if steps == 0:
            return
        cfg = self.config
        optimizer = torch.optim.Adam(parameters, lr=cfg.learning_rate)
        for step in range(steps):
            progress = step / max(1, steps - 1)
            lr = cfg.final_learning_rate + 0.5 * (cfg.learning_rate - cfg.final_learning_rate) * (
                1 + math.cos(math.pi * progress))
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad(set_to_none=True)
            loss, _ = self._loss(variables, targets, present, video)
            loss.backward()
            optimizer.step()
