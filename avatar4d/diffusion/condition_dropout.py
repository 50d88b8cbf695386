"""Condition dropout for classifier-free guidance training (the paper's DiT: p = 0.1).

One Bernoulli mask per sample; every condition of a dropped sample (CLIP tokens, DINO tokens) is
replaced by its null value together, so the network learns one unconditional mode, which the
sampler's ``uncond`` reproduces at inference.
"""

from __future__ import annotations

import torch


def condition_drop_mask(
    batch: int,
    p: float = 0.1,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """``[batch]`` bool mask, True where the condition is dropped (probability ``p`` each)."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"drop probability must be in [0, 1], got {p}")
    if batch < 0:
        raise ValueError(f"batch must be >= 0, got {batch}")
    draw_device = generator.device if generator is not None else device
    mask = torch.rand(batch, generator=generator, device=draw_device) < p
    return mask.to(device) if device is not None else mask


def drop_condition(cond: torch.Tensor, null: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Replace the rows of ``cond`` [B, ...] where ``mask`` [B] is True by ``null``.

    ``null`` is one condition (``cond.shape[1:]``, e.g. a learned null embedding) or a batch that
    broadcasts against ``cond`` (``[1, ...]`` or ``[B, ...]``). Gradients reach ``null`` through the
    dropped rows and ``cond`` through the kept ones.
    """
    if mask.ndim != 1 or mask.shape[0] != cond.shape[0]:
        raise ValueError(f"mask must have shape [{cond.shape[0]}], got {list(mask.shape)}")
    if null.shape == cond.shape[1:]:
        null = null.unsqueeze(0)
    if null.ndim != cond.ndim or null.shape[0] not in (1, cond.shape[0]) or null.shape[1:] != cond.shape[1:]:
        raise ValueError(f"null condition of shape {list(null.shape)} does not fit condition {list(cond.shape)}")
    keep_shape = (cond.shape[0],) + (1,) * (cond.ndim - 1)
    return torch.where(mask.to(cond.device).reshape(keep_shape), null.to(cond.dtype), cond)
