"""Perceiver resampler: a variable set of image-encoder tokens → a fixed number of learned queries.

The release's ``ImageCaptionEmbedder`` (CLIP) and ``DinoFeatureEmbedderQFormer`` (DINOv2) share
this design (IP-Adapter's resampler): ``proj_in`` to the DiT width, ``depth`` layers of
[Perceiver attention (queries = the latents; keys/values = features ++ latents) + residual,
LayerNorm-MLP (exact GELU, no biases) + residual], then ``proj_out`` (Linear, GELU-tanh, Linear)
and a LayerNorm. Parameter names match the release.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class Mlp(nn.Module):
    """Linear → GELU(tanh) → Linear with the timm names ``fc1``/``fc2``."""

    def __init__(self, in_features: int, hidden_features: int, out_features: int | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden_features, out_features or in_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class PerceiverAttention(nn.Module):
    """Latents attend to (features ++ latents); LayerNorm ``norm1`` on features, ``norm2`` on latents."""

    def __init__(self, dim: int, heads: int, head_dim: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = head_dim
        inner = heads * head_dim
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, inner, bias=False)
        self.to_kv = nn.Linear(dim, 2 * inner, bias=False)
        self.to_out = nn.Linear(inner, dim, bias=False)

    def forward(self, features: Tensor, latents: Tensor) -> Tensor:
        batch, num_latents, _ = latents.shape
        features = self.norm1(features)  # [B, N, D]
        latents = self.norm2(latents)  # [B, L, D]
        q = self.to_q(latents).view(batch, num_latents, self.heads, self.head_dim).transpose(1, 2)  # [B, h, L, d]
        kv = self.to_kv(torch.cat([features, latents], dim=1))  # [B, N+L, 2·h·d]
        k, v = kv.view(batch, -1, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)  # 2 × [B, h, N+L, d]
        out = F.scaled_dot_product_attention(q, k, v)  # [B, h, L, d]
        return self.to_out(out.transpose(1, 2).reshape(batch, num_latents, -1))  # [B, L, D]


def feed_forward(dim: int, mult: int) -> nn.Sequential:
    """LayerNorm → Linear (no bias) → exact GELU → Linear (no bias); keys ``0``, ``1``, ``3`` as released."""
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, dim * mult, bias=False),
        nn.GELU(),
        nn.Linear(dim * mult, dim, bias=False),
    )


class PerceiverResampler(nn.Module):
    """[B, N, in_channels] encoder tokens → [B, num_latents, hidden_size].

    With ``null_tokens`` (CFG's learned unconditional input) the module owns a table
    ``null_tokens`` [num_input_tokens, in_channels] that replaces the raw tokens of dropped samples.
    """

    def __init__(self, in_channels: int, hidden_size: int, num_latents: int, *, depth: int, heads: int,
                 head_dim: int, ff_mult: int, num_input_tokens: int, null_tokens: bool = False) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.num_input_tokens = num_input_tokens
        self.latents = nn.Parameter(torch.randn(1, num_latents, hidden_size) / hidden_size**0.5)
        if null_tokens:
            self.null_tokens = nn.Parameter(torch.randn(num_input_tokens, in_channels) / in_channels**0.5)
        else:
            self.register_parameter("null_tokens", None)
        self.proj_in = nn.Linear(in_channels, hidden_size)
        self.proj_out = Mlp(hidden_size, hidden_size, hidden_size)
        self.norm_out = nn.LayerNorm(hidden_size)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(hidden_size, heads, head_dim), feed_forward(hidden_size, ff_mult)])
            for _ in range(depth))

    def null_input(self, batch: int, num_tokens: int, *, dtype: torch.dtype, device: torch.device) -> Tensor:
        """The unconditional raw tokens [batch, num_tokens, in_channels]: the learned table, else zeros."""
        if self.null_tokens is None:
            return torch.zeros(batch, num_tokens, self.in_channels, dtype=dtype, device=device)
        if num_tokens != self.num_input_tokens:
            raise ValueError(f"the learned null condition has {self.num_input_tokens} tokens, the input has "
                             f"{num_tokens}")
        return self.null_tokens.to(dtype).unsqueeze(0).expand(batch, -1, -1)

    def forward(self, tokens: Tensor) -> Tensor:
        features = self.proj_in(tokens)  # [B, N, D]
        latents = self.latents.to(features.dtype).expand(tokens.shape[0], -1, -1)  # [B, L, D]
        for attention, ff in self.layers:
            latents = attention(features, latents) + latents
            latents = ff(latents) + latents
        return self.norm_out(self.proj_out(latents))  # [B, L, D]
