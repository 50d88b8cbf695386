"""Exponential moving average of model weights, kept in float32.

``ema ← decay · ema + (1 − decay) · θ`` after every optimiser step, for every floating-point
parameter; buffers (normalisation statistics, fixed embeddings) are copied as they are. Under
ZeRO 1/2 every rank holds the full parameters, so every rank's EMA is the same and rank 0's copy
is the one saved; under ZeRO 3 the update gathers each parameter first (slow: use stage ≤ 2 when
EMA matters). ``warmup`` (optional) uses ``min(decay, (1 + n) / (10 + n))`` for the n-th update,
so an EMA of a short run is not dominated by the initial weights.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)


def _gathered(params: list[nn.Parameter]) -> contextlib.AbstractContextManager:
    """Gather ZeRO-3 partitioned parameters (a no-op for ordinary tensors)."""
    if any(hasattr(p, "ds_id") for p in params):
        import deepspeed

        return deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    return contextlib.nullcontext()


class ExponentialMovingAverage:
    """Float32 shadow copies of ``model``'s parameters and buffers (by name)."""

    def __init__(self, model: nn.Module, decay: float, *, warmup: bool = False) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        params = [p for _, p in model.named_parameters()]
        with _gathered(params), torch.no_grad():
            self.shadow: dict[str, Tensor] = {
                name: p.detach().float().clone() for name, p in model.named_parameters()}
            persistent = set(model.state_dict())
            self.buffers: dict[str, Tensor] = {
                name: b.detach().clone() for name, b in model.named_buffers() if name in persistent}

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + self.num_updates) / (10.0 + self.num_updates))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model``'s current weights."""
        decay = self.current_decay()
        named = list(model.named_parameters())
        with _gathered([p for _, p in named]):
            for name, param in named:
                shadow = self.shadow[name]
                shadow.lerp_(param.detach().to(device=shadow.device, dtype=torch.float32), 1.0 - decay)
        for name, buffer in model.named_buffers():
            if name in self.buffers:
                self.buffers[name].copy_(buffer.detach())
        self.num_updates += 1

    def state_dict(self) -> dict[str, Tensor]:
        """Parameters and buffers in ``model.state_dict()`` naming (parameters in float32)."""
        return {**self.buffers, **self.shadow}

    def load_state_dict(self, state: dict[str, Tensor], num_updates: int) -> None:
        """Restore shadows saved by :meth:`state_dict` (names and shapes must match)."""
        expected = set(self.shadow) | set(self.buffers)
        if set(state) != expected:
            missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"EMA state does not fit the model: missing {missing[:4]}, unexpected {unexpected[:4]}")
        with torch.no_grad():
            for name, target in self._all():
                if tuple(state[name].shape) != tuple(target.shape):
                    raise ValueError(f"EMA tensor {name}: shape {tuple(state[name].shape)}, "
                                     f"model has {tuple(target.shape)}")
                target.copy_(state[name].to(device=target.device, dtype=target.dtype))
        self.num_updates = num_updates

    def _all(self) -> Iterator[tuple[str, Tensor]]:
        yield from self.shadow.items()
        yield from self.buffers.items()

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> nn.Module:
        """Write the averaged weights into ``model`` (a separate, plain copy of the architecture)."""
        target = model.state_dict()
        model.load_state_dict({name: value.to(dtype=target[name].dtype) for name, value in self.state_dict().items()},
                              strict=True)
        return model
