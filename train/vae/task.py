"""The triplane-VAE training task: ``<data>/pairs.lance`` triplanes → reconstruction (train.vae.losses).

Before the first step (not on resume) the triplane normalisation of the VAE is set from a seeded
sample of ``statistics_rows`` rows drawn from the whole dataset (the same rows on every rank, so
every rank computes the same statistics), per plane as the release does or per (plane, channel)
(``loss.statistics``); it is saved with the model's buffers. When the final model is saved, its
latent scale is estimated as 1 / std of the posterior means of another seeded sample
(``loss.estimate_latent_scale``) and written into the checkpoint's config, which the factory's
encode stage multiplies by (:mod:`avatar4d.models.vae.statistics`). Sample grids show, for
the first ``preview_samples`` rows, renders of the input and of the EMA model's reconstruction
(posterior mode) from a frontal and a side camera.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from avatar4d.data.schema import META_FACE_PARAMS_DIMS, SchemaMismatchError, dataset_uri
from avatar4d.geometry.camera import orbit_camera
from avatar4d.models.vae import LATENT_SCALE_FACTOR, TriplaneVAE, save_vae, stacked_to_vae_layout, vae_layout_to_stacked
from avatar4d.models.vae.statistics import estimate_latent_scale, triplane_statistics
from avatar4d.viz import labelled_grid
from train.data import DatasetInfo, RankStream, check_size, inspect_dataset
from train.task import StepOutput, TrainTask
from train.vae.losses import VAELoss
from train.vae.recipes import VAETrainConfig
from train.vae.renderers import DomainRenderers, GeneratorIndex

logger = logging.getLogger(__name__)

PAIRS_HINT = "make one with `avatar4d factory run --out DIR`"
PREVIEW_YAWS = (0.0, 0.5)
PREVIEW_CELL = 128  # px: renders are enlarged to at least this, so grids can be judged


def generator_roots(config: VAETrainConfig) -> list[str]:
    from avatar4d.storage import join  # s3://…/generators as well as a local folder

    return list(config.loss.generators) or [join(config.data, "generators")]


def _face_dims(info: DatasetInfo) -> tuple[int | None, int | None]:
    raw = info.metadata.get(META_FACE_PARAMS_DIMS)
    if raw is None:
        return None, None
    dims = json.loads(raw)
    return dims.get("identity"), dims.get("expression")


class VAETask(TrainTask):
    name = "vae"
    config: VAETrainConfig

    # --- driver side ---------------------------------------------------------------------------
    @classmethod
    def check_data(cls, config: VAETrainConfig) -> dict[str, DatasetInfo]:  # type: ignore[override]
        import lance

        loss = config.loss
        required = ["triplane", "domain", "generator_sha256"] + (["face_params"] if loss.compose_expression else [])
        info = inspect_dataset(dataset_uri(config.data, "pairs"), required, what="pairs dataset", hint=PAIRS_HINT)
        spec = info.tensor_spec("triplane")
        model = config.model
        expected = (model.num_planes, model.in_channels, model.resolution, model.resolution)
        if spec.shape != expected:
            raise SchemaMismatchError(f"{info.uri} holds triplanes {list(spec.shape)}, the recipe's VAE takes "
                                      f"{list(expected)}; pick the recipe that matches the data")
        check_size(info, config.train.num_workers, config.train.micro_batch_size, what="pairs dataset")
        if loss.lpips > 0:
            from train.vae.losses import build_lpips

            build_lpips(loss.lpips_net, loss.lpips_backbone, random_backbone=loss.lpips_random_backbone)
        if loss.renders:
            from avatar4d.storage import storage_options

            table = lance.dataset(info.uri, version=info.version, storage_options=storage_options(info.uri)
                                  ).to_table(columns=["generator_sha256", "domain"])
            pairs = dict(zip(table.column("generator_sha256").to_pylist(), table.column("domain").to_pylist()))
            index = GeneratorIndex(generator_roots(config))
            for sha, domain in sorted(pairs.items()):
                index.find(sha, domain)
        return {"pairs": info}

    # --- worker side ---------------------------------------------------------------------------
    def __init__(self, config: VAETrainConfig, datasets: dict[str, DatasetInfo], **kwargs: Any) -> None:
        super().__init__(config, datasets, **kwargs)
        self.info = datasets["pairs"]
        loss = config.loss
        renderers = None
        if loss.renders:
            identity_dim, expression_dim = _face_dims(self.info)
            renderers = DomainRenderers(GeneratorIndex(generator_roots(config)), self.device,
                                        identity_dim=identity_dim, expression_dim=expression_dim,
                                        compose_expression=loss.compose_expression)
        self.renderers = renderers
        self.loss = VAELoss(loss, renderers, self.device)
        self.columns = ["triplane", "domain", "generator_sha256"] + (["face_params"] if loss.compose_expression else [])
        self._preview: dict[str, Any] | None = None

    def build_model(self) -> nn.Module:
        return TriplaneVAE(self.config.model)

    def _first_rows(self, count: int) -> dict[str, Any]:
        from avatar4d.data.reader import LanceShardReader

        reader = LanceShardReader(self.info.uri, columns=self.columns, batch_size=min(count, self.info.num_rows),
                                  shuffle=False, version=self.info.version)
        return next(iter(reader))

    def sampled_triplanes(self, count: int, seed: int) -> torch.Tensor:
        """Stacked triplanes [n, F, C, R, R] of ``min(count, rows)`` rows drawn from the whole dataset: the
        first batch of the reader's seeded permutation (the same rows on every rank and rerun)."""
        from avatar4d.data.reader import LanceShardReader

        reader = LanceShardReader(self.info.uri, columns=["triplane"], batch_size=min(count, self.info.num_rows),
                                  shuffle=True, seed=seed, version=self.info.version)
        return next(iter(reader))["triplane"].float()

    def prepare(self, model: nn.Module) -> None:
        """Triplane mean and std (per plane by default) of a seeded sample, when the model normalises triplanes."""
        assert isinstance(model, TriplaneVAE)
        if not model.config.normalize_triplanes:
            return
        loss = self.config.loss
        planes = self.sampled_triplanes(loss.statistics_rows, self.config.train.seed)  # [N, F, C, R, R]
        mean, std = triplane_statistics(planes, loss.statistics)  # [F, 1] or [F, C]
        model.set_triplane_statistics(mean, std)
        logger.info("triplane statistics (per %s) from %d sampled rows: mean |μ| %.4f, mean σ %.4f", loss.statistics,
                    planes.shape[0], float(mean.abs().mean()), float(std.mean()))

    @torch.no_grad()
    def latent_scale(self, model: TriplaneVAE) -> float:
        """1 / std of the posterior means of a seeded sample of rows (another sample than the statistics')."""
        planes = self.sampled_triplanes(self.config.loss.statistics_rows, self.config.train.seed + 1)
        latents = [model.encode_triplane(chunk.to(self.device).to(self.model_dtype(model))).float()
                   for chunk in planes.split(self.config.train.micro_batch_size)]  # [n, E, F, r, r] each
        return estimate_latent_scale(torch.cat(latents))

    def batches(self, start_epoch: int, start_position: int = 0) -> Iterator[dict[str, Any]]:
        train = self.config.train
        return RankStream(self.info, self.columns, rank=self.rank, world_size=self.world_size,
                          batch_size=train.micro_batch_size, seed=train.seed, start_epoch=start_epoch,
                          start_position=start_position, data_workers=train.data_workers)

    @staticmethod
    def _statistics(module: TriplaneVAE) -> tuple[torch.Tensor, torch.Tensor] | None:
        if not module.config.normalize_triplanes:
            return None
        mean = module.triplane_mean.float()[None, :, :, None, None]  # [1, F, C, 1, 1]
        std = module.triplane_std.float()[None, :, :, None, None]
        return mean, std

    def step(self, model: nn.Module, batch: dict[str, Any], generator: torch.Generator) -> StepOutput:
        module: TriplaneVAE = getattr(model, "module", model)
        planes = batch["triplane"].to(self.device).float()  # [B, F, C, R, R] data units
        stats = self._statistics(module)
        normalized = planes if stats is None else (planes - stats[0]) / stats[1]
        noise = torch.Generator(self.device).manual_seed(int(torch.randint(1 << 62, (1,), generator=generator)))
        out = model(stacked_to_vae_layout(normalized).to(self.model_dtype(module)), sample_posterior=True,
                    generator=noise)
        reconstruction_normalized = vae_layout_to_stacked(out.reconstruction.float())  # [B, F, C, R, R]
        reconstruction = (reconstruction_normalized if stats is None
                          else reconstruction_normalized * stats[1] + stats[0])
        face_params = batch.get("face_params")
        loss, metrics = self.loss(normalized, reconstruction_normalized, out.posterior, planes, reconstruction,
                                  list(batch["generator_sha256"]), list(batch["domain"]),
                                  None if face_params is None else face_params.to(self.device), generator)
        return StepOutput(loss=loss, metrics=metrics)

    @torch.no_grad()
    def sample_images(self, model: nn.Module, step: int) -> tuple[dict[str, np.ndarray], dict[str, float]]:
        """Rows: input and reconstruction at yaw 0, then at yaw 0.5; one column per preview sample."""
        assert isinstance(model, TriplaneVAE)
        if self._preview is None:
            self._preview = self._first_rows(self.config.preview_samples)
        batch = self._preview
        planes = batch["triplane"].to(self.device).float()
        stats = self._statistics(model)
        normalized = planes if stats is None else (planes - stats[0]) / stats[1]
        recon = vae_layout_to_stacked(model(stacked_to_vae_layout(normalized).to(self.model_dtype(model)),
                                            sample_posterior=False).reconstruction.float())
        recon = recon if stats is None else recon * stats[1] + stats[0]
        metrics = {"preview_triplane_l1": float((recon - planes).abs().mean())}
        if self.renderers is None:
            return {}, metrics
        face_params = batch.get("face_params")
        vertices = None if face_params is None else self.renderers.vertices(face_params.to(self.device))
        resolution = self.config.loss.render_resolution
        rows = []
        for yaw in PREVIEW_YAWS:
            for source in (planes, recon):
                images = []
                for index, (sha, domain) in enumerate(zip(batch["generator_sha256"], batch["domain"])):
                    renderer = self.renderers.get(sha, domain)
                    mesh = None if vertices is None else vertices[index:index + 1]
                    camera = orbit_camera(torch.tensor([yaw]), torch.tensor([0.0]), torch.tensor([0.0])).to(self.device)
                    rendered = renderer.render(renderer.planes(source[index:index + 1], mesh), camera, resolution)
                    images.append(rendered.rgb)
                rows.append(torch.cat(images))
        labels = [f"{what} yaw {yaw:+.1f}" for yaw in PREVIEW_YAWS for what in ("input", "reconstruction")]
        sheet = labelled_grid(torch.cat(rows).clamp(-1, 1), nrow=len(batch["domain"]), row_labels=labels,
                              col_labels=list(batch["domain"]), value_range=(-1.0, 1.0), min_cell=PREVIEW_CELL,
                              title=f"VAE step {step}: renders of input and EMA reconstruction (posterior mode)")
        return {"reconstruction": sheet}, metrics

    def save_model(self, model: nn.Module, directory: Path, *, step: int, metadata: dict[str, Any]) -> None:
        assert isinstance(model, TriplaneVAE)
        if self.config.loss.estimate_latent_scale:
            scale = self.latent_scale(model)
            logger.info("latent scale estimated from %d sampled rows: %.6f (the release's is %.7f)",
                        min(self.config.loss.statistics_rows, self.info.num_rows), scale, LATENT_SCALE_FACTOR)
            model.config = model.config.replace(latent_scale_factor=scale)
            metadata = {**metadata, "latent_scale": "estimated: 1 / std of posterior means of "
                                                    f"{min(self.config.loss.statistics_rows, self.info.num_rows)} rows"}
        save_vae(directory, model, step=step, metadata=metadata)
