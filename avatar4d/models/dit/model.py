"""The image-conditioned DiT that denoises triplane latents (AvatarArtist's ``TriDitCLIPDINO``).

Data flow (``paper`` sizes):
    x [B, 8, 128, 32] ─ x_embedder (2×2 patches) + pos_embed ─→ [B, 1024, 1152]
    t [B] ─ t_embedder ─→ t [B, 1152] ─ t_block (SiLU, Linear) ─→ t0 [B, 6912] (shared by all blocks)
    CLIP [B, 257, 1280] ─ y_embedder (resampler) ─→ [B, 16, 1152]      (cross-attention)
    DINO [B, 257, 768]  ─ dino_embedder (resampler) ─→ [B, 256, 1152]  (joins self-attention)
    28 × PixArtBlock → final_layer (with t) → unpatchify → [B, 16, 128, 32] = eps ++ variance channels
Classifier-free guidance drops the CLIP condition only (see ``DiTConfig.null_clip``).
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from avatar4d.checkpoint.pretrained import PretrainedMixin
from avatar4d.models.dit.blocks import GATE_CHUNKS, FinalLayer, PixArtBlock
from avatar4d.models.dit.config import DiTConfig
from avatar4d.models.dit.embeddings import PatchEmbed, TimestepEmbedder, sincos_pos_embed_2d
from avatar4d.models.dit.resampler import PerceiverResampler

logger = logging.getLogger(__name__)


class ImageConditionedDiT(PretrainedMixin, nn.Module, component="dit"):
    """DiT-XL/2-style denoiser with adaLN-single, CLIP cross-attention and DINO self-attention tokens.

    Set ``gradient_checkpointing = True`` to recompute each block in the backward pass.
    """

    def __init__(self, config: DiTConfig) -> None:
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False
        hidden = config.hidden_size
        self.x_embedder = PatchEmbed(config.in_channels, hidden, config.patch_size)
        pos_embed = sincos_pos_embed_2d(hidden, config.token_grid, config.pos_embed_grid)[None]  # [1, T, D]
        self.register_buffer("pos_embed", pos_embed.to(self.x_embedder.proj.weight.device))  # first in state_dict
        self.t_embedder = TimestepEmbedder(hidden, config.frequency_embedding_size)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
        resampler = dict(depth=config.resampler_depth, heads=config.resampler_heads,
                         head_dim=config.resampler_head_dim, ff_mult=config.resampler_ff_mult)
        self.dino_embedder = PerceiverResampler(config.dino_channels, hidden, config.dino_latents,
                                                num_input_tokens=config.dino_tokens, **resampler)
        self.y_embedder = PerceiverResampler(config.clip_channels, hidden, config.clip_latents,
                                             num_input_tokens=config.clip_tokens,
                                             null_tokens=config.null_clip == "learned", **resampler)
        self.blocks = nn.ModuleList(PixArtBlock(hidden, config.num_heads, config.mlp_hidden)
                                    for _ in range(config.depth))
        self.final_layer = FinalLayer(hidden, config.patch_size, config.out_channels)
        self.initialize_weights()

    # ------------------------------------------------------------------ init
    @torch.no_grad()
    def initialize_weights(self) -> None:
        """The release's init (xavier linears, N(0, 0.02) embedders, zero cross-attn proj and output),
        plus, for ``init="adaln_zero"``, zero gates so every block starts as the identity."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        patch_weight = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(patch_weight.view(patch_weight.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        for linear in (self.t_embedder.mlp[0], self.t_embedder.mlp[2], self.t_block[1]):
            nn.init.normal_(linear.weight, std=0.02)
        for embedder in (self.y_embedder, self.dino_embedder):
            for linear in (embedder.proj_in, embedder.proj_out.fc1, embedder.proj_out.fc2):
                nn.init.normal_(linear.weight, std=0.02)
        for block in self.blocks:
            nn.init.zeros_(block.cross_attn.proj.weight)
            nn.init.zeros_(block.cross_attn.proj.bias)
        nn.init.zeros_(self.final_layer.linear.weight)
        nn.init.zeros_(self.final_layer.linear.bias)
        if self.config.init == "adaln_zero":
            hidden = self.config.hidden_size
            t_block = self.t_block[1]
            for chunk in GATE_CHUNKS:
                rows = slice(chunk * hidden, (chunk + 1) * hidden)
                t_block.weight[rows].zero_()
                t_block.bias[rows].zero_()
                for block in self.blocks:
                    block.scale_shift_table[chunk].zero_()

    # ------------------------------------------------------------------ conditions
    def sample_drop_mask(self, batch: int, *, device: torch.device | str | None = None,
                         generator: torch.Generator | None = None) -> Tensor:
        """Bernoulli(``config.condition_dropout``) mask [batch] for ``drop_condition`` (trainer's CFG dropout)."""
        return torch.rand(batch, device=device, generator=generator) < self.config.condition_dropout

    def null_clip_input(self, batch: int, num_tokens: int | None = None, *, dtype: torch.dtype = torch.float32,
                        device: torch.device | str | None = None) -> Tensor:
        """The raw CLIP tokens of the unconditional branch [batch, N, C] (learned table or zeros).

        A ``null_clip="zero_image"`` model (the release) has none of its own: it raises instead of guessing."""
        if self.config.null_clip == "zero_image":
            raise ValueError("this DiT's null condition is the CLIP embedding of an all-zero image "
                             "(null_clip='zero_image', as released): pass null_clip_tokens= (the factory's encode "
                             "stage stores them in encoded_null_condition.safetensors)")
        device = torch.device(device) if device is not None else self.pos_embed.device
        return self.y_embedder.null_input(batch, num_tokens or self.config.clip_tokens, dtype=dtype, device=device)

    def apply_condition_dropout(self, clip_tokens: Tensor, drop_condition: Tensor | None,
                                null_clip_tokens: Tensor | None = None) -> Tensor:
        """Replace the CLIP tokens of samples with ``drop_condition`` set by the null condition."""
        if drop_condition is None:
            return clip_tokens
        batch, num_tokens, _ = clip_tokens.shape
        if drop_condition.shape != (batch,):
            raise ValueError(f"drop_condition must have shape [{batch}], got {list(drop_condition.shape)}")
        null = self._null_tokens(batch, num_tokens, clip_tokens, null_clip_tokens)
        return torch.where(drop_condition.to(device=clip_tokens.device, dtype=torch.bool)[:, None, None],
                           null, clip_tokens)

    def _null_tokens(self, batch: int, num_tokens: int, like: Tensor, override: Tensor | None) -> Tensor:
        if override is None:
            return self.null_clip_input(batch, num_tokens, dtype=like.dtype, device=like.device)
        override = override.to(device=like.device, dtype=like.dtype)
        if override.dim() == 2:
            override = override.unsqueeze(0)
        if override.dim() != 3 or override.shape[1:] != like.shape[1:] or override.shape[0] not in (1, batch):
            raise ValueError(f"null_clip_tokens must have shape [N, C] or [B, N, C] matching the CLIP tokens "
                             f"{list(like.shape)}, got {list(override.shape)}")
        return override.expand(batch, -1, -1)

    # ------------------------------------------------------------------ forward
    def _check_inputs(self, x: Tensor, t: Tensor, clip_tokens: Tensor, dino_tokens: Tensor) -> Tensor:
        cfg = self.config
        expected = (cfg.in_channels, *cfg.input_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape [B, {', '.join(map(str, expected))}], got {list(x.shape)}")
        batch = x.shape[0]
        for name, tokens, channels in (("clip_tokens", clip_tokens, cfg.clip_channels),
                                       ("dino_tokens", dino_tokens, cfg.dino_channels)):
            if tokens.dim() != 3 or tokens.shape[0] != batch or tokens.shape[2] != channels:
                raise ValueError(f"{name} must have shape [{batch}, N, {channels}], got {list(tokens.shape)}")
        if t.dim() == 0:
            t = t.expand(batch)
        if t.shape != (batch,):
            raise ValueError(f"t must have shape [{batch}] (or be a scalar), got {list(t.shape)}")
        return t

    def forward(self, x: Tensor, t: Tensor, clip_tokens: Tensor, dino_tokens: Tensor, *,
                drop_condition: Tensor | None = None, null_clip_tokens: Tensor | None = None) -> Tensor:
        """Predict [B, 2·C, H, W] (eps ++ variance channels) for latents x [B, C, H, W] at timesteps t [B].

        ``clip_tokens`` [B, N, clip_channels] (CLIP ``hidden_states[-2]``), ``dino_tokens``
        [B, M, dino_channels] (DINOv2 ``last_hidden_state``). ``drop_condition`` [B] bool: those
        samples get the null CLIP condition (``null_clip_tokens`` if given, else the model's own).
        """
        t = self._check_inputs(x, t, clip_tokens, dino_tokens)
        dtype = self.x_embedder.proj.weight.dtype
        clip_tokens = self.apply_condition_dropout(clip_tokens, drop_condition, null_clip_tokens)
        h = self.x_embedder(x.to(dtype)) + self.pos_embed.to(dtype)  # [B, T, D]
        t_emb = self.t_embedder(t)  # [B, D]
        t0 = self.t_block(t_emb)  # [B, 6·D]
        clip = self.y_embedder(clip_tokens.to(dtype))  # [B, L, D]
        dino = self.dino_embedder(dino_tokens.to(dtype))  # [B, M, D]
        for block in self.blocks:
            if self.gradient_checkpointing and torch.is_grad_enabled():
                h = checkpoint(block, h, t0, clip, dino, use_reentrant=False)
            else:
                h = block(h, t0, clip, dino)  # [B, T, D]
        h = self.final_layer(h, t_emb)  # [B, T, p·p·2C]
        return self.unpatchify(h)  # [B, 2C, H, W]

    def forward_with_cfg(self, x: Tensor, t: Tensor, clip_tokens: Tensor, dino_tokens: Tensor, cfg_scale: float, *,
                         null_clip_tokens: Tensor | None = None) -> Tensor:
        """Classifier-free guidance in one doubled batch: eps = eps_u + s·(eps_c − eps_u).

        The unconditional half uses the null CLIP condition (``null_clip_tokens``, e.g. CLIP of an
        all-zero image as the release does, else the model's own) and the same DINO tokens. Returns
        [B, 2C, H, W]: guided eps ++ the conditional branch's variance channels.
        """
        t = self._check_inputs(x, t, clip_tokens, dino_tokens)
        batch, num_tokens, _ = clip_tokens.shape
        null = self._null_tokens(batch, num_tokens, clip_tokens, null_clip_tokens)
        out = self.forward(torch.cat([x, x]), torch.cat([t, t]), torch.cat([clip_tokens, null]),
                           torch.cat([dino_tokens, dino_tokens]))  # [2B, 2C, H, W]
        eps, variance = out.split([self.config.in_channels, out.shape[1] - self.config.in_channels], dim=1)
        eps_cond, eps_uncond = eps.chunk(2)
        guided = eps_uncond + cfg_scale * (eps_cond - eps_uncond)
        return torch.cat([guided, variance[:batch]], dim=1)

    def unpatchify(self, tokens: Tensor) -> Tensor:
        """[B, T, p·p·C] → [B, C, H, W], each token's features laid out (p_row, p_col, C) as released."""
        rows, cols = self.config.token_grid
        p, channels = self.config.patch_size, self.config.out_channels
        x = tokens.reshape(tokens.shape[0], rows, cols, p, p, channels)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(tokens.shape[0], channels, rows * p, cols * p)
