"""Sampling a trained DiT for given image conditions: the task's sample grids and held-out checks.

:func:`sample_latents` is the one place that turns CLIP/DINO tokens into DiT-layout latents
(diffusers solver, classifier-free guidance against the model's null condition);
:class:`HeldOutSampler` feeds it the tokens of a held-out ``encoded.lance`` (portraits the model
never saw) and decodes the samples into parametric triplanes with the VAE.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

# sample_latents and the null condition live in the core: the inference pipeline samples with them too
from avatar4d.diffusion import DiffusionConfig, SamplingConfig
from avatar4d.diffusion.sampling import NULL_CONDITION_FILE, null_clip_tokens, sample_latents  # noqa: F401
from avatar4d.models.dit import ImageConditionedDiT
from avatar4d.models.vae import TriplaneVAE, from_dit_tokens, unscale_latent


class HeldOutSampler:
    """Triplanes sampled from the portraits of a held-out ``encoded.lance`` and decoded by ``vae``."""

    def __init__(self, data: str | Path, vae: TriplaneVAE, *, null_condition: str | Path | None = None,
                 sampling: SamplingConfig | None = None, diffusion: DiffusionConfig | None = None,
                 seed: int = 0, batch_size: int = 16) -> None:
        from avatar4d.data.encoded_reader import EncodedShardReader
        from avatar4d.data.encoded_schema import encoded_uri

        self.vae = vae
        self.sampling = sampling or SamplingConfig()
        self.diffusion = diffusion or DiffusionConfig()
        self.seed = seed
        self.batch_size = batch_size
        self.null_condition = null_condition if null_condition is not None else data
        reader = EncodedShardReader(encoded_uri(str(data)), columns=["sample_id", "clip_tokens", "dino_tokens"],
                                    batch_size=256, shuffle=False)
        self.tokens: dict[str, tuple[Tensor, Tensor]] = {}
        for part in reader:
            for index, sample_id in enumerate(part["sample_id"]):
                self.tokens[sample_id] = (part["clip_tokens"][index].float(), part["dino_tokens"][index].float())

    @torch.no_grad()
    def triplanes(self, model: ImageConditionedDiT, sample_ids: list[str]) -> Tensor:
        """Decoded samples [N, 4, C, R, R] for the portraits ``sample_ids`` (the same noise for every model)."""
        missing = [s for s in sample_ids if s not in self.tokens]
        if missing:
            raise KeyError(f"no encoded tokens for {missing[:3]}")
        null = null_clip_tokens(model.config.null_clip, self.null_condition)
        config = self.vae.config
        latent_shape = (config.embed_dim, config.num_planes * config.latent_resolution, config.latent_resolution)
        generator = torch.Generator().manual_seed(self.seed)
        out = []
        for first in range(0, len(sample_ids), self.batch_size):
            ids = sample_ids[first:first + self.batch_size]
            clip = torch.stack([self.tokens[s][0] for s in ids])
            dino = torch.stack([self.tokens[s][1] for s in ids])
            latents = sample_latents(model, clip, dino, (len(ids), *latent_shape), sampling=self.sampling,
                                     diffusion=self.diffusion, null_clip=null, generator=generator)
            z = unscale_latent(from_dit_tokens(latents, config.num_planes), config.latent_scale_factor)
            out.append(self.vae.decode_triplane(z))
        return torch.cat(out)
