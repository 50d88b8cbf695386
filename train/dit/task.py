"""The image-conditioned DiT training task on the precomputed ``<data>/encoded.lance``.

Encoded dataset contract (written by the factory's encode stage; one row per pair): ``sample_id``,
``domain``, ``clip_tokens`` [Tc, Dc], ``dino_tokens`` [Td, Dd] and ``latent`` [C, F, h, w] (the VAE
posterior mean times the latent scale factor; [C, H, W] in DiT layout is accepted too), each a
tensor column (raw little-endian bytes, or a fixed-size float list) whose shape and dtype are a
``TensorSpec`` JSON under the schema metadata key ``avatar4d.<column>``; ``generator_sha256``
(optional; otherwise the domain's generator is looked up in ``pairs.lance``) lets sample grids
render decoded samples. This is the layout of :mod:`avatar4d.data.encoded_schema`, which the
factory's encode stage writes; ``<data>/encoded_null_condition.safetensors`` (CLIP/DINO tokens of
an all-zero image) is the null CLIP condition of a ``null_clip="zero_image"`` model, as in the release
(its absence stops the run before it starts; there is no fallback).

Per micro-batch: latents in DiT layout [B, C, F·h, w]; the CLIP condition of a Bernoulli(0.1)
subset is replaced by the null condition (``ImageConditionedDiT.sample_drop_mask``); the IDDPM
objective (ε-MSE + variational bound for the learned variance) gives the loss. Sample grids draw,
from the EMA model, latents for the conditions of the first ``preview_samples`` rows with the
configured diffusers solver and guidance (``avatar4d.diffusion.sample``) and show them next to the
true latents (first three channels, planes stacked vertically); ``preview_sample_mse`` is their
mean squared distance to the true latents.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from avatar4d.data.schema import SchemaMismatchError
from avatar4d.diffusion import IDDPMObjective
from avatar4d.models.dit import DiTConfig, ImageConditionedDiT, save_dit
from avatar4d.models.vae import from_dit_tokens, load_vae, to_dit_tokens, unscale_latent
from avatar4d.viz import labelled_grid
from train.data import DatasetInfo, RankStream, check_size, decode_tensor_column, inspect_dataset
from train.dit.recipes import DiTTrainConfig
from train.dit.sampling import null_clip_tokens, sample_latents
from train.task import StepOutput, TrainTask

logger = logging.getLogger(__name__)

ENCODED_TABLE = "encoded"
TENSORS = ("latent", "clip_tokens", "dino_tokens")
ENCODED_HINT = "make it with `avatar4d factory encode --data DIR --vae-checkpoint PATH`"
PREVIEW_SEED = 1234
PREVIEW_CELL = 128  # px: small latents and renders are enlarged to at least this


def encoded_uri(data: str) -> str:
    return f"{str(data).rstrip('/')}/{ENCODED_TABLE}.lance"


def dit_input_shape(latent_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) the DiT sees for a stored latent [C, F, h, w] (planes stacked along H) or [C, H, W]."""
    if len(latent_shape) == 4:
        channels, planes, height, width = latent_shape
        return channels, planes * height, width
    if len(latent_shape) == 3:
        return tuple(latent_shape)  # type: ignore[return-value]
    raise SchemaMismatchError(f"latent spec must be [C, F, h, w] or [C, H, W], got {list(latent_shape)}")


def data_model_fields(info: DatasetInfo) -> dict[str, Any]:
    """The DiT config fields that the dataset's tensor shapes determine."""
    channels, height, width = dit_input_shape(info.tensor_spec("latent").shape)
    clip, dino = info.tensor_spec("clip_tokens").shape, info.tensor_spec("dino_tokens").shape
    if len(clip) != 2 or len(dino) != 2:
        raise SchemaMismatchError(f"clip_tokens and dino_tokens must be [N, D], got {list(clip)} and {list(dino)}")
    return {"input_size": (height, width), "in_channels": channels, "clip_tokens": clip[0],
            "clip_channels": clip[1], "dino_tokens": dino[0], "dino_channels": dino[1]}


class DiTTask(TrainTask):
    name = "dit"
    config: DiTTrainConfig

    # --- driver side ---------------------------------------------------------------------------
    @classmethod
    def check_data(cls, config: DiTTrainConfig) -> dict[str, DatasetInfo]:  # type: ignore[override]
        info = inspect_dataset(encoded_uri(config.data), list(TENSORS), what="encoded dataset", hint=ENCODED_HINT)
        for column in TENSORS:
            info.tensor_spec(column)
        fields = data_model_fields(info)
        if not config.fit_model_to_data:
            model = config.model
            differ = [f"{k} {getattr(model, k)} vs data {v}" for k, v in fields.items()
                      if tuple(np.atleast_1d(getattr(model, k))) != tuple(np.atleast_1d(v))]
            if differ:
                raise SchemaMismatchError(f"{info.uri} does not fit the recipe's DiT: {'; '.join(differ)}")
        check_size(info, config.train.num_workers, config.train.micro_batch_size, what="encoded dataset")
        null_clip_tokens(config.model.null_clip, config.data)  # a release-style null condition must be stored
        if config.vae_checkpoint:
            from avatar4d.checkpoint.io import read_checkpoint_info

            vae_sha = read_checkpoint_info(Path(config.vae_checkpoint).expanduser()).weights_sha256
            made_with = info.metadata.get("avatar4d.vae_sha256")
            if made_with is not None and made_with != vae_sha:
                raise SchemaMismatchError(f"{info.uri} was encoded with the VAE {made_with[:12]}…, "
                                          f"{config.vae_checkpoint} holds {vae_sha[:12]}…")
        return {"encoded": info}

    @classmethod
    def resolve_config(cls, config: DiTTrainConfig, datasets: dict[str, DatasetInfo]) -> DiTTrainConfig:
        """With ``fit_model_to_data``: the DiT's latent grid and condition shapes from the dataset."""
        if not config.fit_model_to_data:
            return config
        fields = data_model_fields(datasets["encoded"])
        tokens = (fields["input_size"][0] // config.model.patch_size) * (fields["input_size"][1] //
                                                                        config.model.patch_size)
        if round(tokens ** 0.5) ** 2 != tokens:
            fields["pos_embed_grid"] = "true"
        return config.replace(model=config.model.replace(**fields))

    # --- worker side ---------------------------------------------------------------------------
    def __init__(self, config: DiTTrainConfig, datasets: dict[str, DatasetInfo], **kwargs: Any) -> None:
        super().__init__(config, datasets, **kwargs)
        self.info = datasets["encoded"]
        self.specs = {column: self.info.tensor_spec(column) for column in TENSORS}
        self.objective = IDDPMObjective(config.diffusion)
        self.render_columns = ["generator_sha256"] if "generator_sha256" in self.info.columns else []
        self.null_clip = null_clip_tokens(config.model.null_clip, config.data)
        self._preview: dict[str, Any] | None = None
        self._vae: Any = None

    @property
    def model_config(self) -> DiTConfig:
        return self.config.model

    def build_model(self) -> nn.Module:
        model = ImageConditionedDiT(self.model_config)
        model.gradient_checkpointing = self.config.gradient_checkpointing
        return model

    def batches(self, start_epoch: int, start_position: int = 0) -> Iterator[dict[str, Any]]:
        train = self.config.train
        return RankStream(self.info, list(TENSORS) + ["domain"], rank=self.rank, world_size=self.world_size,
                          batch_size=train.micro_batch_size, seed=train.seed, start_epoch=start_epoch,
                          start_position=start_position, data_workers=train.data_workers)

    def tensors(self, batch: dict[str, Any], dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """Latents [B, C, H, W] (DiT layout), CLIP tokens [B, Tc, Dc], DINO tokens [B, Td, Dd]."""
        decoded = {c: decode_tensor_column(batch[c], self.specs[c], c).to(self.device, dtype) for c in TENSORS}
        latent = decoded["latent"]
        if latent.ndim == 5:
            latent = to_dit_tokens(latent)  # [B, C, F·h, w]
        return latent, decoded["clip_tokens"], decoded["dino_tokens"]

    def step(self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator) -> StepOutput:
        module: ImageConditionedDiT = getattr(model, "module", model)
        latent, clip, dino = self.tensors(batch, self.model_dtype(module))
        drop = module.sample_drop_mask(latent.shape[0], generator=generator).to(self.device)
        kwargs: dict[str, Any] = {"clip_tokens": clip, "dino_tokens": dino, "drop_condition": drop}
        if self.null_clip is not None:
            kwargs["null_clip_tokens"] = self.null_clip.to(self.device, clip.dtype)
        out = self.objective(lambda x_t, t, **kw: model(x_t, t, **kw), latent, model_kwargs=kwargs,
                             generator=generator)
        loss = out.loss.mean()
        metrics = {"loss": float(loss.detach()), "mse": float(out.mse.detach().mean()),
                   "dropped_fraction": float(drop.float().mean())}
        if out.vb is not None:
            metrics["vb"] = float(out.vb.detach().mean())
        return StepOutput(loss=loss, metrics=metrics)

    def _preview_rows(self) -> dict[str, Any]:
        if self._preview is None:
            from avatar4d.data.reader import LanceShardReader

            columns = list(TENSORS) + ["domain"] + self.render_columns
            reader = LanceShardReader(self.info.uri, columns=columns, shuffle=False, version=self.info.version,
                                      batch_size=min(self.config.preview_samples, self.info.num_rows))
            self._preview = next(iter(reader))
        return self._preview

    @torch.no_grad()
    def sample_images(self, model: nn.Module, step: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        assert isinstance(model, ImageConditionedDiT)
        batch = self._preview_rows()
        latent, clip, dino = self.tensors(batch, torch.float32)
        model = model.float()
        sampling = self.config.sampling
        generator = torch.Generator().manual_seed(PREVIEW_SEED)
        samples = sample_latents(model, clip, dino, tuple(latent.shape), sampling=sampling,
                                 diffusion=self.config.diffusion, null_clip=self.null_clip, generator=generator,
                                 device=self.device)  # [B, C, H, W]
        metrics = {"preview_sample_mse": float((samples - latent).square().mean())}
        scale = latent[:, :3].abs().amax().clamp(min=1e-6)  # the true latents' range maps to [-1, 1]
        latents_rgb = (torch.cat([latent, samples])[:, :3] / scale).clamp(-1, 1)  # [2B, 3, H, W]
        domains = list(batch["domain"])
        images = {"latents": labelled_grid(latents_rgb, nrow=latent.shape[0], row_labels=["true latent", "sampled"],
                                           col_labels=domains, value_range=(-1.0, 1.0), min_cell=PREVIEW_CELL,
                                           title=f"DiT step {step}: latent channels 0-2, planes stacked")}
        rendered = self._render(samples, latent, batch)
        if rendered is not None:
            images["renders"] = rendered
        return images, metrics

    def _generator_shas(self, batch: dict[str, Any]) -> list[str] | None:
        """Each preview row's generator: its own column, else its domain's in ``pairs.lance``."""
        if "generator_sha256" in batch:
            return list(batch["generator_sha256"])
        import lance

        from avatar4d.data.schema import dataset_uri
        from avatar4d.storage import storage_options

        try:
            uri = dataset_uri(self.config.data, "pairs")
            pairs = lance.dataset(uri, storage_options=storage_options(uri))
            table = pairs.to_table(columns=["domain", "generator_sha256"])
        except (ValueError, OSError):
            return None
        by_domain = dict(zip(table.column("domain").to_pylist(), table.column("generator_sha256").to_pylist()))
        shas = [by_domain.get(domain) for domain in batch["domain"]]
        return None if None in shas else shas  # type: ignore[return-value]

    def _render(self, samples: Tensor, latent: Tensor, batch: dict[str, Any]) -> np.ndarray | None:
        """Renders of the decoded true and sampled latents (needs a VAE checkpoint and generators)."""
        shas = self._generator_shas(batch) if self.config.vae_checkpoint else None
        if shas is None:
            return None
        from avatar4d.geometry.camera import orbit_camera
        from train.vae.renderers import DomainRenderers, GeneratorIndex

        if self._vae is None:
            vae, _ = load_vae(Path(self.config.vae_checkpoint).expanduser(), device=self.device)
            roots = list(self.config.generators) or [str(Path(self.config.data) / "generators")]
            self._vae = (vae.eval(), DomainRenderers(GeneratorIndex(roots), self.device, compose_expression=False))
        vae, renderers = self._vae
        scale = vae.config.latent_scale_factor
        planes = vae.decode_triplane(unscale_latent(from_dit_tokens(torch.cat([latent, samples]),
                                                                    vae.config.num_planes), scale))  # [2B, F, C, R, R]
        shas = shas * 2
        domains = list(batch["domain"]) * 2
        camera = orbit_camera(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([0.0])).to(self.device)
        images = []
        for index, (sha, domain) in enumerate(zip(shas, domains)):
            renderer = renderers.get(sha, domain)
            images.append(renderer.render(renderer.planes(planes[index:index + 1], None), camera,
                                          self.config.preview_render_resolution).rgb)
        return labelled_grid(torch.cat(images).clamp(-1, 1), nrow=latent.shape[0],
                             row_labels=["decoded true", "decoded sample"], col_labels=list(batch["domain"]),
                             value_range=(-1.0, 1.0), min_cell=PREVIEW_CELL, title="renders of decoded latents")

    def save_model(self, model: nn.Module, directory: Path, *, step: int, metadata: dict[str, Any]) -> None:
        assert isinstance(model, ImageConditionedDiT)
        save_dit(directory, model, step=step, metadata=metadata)
