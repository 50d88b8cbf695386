"""The per-domain GAN fine-tune: one domain's rows of ``<data>/stylized.lance`` (stylized images,
the source meshes as head-model coefficients, the source cameras) → a fine-tuned Next3D generator.

Two optimised parts (:meth:`TrainTask.optimized_parts`), each its own Adam and DeepSpeed engine:
``G`` (the Next3D generator, from ``base_checkpoint``) and ``D`` (the camera-conditioned dual
discriminator with ADA's p as a buffer). Every micro-batch runs two phases (:mod:`train.engine`):

- ``G``: fakes from z ~ N(0, I) rendered with the batch's cameras and meshes (the dataset's pose
  and expression distribution, EG3D's ``gen_c``), mapping conditioned on the camera, ``w_avg``
  tracked; non-saturating loss through the augmented, blurred D; every ``density_interval`` steps
  the density regulariser on the rendered planes;
- ``D``: logistic loss on augmented, blurred real and (detached) fake images; every ``r1_interval``
  steps lazy R1 on the real inputs; ADA's sign statistics and p update.

The final model (EMA of G) is saved as a Next3D generator checkpoint, which the factory's actors
load by domain (``generator_checkpoint`` in the domain catalog).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from avatar4d.data.schema import META_FACE_PARAMS_DIMS, SchemaMismatchError
from avatar4d.data.stylized_schema import META_IMAGE, stylized_uri
from avatar4d.errors import UserError
from avatar4d.geometry.camera import Camera
from avatar4d.geometry.morphable import FaceParams, default_head_model
from avatar4d.models.discriminator import DualDiscriminator, DualDiscriminatorConfig
from avatar4d.models.next3d import Next3DGenerator
from avatar4d.models.next3d.checkpoint import COMPONENT as GAN_COMPONENT
from avatar4d.models.next3d.checkpoint import load_generator, save_generator
from avatar4d.models.next3d.config import GeneratorConfig
from avatar4d.viz import labelled_grid
from train.data import DatasetInfo, inspect_dataset
from train.gan.augment import AdaptiveProbability, AugmentPipe
from train.gan.data import DomainStream, domain_positions
from train.gan.losses import (
    blur_sigma,
    density_regularizer,
    discriminator_loss,
    downsample_to,
    generator_loss,
    r1_from_logits,
    statistics_distance,
)
from train.gan.recipes import GANTrainConfig
from train.task import StepOutput, TrainTask

logger = logging.getLogger(__name__)

STYLIZED_HINT = "make it with `avatar4d factory stylize` (or `avatar4d pipeline run`)"
COLUMNS = ["image", "camera", "face_params"]
PREVIEW_SEED = 1234


class Critic(nn.Module):
    """The discriminator part: the dual discriminator plus ADA's probability (a persistent buffer)."""

    def __init__(self, config: DualDiscriminatorConfig, initial_p: float = 0.0) -> None:
        super().__init__()
        self.net = DualDiscriminator(config)
        self.register_buffer("augment_p", torch.tensor([float(initial_p)]))  # [1]: DeepSpeed broadcasts no 0-d tensors

    def forward(self, image: Tensor, image_raw: Tensor, camera: Tensor, *, blur: float, augment: AugmentPipe | None,
                generator: torch.Generator | None = None) -> Tensor:
        """image [B, 3, S, S], image_raw [B, 3, r, r], camera labels [B, 25] → logits [B, 1]."""
        if augment is not None and float(self.augment_p) > 0:
            size = image.shape[-1]
            raw_up = nn.functional.interpolate(image_raw, size=(size, size), mode="bilinear", align_corners=False)
            both = augment(torch.cat([image, raw_up], dim=1), float(self.augment_p), generator)  # [B, 6, S, S]
            image, image_raw = both[:, :3], downsample_to(both[:, 3:], image_raw.shape[-1])
        return self.net(image, image_raw, camera, blur_sigma=blur)


class GANModel(nn.Module):
    """The generator and the critic, one module (the EMA and the engines' parts)."""

    def __init__(self, generator: Next3DGenerator, critic: Critic) -> None:
        super().__init__()
        self.G = generator
        self.D = critic


def to_signed(images: Tensor) -> Tensor:
    """uint8 [B, 3, H, W] → float [-1, 1]."""
    return images.float() / 127.5 - 1.0


class GANTask(TrainTask):
    name = "gan"
    config: GANTrainConfig

    # --- driver side ---------------------------------------------------------------------------
    @classmethod
    def check_data(cls, config: GANTrainConfig) -> dict[str, DatasetInfo]:  # type: ignore[override]
        if not config.domain:
            raise UserError("say which domain to fine-tune (--domain NAME)")
        info = inspect_dataset(stylized_uri(config.data), ["domain", *COLUMNS], what="stylized dataset",
                               hint=STYLIZED_HINT)
        rows = len(domain_positions(info, config.domain))
        needed = config.train.num_workers * config.train.micro_batch_size
        if rows < needed:
            raise UserError(f"{info.uri} holds {rows} rows of domain {config.domain!r}; {config.train.num_workers} "
                            f"workers × micro-batch {config.train.micro_batch_size} need at least {needed}")
        image = json.loads(info.metadata.get(META_IMAGE, "{}")).get("resolution")
        generator = cls._generator_config(config)
        if image is not None and image != generator.image_resolution:
            raise SchemaMismatchError(f"{info.uri} holds {image}² images, the generator makes "
                                      f"{generator.image_resolution}²; pick the recipe that matches the data")
        if generator.image_resolution != config.discriminator.img_resolution:
            raise SchemaMismatchError(f"the discriminator judges {config.discriminator.img_resolution}² images, the "
                                      f"generator makes {generator.image_resolution}²")
        return {"stylized": info}

    @staticmethod
    def _generator_config(config: GANTrainConfig) -> GeneratorConfig:
        if not config.base_checkpoint:
            return config.generator
        from avatar4d.checkpoint.io import CheckpointError, read_checkpoint_info

        path = Path(config.base_checkpoint)
        if not path.is_dir():
            raise UserError(f"--base-checkpoint {path}: no such folder")
        try:
            info = read_checkpoint_info(path)
        except CheckpointError as error:
            raise UserError(f"--base-checkpoint {path}: {error}") from None
        if info.component != GAN_COMPONENT:
            raise UserError(f"--base-checkpoint {path} holds a {info.component!r}, not a Next3D generator")
        return GeneratorConfig.from_dict(info.config)

    @classmethod
    def resolve_config(cls, config: GANTrainConfig, datasets: dict[str, DatasetInfo]) -> GANTrainConfig:  # type: ignore[override]
        """The generator config of the base checkpoint; ``train.steps`` from ``images``."""
        config = config.replace(generator=cls._generator_config(config))
        if config.images:
            config = config.replace(train=config.train.replace(steps=config.steps_for_images()))
        return config

    # --- worker side ---------------------------------------------------------------------------
    def __init__(self, config: GANTrainConfig, datasets: dict[str, DatasetInfo], **kwargs: Any) -> None:
        super().__init__(config, datasets, **kwargs)
        self.info = datasets["stylized"]
        dims = json.loads(self.info.metadata[META_FACE_PARAMS_DIMS])
        self.head = default_head_model().to(self.device)
        if dims.get("identity") not in (None, self.head.identity_dim):
            raise SchemaMismatchError(f"{self.info.uri} holds {dims['identity']} identity coefficients, the head "
                                      f"model has {self.head.identity_dim}")
        ada = config.ada
        self.augment = AugmentPipe(xflip=ada.xflip, translate=ada.translate, color=ada.color) if ada.enabled else None
        self.ada: AdaptiveProbability | None = None
        self._adjusted_at = 0
        self._preview: dict[str, Any] | None = None

    def build_model(self) -> nn.Module:
        cfg = self.config
        if cfg.base_checkpoint:
            generator, _ = load_generator(cfg.base_checkpoint, head=self.head)
        else:
            generator = Next3DGenerator(cfg.generator, head=self.head)
        critic = Critic(cfg.discriminator, cfg.ada.initial_p)
        if cfg.base_discriminator:
            from avatar4d.checkpoint.io import load_checkpoint, load_state_dict_strict

            state, _ = load_checkpoint(cfg.base_discriminator, component="dual_discriminator")
            load_state_dict_strict(critic.net, state, what=f"discriminator {cfg.base_discriminator}")
        return GANModel(generator, critic).to(self.device)

    def optimized_parts(self, model: nn.Module) -> dict[str, nn.Module]:
        assert isinstance(model, GANModel)
        return {"G": model.G, "D": model.D}

    def optimizer_options(self, part: str) -> dict[str, Any]:
        return {"lr": self.config.g_lr if part == "G" else self.config.d_lr, "betas": tuple(self.config.betas)}

    def phases(self, step: int) -> tuple[str, ...]:
        return ("G", "D")

    def batches(self, start_epoch: int, start_position: int = 0) -> Iterator[dict[str, Any]]:
        train = self.config.train
        return DomainStream(self.info, self.config.domain, COLUMNS, rank=self.rank, world_size=self.world_size,
                            batch_size=train.micro_batch_size, seed=train.seed, start_epoch=start_epoch,
                            start_position=start_position)

    def _condition(self, batch: dict[str, Any]) -> tuple[Camera, Tensor, Tensor]:
        """The batch's cameras, labels [B, 25] and meshes [B, V, 3]."""
        label = batch["camera"].to(self.device).float()
        params = FaceParams.from_vector(batch["face_params"].to(self.device).float(), self.head.identity_dim,
                                        self.head.expression_dim)
        with torch.no_grad():
            vertices = self.head.vertices(params)
        return Camera.from_label(label), label, vertices

    def _blur(self, step: int) -> float:
        loss = self.config.loss
        return blur_sigma((step - 1) * self.config.train.samples_per_step, loss.blur_init_sigma, loss.blur_fade_images)

    def phase_step(self, phase: str, engines: dict[str, nn.Module], batch: dict[str, Any], generator: torch.Generator,
                   step: int) -> StepOutput:
        g_engine, d_engine = engines["G"], engines["D"]
        g_module: Next3DGenerator = getattr(g_engine, "module", g_engine)
        critic: Critic = getattr(d_engine, "module", d_engine)
        camera, label, vertices = self._condition(batch)
        noise = torch.Generator(self.device).manual_seed(int(torch.randint(1 << 62, (1,), generator=generator)))
        z = torch.randn(label.shape[0], g_module.z_dim, generator=generator).to(self.device)
        blur, loss_cfg = self._blur(step), self.config.loss
        if phase == "G":
            critic.requires_grad_(False)
            g_module.requires_grad_(True)
            out = g_engine(z, camera, vertices, update_emas=True, generator=noise)
            logits = critic(out.image, out.image_raw, label, blur=blur, augment=self.augment, generator=generator)
            loss = generator_loss(logits)
            metrics = {"loss_G": float(loss.detach()), "D_fake_G": float(logits.detach().mean())}
            if loss_cfg.density_reg > 0 and step % loss_cfg.density_interval == 0:
                rendering = g_module.config.rendering
                density = density_regularizer(out.planes, g_module.decoder, convention=rendering.plane_convention,
                                              box_warp=rendering.box_warp, points=loss_cfg.density_points,
                                              p_dist=loss_cfg.density_p_dist, generator=generator)
                loss = loss + density * loss_cfg.density_reg * loss_cfg.density_interval
                metrics["density_reg"] = float(density.detach())
            return StepOutput(loss=loss, metrics=metrics)
        # phase D
        g_module.requires_grad_(False)
        critic.requires_grad_(True)
        with torch.no_grad():
            fake = g_module(z, camera, vertices, generator=noise)
        fake_logits = critic(fake.image, fake.image_raw, label, blur=blur, augment=self.augment, generator=generator)
        real = to_signed(batch["image"].to(self.device))  # [B, 3, S, S]
        real_raw = downsample_to(real, fake.image_raw.shape[-1])  # [B, 3, r, r]
        do_r1 = loss_cfg.r1_gamma > 0 and step % loss_cfg.r1_interval == 0
        real, real_raw = real.requires_grad_(do_r1), real_raw.detach().requires_grad_(do_r1)
        real_logits = critic(real, real_raw, label, blur=blur, augment=self.augment, generator=generator)
        loss = discriminator_loss(real_logits, fake_logits)
        metrics = {"loss_D": float(loss.detach()), "D_real": float(real_logits.detach().mean()),
                   "D_fake": float(fake_logits.detach().mean()),
                   "blur_sigma": blur}
        if do_r1:
            penalty = r1_from_logits(real_logits, real, real_raw)  # [B]
            loss = loss + penalty.mean() * (loss_cfg.r1_gamma / 2) * loss_cfg.r1_interval
            metrics["r1_penalty"] = float(penalty.detach().mean())
        metrics.update(self._adapt(critic, real_logits, step))
        return StepOutput(loss=loss, metrics=metrics)

    def _adapt(self, critic: Critic, real_logits: Tensor, step: int) -> dict[str, float]:
        """ADA: accumulate sign(D(real)); adjust p once per ``interval`` steps (all ranks)."""
        if self.augment is None:
            return {}
        if self.ada is None:
            ada = self.config.ada
            self.ada = AdaptiveProbability(critic.augment_p, target=ada.target, interval=ada.interval,
                                           speed_images=ada.speed_images)
        self.ada.p = critic.augment_p  # the engine may have re-bound the buffer (checkpoint load)
        self.ada.accumulate(real_logits)
        metrics = {"ada_p": float(critic.augment_p)}
        if step != self._adjusted_at:
            r_t = self.ada.maybe_adjust(step, self.config.train.samples_per_step)
            if r_t is not None:
                self._adjusted_at = step
                metrics.update(ada_rt=r_t, ada_p=float(critic.augment_p))
        return metrics

    # --- samples and the final model -----------------------------------------------------------
    def _first_rows(self, count: int) -> dict[str, Any]:
        import lance

        from avatar4d.data.reader import decode_batch

        dataset = lance.dataset(self.info.uri, version=self.info.version)
        rows = domain_positions(self.info, self.config.domain)[:count]
        table = dataset.take(rows.tolist(), columns=COLUMNS)
        return decode_batch(table.combine_chunks().to_batches()[0], dataset.schema)

    @torch.no_grad()
    def samples(self, model: GANModel, rows: dict[str, Any], seed: int = PREVIEW_SEED) -> Tensor:
        """EMA generator samples [N, 3, S, S] in [-1, 1] with the rows' cameras and meshes (fixed z)."""
        camera, _, vertices = self._condition(rows)
        z = torch.randn(vertices.shape[0], model.G.z_dim, generator=torch.Generator().manual_seed(seed))
        return model.G(z.to(self.device), camera, vertices, noise_mode="const").image.clamp(-1, 1)

    @torch.no_grad()
    def sample_images(self, model: nn.Module, step: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Rows: the domain's images, then samples with their cameras and meshes; metric: the distance
        between the colour statistics of samples and images (:func:`statistics_distance`)."""
        assert isinstance(model, GANModel)
        if self._preview is None:
            self._preview = self._first_rows(self.config.statistics_rows)
        rows = self._preview
        samples = self.samples(model, rows)
        real = to_signed(rows["image"].to(self.device))
        metrics = {"sample_stat_distance": statistics_distance(samples, real),
                   "ada_p_final": float(model.D.augment_p)}
        n = min(self.config.preview_samples, samples.shape[0])
        sheet = labelled_grid(torch.cat([real[:n], samples[:n]]), nrow=n, row_labels=["stylized", "G (EMA)"],
                              value_range=(-1.0, 1.0), min_cell=128,
                              title=f"GAN {self.config.domain} step {step}: data and samples (same cameras, meshes)")
        return {"samples": sheet}, metrics

    def save_model(self, model: nn.Module, directory: Path, *, step: int, metadata: dict[str, Any]) -> None:
        assert isinstance(model, GANModel)
        save_generator(directory, model.G, step=step,
                       metadata={**metadata, "domain": self.config.domain, "origin": "fine-tuned",
                                 "base_checkpoint": self.config.base_checkpoint})
