"""The canonicalisation / reenactment ViT (``encoder_canonical``) and the triplane decoder
(``generator_triplane``) of the motion-aware renderer.

:class:`CanonicalEncoder`: global image features [B, A, R/4, R/4] and the rasterized parametric triplane's
features [B, 3·T, R/4, R/4] are concatenated and patch-embedded (stride 2) into (R/8)² tokens; the
parametric triplane's features thus share every block's self-attention with the image tokens. The
source motion (mapped by ``maps_neutral``, projected to ``motion_tokens``² tokens) enters the
``trans_blocks_neutral`` by cross-attention (neutralise expression, canonicalise pose), the driving
motion (``maps``, ``proj_y``) the ``trans_blocks_motion`` (reenact). The tokens are pixel-shuffled back to
R/4 and upsampled by convolutions to R.

:class:`TriplaneDecoder`: canonical features + detail features → conv → one spatial-reduction
transformer block at R/2 → pixel shuffle → convs → 3·C planes, then fused with the rasterized
parametric triplane by ``convs3`` + ``conv_last_2``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar4d.models.renderer.config import RendererConfig
from avatar4d.models.renderer.transformer import Block, BlockCross, OverlapPatchEmbed


def conv_stack(widths: list[int], *, activation: str = "lrelu", last_activation: bool = False) -> nn.Sequential:
    """3×3 convs widths[0] → widths[1] → …, LeakyReLU(0.01) between them (and after the last if asked)."""
    layers: list[nn.Module] = []
    for index, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Conv2d(a, b, 3, 1, 1))
        if index < len(widths) - 2 or last_activation:
            layers.append(nn.LeakyReLU(0.01) if activation == "lrelu" else nn.ReLU())
    return nn.Sequential(*layers)


def motion_mapping(in_dim: int, hidden: int, layers: int) -> nn.Sequential | None:
    """``layers`` × (Linear, LeakyReLU); keys ``.0``, ``.2``, … as the release's ModuleList."""
    if layers == 0:
        return None
    modules: list[nn.Module] = []
    for index in range(layers):
        modules += [nn.Linear(in_dim if index == 0 else hidden, hidden), nn.LeakyReLU(0.01)]
    return nn.Sequential(*modules)


class CanonicalEncoder(nn.Module):
    def __init__(self, config: RendererConfig) -> None:
        super().__init__()
        cfg = self.config = config
        dim, tokens = cfg.embed_dim, cfg.motion_tokens ** 2
        self.maps = motion_mapping(cfg.motion_dim, cfg.motion_hidden, cfg.motion_map_layers)
        self.maps_neutral = motion_mapping(cfg.motion_dim, cfg.motion_hidden, cfg.motion_map_layers)
        self.proj_y_neutral = nn.Linear(cfg.motion_width, tokens * dim)
        self.proj_y = nn.Linear(cfg.motion_width, tokens * dim)
        self.patch_embed = OverlapPatchEmbed(2 * cfg.aspp_channels, dim)
        self.trans_blocks_neutral = nn.ModuleList(
            BlockCross(dim, cfg.canonical_heads, cfg.mlp_ratio) for _ in range(cfg.num_blocks_neutral))
        self.trans_blocks_motion = nn.ModuleList(
            BlockCross(dim, cfg.canonical_heads, cfg.mlp_ratio) for _ in range(cfg.num_blocks_motion))
        self.convs_1 = conv_stack([3 * cfg.tri_channels, *cfg.canonical_hidden, cfg.aspp_channels])
        up1, up2 = cfg.canonical_up
        self.convs = nn.Sequential(
            nn.UpsamplingBilinear2d(scale_factor=2), nn.Conv2d(dim // 4, up1, 3, 1, 1), nn.ReLU(),
            nn.UpsamplingBilinear2d(scale_factor=2), nn.Conv2d(up1, up2, 3, 1, 1), nn.ReLU(),
            nn.Conv2d(up2, cfg.canonical_channels, 3, 1, 1))

    def _motion_tokens(self, motion: Tensor, mapping: nn.Module | None, projection: nn.Linear) -> Tensor:
        # motion: [B, D] -> [B, T, dim]
        if mapping is not None:
            motion = mapping(motion)
        return projection(motion).reshape(motion.shape[0], self.config.motion_tokens ** 2, -1)

    def forward(self, image_features: Tensor, triplane_features: Tensor, motion: Tensor, source_motion: Tensor,
                motion_scale: float = 1.0) -> Tensor:
        # image_features: [B, A, R/4, R/4], triplane_features: [B, 3T, R/4, R/4], motions: [B, D]
        # -> canonical features [B, canonical_channels, R, R]
        driving = self._motion_tokens(motion, self.maps, self.proj_y)  # [B, T, dim]
        neutral = self._motion_tokens(source_motion, self.maps_neutral, self.proj_y_neutral)
        x = torch.cat([image_features, self.convs_1(triplane_features)], dim=1)  # [B, 2A, R/4, R/4]
        tokens, h, w = self.patch_embed(x)  # [B, (R/8)², dim]
        for block in self.trans_blocks_neutral:
            tokens = block(tokens, neutral, h, w, scale=motion_scale)
        for block in self.trans_blocks_motion:
            tokens = block(tokens, driving, h, w, scale=motion_scale)
        grid = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)  # [B, dim, R/8, R/8]
        return self.convs(F.pixel_shuffle(grid, 2))  # [B, dim/4, R/4, R/4] -> [B, canonical, R, R]


class TriplaneDecoder(nn.Module):
    def __init__(self, config: RendererConfig) -> None:
        super().__init__()
        cfg = config
        planes = 3 * cfg.plane_channels
        h1, h2, h3 = cfg.decoder_hidden
        self.convs1 = conv_stack([cfg.canonical_channels + cfg.detail_channels[-1], *cfg.decoder_in_hidden],
                                 last_activation=True)
        self.patch_embed = OverlapPatchEmbed(cfg.decoder_in_hidden[-1], cfg.decoder_embed_dim)
        self.trans_blocks = nn.ModuleList(
            Block(cfg.decoder_embed_dim, cfg.decoder_heads, cfg.mlp_ratio, sr_ratio=cfg.decoder_sr_ratio)
            for _ in range(cfg.decoder_blocks))
        self.convs2 = conv_stack([cfg.decoder_embed_dim // 4 + cfg.canonical_channels, h1, h2, h3],
                                 last_activation=True)
        self.conv_last = nn.Conv2d(h3, planes, 3, 1, 1)
        self.convs3 = conv_stack([2 * planes, h1, h2, h3], last_activation=True)
        self.conv_last_2 = nn.Conv2d(h3, planes, 3, 1, 1)
        if cfg.residual_fusion:  # the output is a residual over the parametric planes: start it at zero
            nn.init.zeros_(self.conv_last_2.weight)
            nn.init.zeros_(self.conv_last_2.bias)

    def forward(self, canonical: Tensor, detail: Tensor, parametric: Tensor) -> Tensor:
        # canonical: [B, K, R, R], detail: [B, D, R, R], parametric: [B, 3C, R, R] -> planes [B, 3C, R, R]
        x = self.convs1(torch.cat([canonical, detail], dim=1))  # [B, h, R, R]
        tokens, h, w = self.patch_embed(x)  # [B, (R/2)², E]
        for block in self.trans_blocks:
            tokens = block(tokens, h, w)
        grid = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, h, w)  # [B, E, R/2, R/2]
        x = torch.cat([F.pixel_shuffle(grid, 2), canonical], dim=1)  # [B, E/4 + K, R, R]
        x = self.conv_last(self.convs2(x))  # [B, 3C, R, R]
        return self.conv_last_2(self.convs3(torch.cat([x, parametric], dim=1)))
