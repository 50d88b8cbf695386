"""Learning measured on identities a model never saw: held-out pairs rendered from several cameras.

A held-out set is a ``pairs.lance`` made with another run seed than the training data (other z,
so other identities), typically by the procedural world, whose triplanes are ground truth. A
:class:`HeldOutScorer` renders any candidate triplanes of those rows exactly as the VAE trainer
renders (each row's generator decoder and renderer, the row's own expression mesh composed into
the frontal plane) from a fan of cameras, and compares them with the renders of the true
triplanes: PSNR of the colours over the whole image, and the mean depth error where the true
render is opaque. Baselines are triplanes too (the mean training triplane, an untrained model's
output), so every number is measured the same way.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from torch import Tensor

from avatar4d.data.schema import dataset_uri
from avatar4d.geometry.camera import orbit_camera
from train.vae.renderers import DomainRenderers, GeneratorIndex

DEFAULT_YAWS = (-0.6, -0.3, 0.0, 0.3, 0.6)
COLUMNS = ["sample_id", "triplane", "face_params", "generator_sha256", "domain"]


@dataclasses.dataclass
class HeldOutRows:
    """Rows of a pairs dataset in dataset order: ids, true triplanes [N, 4, C, R, R] (float32),
    face parameters [N, D], generator hashes and domains."""

    sample_ids: list[str]
    triplanes: Tensor
    face_params: Tensor
    shas: list[str]
    domains: list[str]

    @classmethod
    def load(cls, data: str | Path) -> HeldOutRows:
        from avatar4d.data.reader import LanceShardReader

        reader = LanceShardReader(dataset_uri(str(data), "pairs"), columns=COLUMNS, batch_size=256, shuffle=False)
        parts = list(reader)
        return cls(sample_ids=[s for p in parts for s in p["sample_id"]],
                   triplanes=torch.cat([p["triplane"].float() for p in parts]),
                   face_params=torch.cat([p["face_params"].float() for p in parts]),
                   shas=[s for p in parts for s in p["generator_sha256"]],
                   domains=[d for p in parts for d in p["domain"]])


@dataclasses.dataclass
class Score:
    psnr: float  # dB, colours in [0, 1] over every pixel of every view
    depth_error: float  # mean |depth − true depth| (world units) where the true render is opaque

    def __str__(self) -> str:
        return f"PSNR {self.psnr:.2f} dB, depth error {self.depth_error:.4f}"


class HeldOutScorer:
    """Renders triplanes of the held-out rows through their generators and scores them against the truth."""

    def __init__(self, rows: HeldOutRows, generator_roots: list[str | Path], *, yaws: tuple[float, ...] = DEFAULT_YAWS,
                 pitch: float = 0.1, resolution: int = 32, device: str = "cpu") -> None:
        self.rows = rows
        self.device = torch.device(device)
        self.renderers = DomainRenderers(GeneratorIndex(list(generator_roots)), self.device)
        self.vertices = self.renderers.vertices(rows.face_params.to(self.device))  # [N, V, 3]
        count = len(yaws)
        self.cameras = orbit_camera(torch.tensor(yaws), torch.full((count,), pitch), torch.zeros(count)).to(self.device)
        self.resolution = resolution
        self.truth = self.render(rows.triplanes)

    @torch.no_grad()
    def render(self, triplanes: Tensor) -> dict[str, Tensor]:
        """triplanes [N, 4, C, R, R] → rgb [N, K, 3, r, r] in [0, 1], depth and opacity [N, K, 1, r, r]."""
        if triplanes.shape[0] != len(self.rows.shas):
            raise ValueError(f"{triplanes.shape[0]} triplanes for {len(self.rows.shas)} held-out rows")
        out: dict[str, list[Tensor]] = {"rgb": [], "depth": [], "opacity": []}
        count = self.cameras.batch_size
        for index, (sha, domain) in enumerate(zip(self.rows.shas, self.rows.domains)):
            renderer = self.renderers.get(sha, domain)
            planes = renderer.planes(triplanes[index:index + 1].to(self.device).float(),
                                     self.vertices[index:index + 1]).expand(count, -1, -1, -1, -1)
            rendered = renderer.render(planes, self.cameras, self.resolution)
            out["rgb"].append((rendered.rgb.clamp(-1, 1) + 1) / 2)
            out["depth"].append(rendered.depth)
            out["opacity"].append(rendered.opacity)
        return {name: torch.stack(values) for name, values in out.items()}

    def score(self, triplanes: Tensor) -> Score:
        rendered = self.render(triplanes)
        mse = (rendered["rgb"] - self.truth["rgb"]).square().mean().clamp_min(1e-12)
        solid = self.truth["opacity"] > 0.5
        depth_error = (rendered["depth"] - self.truth["depth"]).abs()[solid].mean()
        return Score(psnr=float(-10 * math.log10(float(mse))), depth_error=float(depth_error))


def mean_triplane(data: str | Path) -> Tensor:
    """The mean triplane of a pairs dataset [4, C, R, R] (the constant predictor baseline)."""
    return HeldOutRows.load(data).triplanes.mean(0)
