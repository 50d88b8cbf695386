"""PixArt transformer block with adaLN-single, DINO-token self-attention and CLIP cross-attention.

One block (names as released):
    shift/scale/gate (×2) = scale_shift_table + t0            (t0 = the shared ``t_block`` output)
    x += gate_msa · SelfAttn(modulate(LN(x)) ++ dino)[:N]     DINO tokens join as keys/values only
    x += CrossAttn(x, clip)                                   no gate, no norm (as released)
    x += gate_mlp · MLP(modulate(LN(x)))
The release runs self-attention over all N + N_dino tokens and keeps the first N outputs; each output
row depends only on its own query, so computing queries for the N latent tokens alone gives the same
result with fewer FLOPs (``qkv`` keeps its released [3D, D] layout and is applied in two slices).
All attention goes through ``F.scaled_dot_product_attention`` (fused kernels where available).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avatar4d.models.dit.resampler import Mlp

MODULATION_CHUNKS = 6  # shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp
GATE_CHUNKS = (2, 5)


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class SelfAttentionWithExtraTokens(nn.Module):
    """Multi-head self-attention of N tokens whose keys/values also include extra (condition) tokens."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, extra: Tensor | None = None) -> Tensor:
        batch, num_tokens, dim = x.shape
        head_dim = dim // self.num_heads
        q_weight, kv_weight = self.qkv.weight.split([dim, 2 * dim])
        q_bias, kv_bias = self.qkv.bias.split([dim, 2 * dim])
        context = x if extra is None else torch.cat([x, extra.to(x.dtype)], dim=1)  # [B, N+M, D]
        q = F.linear(x, q_weight, q_bias).view(batch, num_tokens, self.num_heads, head_dim).transpose(1, 2)
        kv = F.linear(context, kv_weight, kv_bias)  # [B, N+M, 2D]
        k, v = kv.view(batch, -1, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)  # 2 × [B, H, N+M, d]
        out = F.scaled_dot_product_attention(q, k, v)  # [B, H, N, d]
        return self.proj(out.transpose(1, 2).reshape(batch, num_tokens, dim))  # [B, N, D]


class CrossAttention(nn.Module):
    """Tokens attend to a per-sample condition sequence (the release's block-diagonal mask)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q_linear = nn.Linear(dim, dim)
        self.kv_linear = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, condition: Tensor) -> Tensor:
        batch, num_tokens, dim = x.shape
        head_dim = dim // self.num_heads
        q = self.q_linear(x).view(batch, num_tokens, self.num_heads, head_dim).transpose(1, 2)  # [B, H, N, d]
        kv = self.kv_linear(condition.to(x.dtype))  # [B, L, 2D]
        k, v = kv.view(batch, -1, 2, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)  # 2 × [B, H, L, d]
        out = F.scaled_dot_product_attention(q, k, v)  # [B, H, N, d]
        return self.proj(out.transpose(1, 2).reshape(batch, num_tokens, dim))


class PixArtBlock(nn.Module):
    """DiT block conditioned by adaLN-single (shared ``t0`` + this block's ``scale_shift_table``)."""

    def __init__(self, hidden_size: int, num_heads: int, mlp_hidden: int) -> None:
        super().__init__()
        self.scale_shift_table = nn.Parameter(torch.randn(MODULATION_CHUNKS, hidden_size) / hidden_size**0.5)
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttentionWithExtraTokens(hidden_size, num_heads)
        self.cross_attn = CrossAttention(hidden_size, num_heads)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, mlp_hidden, hidden_size)

    def forward(self, x: Tensor, t0: Tensor, clip: Tensor, dino: Tensor | None) -> Tensor:
        """x [B, N, D], t0 [B, 6·D], clip [B, L, D], dino [B, M, D] → [B, N, D]."""
        batch, _, dim = x.shape
        modulation = self.scale_shift_table[None].to(x.dtype) + t0.view(batch, MODULATION_CHUNKS, dim)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = modulation.chunk(MODULATION_CHUNKS, dim=1)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), dino)
        x = x + self.cross_attn(x, clip)
        x = x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))
        return x


class FinalLayer(nn.Module):
    """PixArt's T2I final layer: LN, modulate by ``scale_shift_table + t`` (raw t, not t0), linear."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.scale_shift_table = nn.Parameter(torch.randn(2, hidden_size) / hidden_size**0.5)
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x [B, N, D], t [B, D] → [B, N, p·p·C_out]."""
        shift, scale = (self.scale_shift_table[None].to(x.dtype) + t[:, None]).chunk(2, dim=1)  # [B, 1, D] each
        return self.linear(modulate(self.norm_final(x), shift, scale))
