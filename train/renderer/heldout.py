"""Scoring a trained renderer on held-out multiview identities of the procedural world (ground truth).

For every held-out row one (source, target) view pair is drawn with a fixed seed (other camera; other
expression in dynamic rows). Reenactment PSNR of the renderer's final image against the target view is
compared with two baselines measured on the same pairs:

- ``source``: the source image itself;
- ``parametric``: the renderer's input triplane (the parametric triplane as the renderer reads it,
  :func:`train.renderer.task.degrade`) placed through the target mesh and rendered from the target
  camera by the row's own domain generator (decoder + super-resolution), i.e. the un-refined rendering.

:meth:`RendererHeldOut.identity_leakage` drives identity A with identity B's driving frame: the target
mesh is A's identity with B's expression, whose world rendering is the cross-reenactment ground truth.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from avatar4d.data.schema import dataset_uri
from avatar4d.geometry.camera import Camera
from avatar4d.rendering.parametric import ParametricTriplane
from train.renderer.data import RendererBatch, pick_views
from train.renderer.task import COLUMNS, RendererModel, RendererTask, degrade, psnr


@dataclasses.dataclass
class LeakageScore:
    """dB: output vs the cross-reenactment truth, output vs B's driving frame; mean |Δ| of the output
    when only the driving frame changes (A's own → B's)."""

    psnr_to_truth: float
    psnr_to_driver: float
    expression_change: float


class RendererHeldOut:
    """Held-out rows of ``<data>/multiview.lance`` with fixed view pairs, and the generators that made them."""

    def __init__(self, data: str | Path, task: RendererTask, *, seed: int = 0) -> None:
        from avatar4d.data.reader import LanceShardReader
        from avatar4d.generators import load_generator_checkpoint
        from train.vae.renderers import GeneratorIndex

        uri = dataset_uri(str(data), "multiview")
        reader = LanceShardReader(uri, columns=COLUMNS, batch_size=1 << 16)
        rows = next(iter(reader))
        self.task = task
        self.batch: RendererBatch = pick_views(rows, torch.Generator().manual_seed(seed))
        self.shas: list[str] = list(rows["generator_sha256"])
        index = GeneratorIndex([str(Path(data) / "generators")])
        self.generators = {sha: load_generator_checkpoint(index.find(sha, domain), head=task.head)[0].eval()
                           for sha, domain in zip(self.shas, rows["domain"])}

    def __len__(self) -> int:
        return len(self.shas)

    @torch.no_grad()
    def world_render(self, triplane: Tensor, face_params: Tensor, camera: Tensor) -> Tensor:
        """Final images [B, 3, S, S] of stacked triplanes through meshes and cameras, by each row's generator."""
        images = []
        for i, sha in enumerate(self.shas):
            generator = self.generators[sha]
            uv, mask = self.task.rasterized(self._renderer, face_params[i:i + 1])
            planes = ParametricTriplane.from_stacked(triplane[i:i + 1]).compose(uv, mask, self._renderer.face_box)
            rendered = generator.renderer(planes, generator.decoder, Camera.from_label(camera[i:i + 1]),
                                          generator.config.neural_resolution)
            images.append(generator.superresolution(rendered.rgb, rendered.features, None))
        return torch.cat(images)

    @torch.no_grad()
    def baselines(self, model: RendererModel) -> dict[str, float]:
        self._renderer = model.renderer
        b, down = self.batch, self.task.config.loss.input_downsample
        parametric = self.world_render(degrade(b.triplane, down), b.target_face_params, b.target_camera)
        return {"source": float(psnr(b.source_image, b.target_image).mean()),
                "parametric": float(psnr(parametric.clamp(-1, 1), b.target_image).mean())}

    @torch.no_grad()
    def render(self, model: RendererModel, driving: Tensor, face_params: Tensor, camera: Tensor) -> Tensor:
        b, task = self.batch, self.task
        raster = task.rasterized(model.renderer, face_params)
        out = model(b.source_image, degrade(b.triplane, task.config.loss.input_downsample), driving, raster, camera,
                    task.config.loss.high_resolution)
        return out["image"].clamp(-1, 1)

    @torch.no_grad()
    def score(self, model: RendererModel) -> float:
        """Mean reenactment PSNR (dB) of the renderer on the held-out pairs."""
        b = self.batch
        image = self.render(model, b.target_image, b.target_face_params, b.target_camera)
        return float(psnr(image, b.target_image).mean())

    @torch.no_grad()
    def identity_leakage(self, model: RendererModel) -> LeakageScore:
        """Row i (A) driven by row i+1's (B) target frame, with A's identity and B's expression in the mesh,
        from A's target camera."""
        self._renderer = model.renderer
        b, task = self.batch, self.task
        order = torch.roll(torch.arange(len(self)), -1)
        identity_dim = task.identity_dim
        mixed = torch.cat([b.target_face_params[:, :identity_dim], b.target_face_params[order, identity_dim:]], 1)
        driver = b.target_image[order]
        crossed = self.render(model, driver, mixed, b.target_camera)
        own = self.render(model, b.target_image, b.target_face_params, b.target_camera)
        truth = self.world_render(b.triplane, mixed, b.target_camera).clamp(-1, 1)
        return LeakageScore(psnr_to_truth=float(psnr(crossed, truth).mean()),
                            psnr_to_driver=float(psnr(crossed, driver).mean()),
                            expression_change=float((crossed - own).abs().mean()))

    def report(self, model: RendererModel) -> dict[str, Any]:
        return {"renderer": self.score(model), **self.baselines(model), "leakage": self.identity_leakage(model)}
