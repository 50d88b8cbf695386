"""Condition dropout for classifier-free guidance: rate, reproducibility, replacement, gradients."""

import pytest
import torch

from avatar4d.diffusion import DiffusionConfig, condition_drop_mask, drop_condition


def test_drop_rate_is_p_and_reproducible():
    p = DiffusionConfig().condition_drop_prob
    assert p == 0.1
    mask = condition_drop_mask(200_000, p, generator=torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool and mask.shape == (200_000,)
    assert mask.float().mean().item() == pytest.approx(0.1, abs=0.003)  # 4.5 standard errors
    again = condition_drop_mask(200_000, p, generator=torch.Generator().manual_seed(0))
    assert torch.equal(mask, again)
    assert not condition_drop_mask(1000, 0.0).any()
    assert condition_drop_mask(1000, 1.0).all()


def test_drop_condition_replaces_dropped_rows_and_keeps_gradients():
    cond = torch.randn(4, 16, 8, requires_grad=True)
    null = torch.randn(16, 8, requires_grad=True)
    mask = torch.tensor([True, False, False, True])
    out = drop_condition(cond, null, mask)
    assert torch.equal(out[0], null) and torch.equal(out[3], null)
    assert torch.equal(out[1], cond[1]) and torch.equal(out[2], cond[2])
    out.sum().backward()
    assert torch.equal(cond.grad[:, 0, 0], torch.tensor([0.0, 1.0, 1.0, 0.0]))
    assert torch.equal(null.grad, torch.full((16, 8), 2.0))  # two dropped rows
    torch.testing.assert_close(drop_condition(cond, null[None], mask), out)


def test_drop_errors():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        condition_drop_mask(4, 1.5)
    with pytest.raises(ValueError, match="mask"):
        drop_condition(torch.zeros(4, 3), torch.zeros(3), torch.zeros(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="null condition"):
        drop_condition(torch.zeros(4, 3), torch.zeros(5), torch.zeros(4, dtype=torch.bool))
