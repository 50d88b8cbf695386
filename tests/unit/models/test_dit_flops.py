"""``dit_flops`` against a hand count (paper) and against torch's FLOP counter on a real forward."""

from __future__ import annotations

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from avatar4d.models.dit import DIT_PRESETS, ImageConditionedDiT, dit_flops


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine they lose a lot."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_paper_flops_match_a_hand_count_within_one_percent():
    # One block at paper size, multiply-accumulates: 1,024 latent tokens, 256 DINO tokens, 16 CLIP tokens,
    # hidden 1,152, MLP 4,608. Self-attention: q for 1,024 tokens, k/v for 1,280, QKᵀ and AV over 1,024×1,280.
    tokens, context, clip, hidden, mlp = 1024, 1280, 16, 1152, 4608
    self_attention = tokens * hidden**2 + context * hidden * 2 * hidden + 2 * tokens * context * hidden \
        + tokens * hidden**2
    cross_attention = 2 * tokens * hidden**2 + clip * hidden * 2 * hidden + 2 * tokens * clip * hidden
    block = self_attention + cross_attention + 2 * tokens * hidden * mlp
    assert block == 22_804_955_136  # 22.8 G multiply-accumulates
    # The two resamplers (4 layers each) add about 3 %: DINO 256 queries over 257+256 keys, CLIP 16 over 257+16.
    def resampler(inputs: int, channels: int, latents: int) -> int:
        layer = latents * hidden * 768 * 2 + (inputs + latents) * hidden * 1536 \
            + 2 * latents * (inputs + latents) * 768 + 2 * latents * hidden * 4 * hidden
        return inputs * channels * hidden + 4 * layer + 2 * latents * hidden**2
    hand = 2 * (28 * block + resampler(257, 768, 256) + resampler(257, 1280, 16))
    flops = dit_flops(DIT_PRESETS.get("paper"))
    assert flops == pytest.approx(hand, rel=0.01)
    assert flops == pytest.approx(1.3197e12, rel=1e-4)  # per sample, forward
    assert dit_flops(DIT_PRESETS.get("paper"), batch=8) == 8 * flops


@pytest.mark.parametrize("preset", ["tiny", "paper"])
def test_flops_equal_torch_flop_counter_on_a_forward(preset):
    config = DIT_PRESETS.get(preset)
    device = "cpu" if preset == "tiny" else "meta"  # paper: shapes only, nothing allocated
    with torch.device(device):
        model = ImageConditionedDiT(config)
        x = torch.randn(2, config.in_channels, *config.input_size)
        clip = torch.randn(2, config.clip_tokens, config.clip_channels)
        dino = torch.randn(2, config.dino_tokens, config.dino_channels)
        t = torch.rand(2)
    counter = FlopCounterMode(display=False)
    with counter, sdpa_kernel(SDPBackend.MATH):  # the math path runs attention as counted matmuls
        model(x, t, clip, dino)
    assert counter.get_total_flops() == dit_flops(config, batch=2)


def test_flops_reject_an_empty_batch():
    with pytest.raises(ValueError, match="batch must be >= 1"):
        dit_flops(DIT_PRESETS.get("tiny"), batch=0)
