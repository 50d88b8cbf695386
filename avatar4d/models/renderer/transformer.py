"""Mix-transformer blocks of the motion-aware renderer (SegFormer's ``Block`` / Portrait4D's ``BlockCross``).

Tokens are a flattened H × W feature map; the MLP carries a depth-wise 3 × 3 conv over that map
(SegFormer's "Mix-FFN"), so the blocks need (H, W) besides the tokens. Attention runs through
``F.scaled_dot_product_attention`` (fused kernels on GPU; the release computes the softmax by
hand, which is the same function). Parameter names follow the release (``attn1.q``, ``attn1.kv``,
``attn1.proj``, ``attn2.*``, ``mlp.fc1``, ``mlp.dwconv.dwconv``, ``mlp.fc2``, ``norm1..3``,
``attn.sr`` + ``attn.norm`` for spatial reduction).

Written here rather than taken from timm: timm's SegFormer blocks have other names and no
cross-attention variant, and the core library depends on torch + numpy only.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class DepthwiseConv(nn.Module):
    """3 × 3 depth-wise conv over the token map (``mlp.dwconv.dwconv``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, bias=True, groups=dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        # x: [B, N, C] with N = H·W -> [B, N, C]
        b, n, c = x.shape
        x = self.dwconv(x.transpose(1, 2).reshape(b, c, height, width))  # [B, C, H, W]
        return x.flatten(2).transpose(1, 2)


class MixFeedForward(nn.Module):
    """fc1 → depth-wise conv → GELU → fc2."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DepthwiseConv(hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        # x: [B, N, C] -> [B, N, C]
        return self.fc2(F.gelu(self.dwconv(self.fc1(x), height, width)))


def _heads(x: Tensor, num_heads: int) -> Tensor:
    # [B, N, C] -> [B, heads, N, C / heads]
    b, n, c = x.shape
    return x.reshape(b, n, num_heads, c // num_heads).transpose(1, 2)


class Attention(nn.Module):
    """Self-attention with optional spatial reduction of keys/values (conv k = s = ``sr_ratio`` + LN)."""

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True, sr_ratio: int = 1) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads, self.sr_ratio = num_heads, sr_ratio
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, kernel_size=sr_ratio, stride=sr_ratio)
            self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        # x: [B, N, C] -> [B, N, C]
        b, n, c = x.shape
        source = x
        if self.sr_ratio > 1:
            grid = x.transpose(1, 2).reshape(b, c, height, width)
            source = self.norm(self.sr(grid).flatten(2).transpose(1, 2))  # [B, N / sr², C]
        k, v = self.kv(source).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(_heads(self.q(x), self.num_heads), _heads(k, self.num_heads),
                                             _heads(v, self.num_heads))  # [B, heads, N, C / heads]
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class CrossAttention(nn.Module):
    """Queries from the tokens, keys/values from the motion tokens [B, T, C] (no spatial layout)."""

    def __init__(self, dim: int, num_heads: int, *, qkv_bias: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        nn.init.zeros_(self.proj.weight)  # as Portrait4D: motion layers start as the identity map
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        # x: [B, N, C], context: [B, T, C] -> [B, N, C]
        b, n, c = x.shape
        k, v = self.kv(context).chunk(2, dim=-1)
        out = F.scaled_dot_product_attention(_heads(self.q(x), self.num_heads), _heads(k, self.num_heads),
                                             _heads(v, self.num_heads))
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm self-attention + Mix-FFN (``generator_triplane.trans_blocks``)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, *, sr_ratio: int = 1) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, sr_ratio=sr_ratio)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MixFeedForward(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, height: int, width: int) -> Tensor:
        # x: [B, N, C] -> [B, N, C]
        x = x + self.attn(self.norm1(x), height, width)
        return x + self.mlp(self.norm2(x), height, width)


class BlockCross(nn.Module):
    """Cross-attention to the motion tokens (scaled by ``scale``), then self-attention, then Mix-FFN."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn1 = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.attn2 = CrossAttention(dim, num_heads)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = MixFeedForward(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, context: Tensor, height: int, width: int, scale: float = 1.0) -> Tensor:
        # x: [B, N, C], context: [B, T, C] -> [B, N, C]
        x = x + self.attn2(self.norm2(x), context) * scale
        x = x + self.attn1(self.norm1(x), height, width)
        return x + self.mlp(self.norm3(x), height, width)


class OverlapPatchEmbed(nn.Module):
    """Conv (kernel ``patch``, stride 2, "same" padding) then LayerNorm over channels → tokens."""

    def __init__(self, in_channels: int, dim: int, patch_size: int = 3, stride: int = 2) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, kernel_size=patch_size, stride=stride, padding=patch_size // 2)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> tuple[Tensor, int, int]:
        # x: [B, C_in, H, W] -> tokens [B, H/2 · W/2, dim], H/2, W/2
        x = self.proj(x)
        _, _, height, width = x.shape
        return self.norm(x.flatten(2).transpose(1, 2)), height, width
