"""The EMA: exact update rule, buffers copied, save/restore, copy into a fresh model."""

import pytest
import torch
from torch import nn

from train.ema import ExponentialMovingAverage


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)
        self.register_buffer("stat", torch.zeros(2))
        self.register_buffer("scratch", torch.zeros(1), persistent=False)


def test_update_is_the_exponential_average_and_buffers_follow():
    model = Tiny()
    with torch.no_grad():
        model.linear.weight.fill_(1.0)
    ema = ExponentialMovingAverage(model, decay=0.9)
    with torch.no_grad():
        model.linear.weight.fill_(3.0)
        model.stat.fill_(5.0)
    ema.update(model)
    assert torch.allclose(ema.shadow["linear.weight"], torch.full((1, 2), 0.9 * 1.0 + 0.1 * 3.0))
    ema.update(model)
    assert torch.allclose(ema.shadow["linear.weight"], torch.full((1, 2), 0.9 * 1.2 + 0.1 * 3.0))
    assert torch.equal(ema.buffers["stat"], torch.full((2,), 5.0)) and "scratch" not in ema.buffers
    assert ema.num_updates == 2


def test_warmup_limits_the_decay_of_early_updates():
    ema = ExponentialMovingAverage(Tiny(), decay=0.9999, warmup=True)
    assert ema.current_decay() == pytest.approx(0.1)
    ema.num_updates = 10_000_000
    assert ema.current_decay() == 0.9999


def test_state_round_trip_and_copy_to_a_fresh_model():
    model = Tiny()
    ema = ExponentialMovingAverage(model, decay=0.5)
    with torch.no_grad():
        model.linear.bias.fill_(2.0)
    ema.update(model)
    restored = ExponentialMovingAverage(Tiny(), decay=0.5)
    restored.load_state_dict(ema.state_dict(), num_updates=ema.num_updates)
    fresh = restored.copy_to(Tiny())
    assert torch.allclose(fresh.linear.bias, ema.shadow["linear.bias"]) and restored.num_updates == 1
    with pytest.raises(ValueError, match="does not fit"):
        restored.load_state_dict({"linear.weight": torch.zeros(1, 2)}, 0)
