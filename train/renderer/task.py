"""The renderer training task: multiview sets (``<data>/multiview.lance``) → driven renders (train.renderer.losses).

The optimised model is :class:`RendererModel`: the motion-aware renderer, the motion encoder trained with
it, and the dual discriminator (one engine; see :mod:`train.renderer.losses` for how one backward pass
trains both sides). Before ``loss.freeze_images`` images the renderer's OSG decoder and super-resolution
(initialised from the domain generator) and the discriminator have ``requires_grad`` False (they get no
gradient; under ZeRO 0 DeepSpeed reduces zeros for them and Adam leaves them unchanged) and the
adversarial terms are off; the images seen come from the engine's restored step count, so a resumed run
switches at the same image. The neural resolution goes from ``low_resolution`` to ``high_resolution``.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar4d.data.schema import META_FACE_PARAMS_DIMS, SchemaMismatchError, dataset_uri
from avatar4d.geometry.morphable import FaceParams, default_head_model
from avatar4d.models.discriminator import DualDiscriminator
from avatar4d.models.renderer import MotionAwareRenderer, MotionEncoder
from avatar4d.rendering.parametric import ParametricTriplane, resize
from avatar4d.viz import labelled_grid
from train.data import DatasetInfo, RankStream, check_size, inspect_dataset
from train.renderer.data import RendererBatch, pick_views
from train.renderer.losses import RendererLoss, density_regularizer, phase
from train.renderer.recipes import RendererTrainConfig
from train.task import StepOutput, TrainTask

logger = logging.getLogger(__name__)

MULTIVIEW_HINT = "make one with `avatar4d factory run --multiview-identities N`"
COLUMNS = ["triplane", "views", "domain", "generator_sha256"]
PREVIEW_CELL = 128
DENSITY_REG_P_DIST = 0.004  # the release's rendering_kwargs density_reg_p_dist
RASTER_CACHE_ENTRIES = 4096  # rasterized target meshes kept per rank (a view's mesh never changes)


class RendererModel(nn.Module):
    """What the engine optimises: ``renderer``, ``motion_encoder`` and ``discriminator``."""

    def __init__(self, renderer: MotionAwareRenderer, motion_encoder: MotionEncoder,
                 discriminator: DualDiscriminator) -> None:
        super().__init__()
        self.renderer, self.motion_encoder, self.discriminator = renderer, motion_encoder, discriminator

    def forward(self, source_image: Tensor, triplane: Tensor, driving_image: Tensor,
                target_mesh: Tensor | tuple[Tensor, Tensor], camera: Tensor, resolution: int) -> dict[str, Tensor]:
        # images [B, 3, S, S], triplane [B, 4, C, R, R], mesh [B, V, 3] (or its rasterization), camera [B, 25]
        source_motion = self.motion_encoder(source_image)  # [B, D]
        motion = self.motion_encoder(driving_image)  # [B, D]
        return self.renderer(source_image, triplane, motion, target_mesh, camera, source_motion=source_motion,
                             neural_resolution=resolution)


def degrade(triplane: Tensor, factor: int) -> Tensor:
    """Average-pool then bilinearly upsample every plane by ``factor`` (1: unchanged). [B, 4, C, R, R]."""
    if factor == 1:
        return triplane
    b, f, c, r, _ = triplane.shape
    low = F.avg_pool2d(triplane.reshape(b * f, c, r, r), factor)
    return F.interpolate(low, size=(r, r), mode="bilinear", align_corners=False).reshape(b, f, c, r, r)


def face_dims(info: DatasetInfo) -> tuple[int, int]:
    dims = json.loads(info.metadata.get(META_FACE_PARAMS_DIMS, "{}"))
    if dims.get("identity") is None or dims.get("expression") is None:
        raise SchemaMismatchError(f"{info.uri}: no face-parameter layout in the schema metadata")
    return int(dims["identity"]), int(dims["expression"])


def copy_matching(target: nn.Module, source: nn.Module) -> list[str]:
    """Copy every tensor of ``source``'s state whose name and shape ``target`` has; returns their names."""
    own, copied = target.state_dict(), []
    for name, value in source.state_dict().items():
        if name in own and own[name].shape == value.shape:
            own[name].copy_(value)
            copied.append(name)
    return copied


class RendererTask(TrainTask):
    name = "renderer"
    config: RendererTrainConfig

    @classmethod
    def check_data(cls, config: RendererTrainConfig) -> dict[str, DatasetInfo]:  # type: ignore[override]
        info = inspect_dataset(dataset_uri(config.data, "multiview"), COLUMNS, what="multiview dataset",
                               hint=MULTIVIEW_HINT)
        model = config.model
        expected = (4, model.plane_channels, model.plane_resolution, model.plane_resolution)
        if info.tensor_spec("triplane").shape != expected:
            raise SchemaMismatchError(f"{info.uri} holds triplanes {list(info.tensor_spec('triplane').shape)}, the "
                                      f"recipe's renderer reads {list(expected)}; pick the recipe that fits the data")
        face_dims(info)
        check_size(info, config.train.num_workers, config.train.micro_batch_size, what="multiview dataset")
        return {"multiview": info}

    @classmethod
    def resolve_config(cls, config: RendererTrainConfig, datasets: dict[str, DatasetInfo]) -> RendererTrainConfig:  # type: ignore[override]
        """Without ``init_generator``: the generator of the dataset's first row (its decoder and SR)."""
        if config.init_generator:
            return config
        import lance

        from train.vae.renderers import GeneratorIndex

        info = datasets["multiview"]
        row = lance.dataset(info.uri, version=info.version).to_table(columns=["generator_sha256", "domain"], limit=1)
        path = GeneratorIndex([str(Path(config.data) / "generators")]).find(
            row.column("generator_sha256")[0].as_py(), row.column("domain")[0].as_py())
        return config.replace(init_generator=str(path))

    def __init__(self, config: RendererTrainConfig, datasets: dict[str, DatasetInfo], **kwargs: Any) -> None:
        super().__init__(config, datasets, **kwargs)
        self.info = datasets["multiview"]
        self.identity_dim, self.expression_dim = face_dims(self.info)
        self.head = default_head_model()
        self.loss = RendererLoss(config.loss).to(self.device)
        self.calls = 0
        self._preview: RendererBatch | None = None
        self._rasters: OrderedDict[bytes, tuple[Tensor, Tensor]] = OrderedDict()

    def build_model(self) -> nn.Module:
        cfg = self.config
        model = RendererModel(MotionAwareRenderer(cfg.model, head=self.head), MotionEncoder(cfg.motion_encoder),
                              DualDiscriminator(cfg.discriminator))
        if cfg.init_generator:
            from avatar4d.generators import load_generator_checkpoint

            generator = load_generator_checkpoint(cfg.init_generator, head=self.head)[0]
            copied = [f"decoder.{n}" for n in copy_matching(model.renderer.decoder, generator.decoder)]
            copied += [f"superresolution.{n}" for n in copy_matching(model.renderer.superresolution,
                                                                     generator.superresolution)]
            logger.info("initialised %d tensors from %s", len(copied), cfg.init_generator)
        return model

    def batches(self, start_epoch: int, start_position: int = 0) -> Iterator[dict[str, Any]]:
        train = self.config.train
        return RankStream(self.info, COLUMNS, rank=self.rank, world_size=self.world_size,
                          batch_size=train.micro_batch_size, seed=train.seed, start_epoch=start_epoch,
                          start_position=start_position, data_workers=train.data_workers)

    def images_seen(self, model: nn.Module) -> int:
        """Images of all ranks before this micro-batch: the engine's (restored) optimiser steps × samples per step."""
        train = self.config.train
        steps = getattr(model, "global_steps", None)
        if steps is None:  # a plain module (no engine): count this task's calls
            steps = self.calls // train.grad_accumulation
        return int(steps) * train.samples_per_step

    def vertices(self, face_params: Tensor) -> Tensor:
        params = FaceParams.from_vector(face_params.cpu(), self.identity_dim, self.expression_dim)
        return self.head.vertices(params).float().to(self.device)  # [B, V, 3]

    @torch.no_grad()
    def rasterized(self, renderer: MotionAwareRenderer, face_params: Tensor) -> tuple[Tensor, Tensor]:
        """The target meshes rasterized over the face box, (uv [B, r, r, 2], mask [B, 1, r, r]); each view's
        rasterization is computed once and kept (LRU, :data:`RASTER_CACHE_ENTRIES`): a pure-PyTorch
        rasterization costs more than the rest of a tiny training step."""
        keys = [row.numpy().tobytes() for row in face_params.detach().cpu().float()]
        missing = [i for i, key in enumerate(keys) if key not in self._rasters]
        if missing:
            uv, mask = renderer.rasterize(self.vertices(face_params[missing]))
            for j, i in enumerate(missing):
                self._rasters[keys[i]] = (uv[j].cpu(), mask[j].cpu())
        for key in keys:
            self._rasters.move_to_end(key)
        while len(self._rasters) > RASTER_CACHE_ENTRIES:
            self._rasters.popitem(last=False)
        uv = torch.stack([self._rasters[k][0] for k in keys]).to(self.device)
        return uv, torch.stack([self._rasters[k][1] for k in keys]).to(self.device)

    def targets(self, module: RendererModel, batch: RendererBatch, raster: tuple[Tensor, Tensor], resolution: int
                ) -> dict[str, Tensor]:
        """The target view at the rendered resolution, and the clean parametric triplane through the target mesh."""
        renderer = module.renderer
        with torch.no_grad():
            planes = ParametricTriplane.from_stacked(batch.triplane).compose(*raster, renderer.face_box)
        size = (resolution, resolution)
        return {"image": batch.target_image, "image_raw": resize(batch.target_features[:, :3], size),
                "features": resize(batch.target_features, size), "depth": resize(batch.target_depth, size),
                "opacity": resize(batch.target_opacity, size), "planes": planes}

    def step(self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator) -> StepOutput:
        module: RendererModel = getattr(model, "module", model)
        cfg = self.config.loss
        seen = self.images_seen(model)
        self.calls += 1
        now = phase(seen, cfg)
        for part in (module.renderer.decoder, module.renderer.superresolution):
            part.requires_grad_(bool(now["train_renderer_tail"]))
        module.discriminator.requires_grad_(bool(now["adversarial"]))
        views = pick_views(batch, generator)
        views = RendererBatch(**{k: v.to(self.device) if isinstance(v, Tensor) else v
                                 for k, v in vars(views).items()})
        raster = self.rasterized(module.renderer, views.target_face_params)
        resolution = int(now["resolution"])
        out = model(views.source_image, degrade(views.triplane, cfg.input_downsample), views.target_image, raster,
                    views.target_camera, resolution)
        target = self.targets(module, views, raster, resolution)
        terms = self.loss.reconstruction(out, target)
        if now["adversarial"]:
            adv = self.loss.adversarial(module.discriminator, out, target["image"], target["image_raw"],
                                        views.target_camera)
            terms.update({k: adv[k] for k in ("adv_g", "adv_d", "r1")})
            rendering = module.renderer.config.rendering
            terms["density"] = density_regularizer(out["planes"], module.renderer.decoder,
                                                   convention=rendering.plane_convention, box_warp=rendering.box_warp,
                                                   points=cfg.density_reg_points, p_dist=DENSITY_REG_P_DIST,
                                                   generator=generator)
        loss = self.loss.total(terms)
        metrics = {k: float(v.detach()) for k, v in terms.items()}
        metrics.update(loss=float(loss.detach()), images_seen=float(seen), neural_resolution=float(resolution),
                       renderer_tail_trained=float(now["train_renderer_tail"]),
                       psnr=float(psnr(out["image"].detach(), views.target_image).mean()))
        return StepOutput(loss=loss, metrics=metrics)

    def _preview_batch(self) -> RendererBatch:
        if self._preview is None:
            from avatar4d.data.reader import LanceShardReader

            reader = LanceShardReader(self.info.uri, columns=COLUMNS, version=self.info.version,
                                      batch_size=min(self.config.preview_samples, self.info.num_rows))
            self._preview = pick_views(next(iter(reader)), torch.Generator().manual_seed(0))
        return self._preview

    @torch.no_grad()
    def sample_images(self, model: nn.Module, step: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Columns source | driving | output | ground truth, one row per preview identity."""
        assert isinstance(model, RendererModel)
        views = self._preview_batch()
        dev = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in vars(views).items()}
        out = model(dev["source_image"], degrade(dev["triplane"], self.config.loss.input_downsample),
                    dev["target_image"], self.vertices(views.target_face_params), dev["target_camera"],
                    self.config.loss.high_resolution)
        image = out["image"].clamp(-1, 1)
        cells = torch.stack([dev["source_image"], dev["target_image"], image, dev["target_image"]], 1)
        sheet = labelled_grid(cells.flatten(0, 1), nrow=4, col_labels=["source", "driving", "output", "ground truth"],
                              row_labels=list(views.domains), value_range=(-1.0, 1.0), min_cell=PREVIEW_CELL,
                              title=f"renderer step {step} (EMA): self-reenactment of preview identities")
        return {"reenactment": sheet}, {"preview_psnr": float(psnr(image, dev["target_image"]).mean())}

    def save_model(self, model: nn.Module, directory: Path, *, step: int, metadata: dict[str, Any]) -> None:
        """The renderer at ``directory``, the motion encoder at ``directory/motion_encoder``."""
        assert isinstance(model, RendererModel)
        model.renderer.save_pretrained(directory, step=step, metadata=metadata)
        model.motion_encoder.save_pretrained(Path(directory) / "motion_encoder", step=step, metadata=metadata)


def psnr(image: Tensor, target: Tensor) -> Tensor:
    """Per-sample PSNR (dB) of images in [-1, 1]: [B]."""
    mse = ((image.float() - target.float()) / 2).square().flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))

