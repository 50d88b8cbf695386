"""Behaviour of the image-conditioned DiT on the ``tiny`` preset (CPU)."""

from __future__ import annotations

import time

import pytest
import torch

from avatar4d.config import ConfigError
from avatar4d.models.dit import DIT_PRESETS, DiTConfig, ImageConditionedDiT

BATCH = 3


def _inputs(config: DiTConfig, batch: int = BATCH, seed: int = 0) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, *config.input_size, generator=gen)
    t = torch.randint(0, 1000, (batch,), generator=gen).float()
    clip = torch.randn(batch, config.clip_tokens, config.clip_channels, generator=gen)
    dino = torch.randn(batch, config.dino_tokens, config.dino_channels, generator=gen)
    return x, t, clip, dino


def _trained_like(config: DiTConfig, seed: int = 0) -> ImageConditionedDiT:
    """A tiny DiT whose zero-initialised gates/outputs are replaced by random values (as after training)."""
    torch.manual_seed(seed)
    model = ImageConditionedDiT(config).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    return model



@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine they lose a lot."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tiny() -> DiTConfig:
    return DIT_PRESETS.get("tiny")


@pytest.fixture(scope="module")
def model(tiny) -> ImageConditionedDiT:
    return _trained_like(tiny)


def test_output_shape_is_eps_and_variance_channels(model, tiny):
    x, t, clip, dino = _inputs(tiny)
    out = model(x, t, clip, dino)
    assert out.shape == (BATCH, 2 * tiny.in_channels, *tiny.input_size) == (BATCH, 16, 64, 16)
    assert torch.isfinite(out).all()
    assert model(x, t[0], clip, dino).shape == out.shape  # a scalar timestep broadcasts


def test_dino_tokens_shape_each_sample_but_never_reach_the_output_sequence(model, tiny):
    x, t, clip, dino = _inputs(tiny)
    seen: list[tuple[int, ...]] = []
    hooks = [block.register_forward_hook(lambda _m, _i, out: seen.append(tuple(out.shape))) for block in model.blocks]
    hooks.append(model.final_layer.register_forward_hook(lambda _m, inputs, _o: seen.append(tuple(inputs[0].shape))))
    with torch.no_grad():
        base = model(x, t, clip, dino)
        other_dino = dino.clone()
        other_dino[1] = torch.randn_like(dino[1])
        changed = model(x, t, clip, other_dino)
    for hook in hooks:
        hook.remove()
    assert seen[: tiny.depth + 1] == [(BATCH, tiny.num_tokens, tiny.hidden_size)] * (tiny.depth + 1)
    assert (changed[1] - base[1]).abs().max() > 1e-3  # DINO influences its own sample
    torch.testing.assert_close(changed[[0, 2]], base[[0, 2]], rtol=0, atol=1e-6)  # and no other


def test_clip_enters_only_through_cross_attention(tiny):
    model = _trained_like(tiny, seed=1)
    x, t, clip, dino = _inputs(tiny)
    with torch.no_grad():
        delta = (model(x, t, clip, dino) - model(x, t, torch.randn_like(clip), dino)).abs().max()
        for block in model.blocks:
            block.cross_attn.proj.weight.zero_()
            block.cross_attn.proj.bias.zero_()
        blind = (model(x, t, clip, dino) - model(x, t, torch.randn_like(clip), dino)).abs().max()
    assert delta > 1e-3
    assert blind == 0.0


@pytest.mark.parametrize("null_clip", ["learned", "zeros"])
def test_dropped_conditions_equal_the_null_condition_output(tiny, null_clip):
    config = tiny.replace(null_clip=null_clip)
    model = _trained_like(config)
    assert (model.y_embedder.null_tokens is not None) == (null_clip == "learned")
    x, t, clip, dino = _inputs(config)
    drop = torch.tensor([True, False, True])
    with torch.no_grad():
        dropped = model(x, t, clip, dino, drop_condition=drop)
        null = model(x, t, model.null_clip_input(BATCH), dino)
        kept = model(x, t, clip, dino)
    torch.testing.assert_close(dropped[drop], null[drop], rtol=0, atol=1e-6)
    torch.testing.assert_close(dropped[~drop], kept[~drop], rtol=0, atol=1e-6)
    assert (null[0] - kept[0]).abs().max() > 1e-3
    if null_clip == "zeros":
        assert torch.equal(model.null_clip_input(2), torch.zeros(2, config.clip_tokens, config.clip_channels))


def test_caller_null_tokens_replace_the_model_null(model, tiny):
    """The release's unconditional branch: CLIP tokens of an all-zero image, passed by the caller."""
    x, t, clip, dino = _inputs(tiny)
    zero_image_clip = torch.randn(tiny.clip_tokens, tiny.clip_channels)
    with torch.no_grad():
        dropped = model(x, t, clip, dino, drop_condition=torch.ones(BATCH, dtype=torch.bool),
                        null_clip_tokens=zero_image_clip)
        direct = model(x, t, zero_image_clip.expand(BATCH, -1, -1), dino)
    torch.testing.assert_close(dropped, direct, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="null_clip_tokens must have shape"):
        model(x, t, clip, dino, drop_condition=torch.ones(BATCH, dtype=torch.bool),
              null_clip_tokens=torch.zeros(2, tiny.clip_channels))


def test_forward_with_cfg_guides_eps_and_keeps_the_conditional_variance(model, tiny):
    x, t, clip, dino = _inputs(tiny)
    scale = 4.5
    with torch.no_grad():
        cond = model(x, t, clip, dino)
        uncond = model(x, t, model.null_clip_input(BATCH), dino)  # same DINO tokens in both branches
        guided = model.forward_with_cfg(x, t, clip, dino, scale)
        unit = model.forward_with_cfg(x, t, clip, dino, 1.0)
    c = tiny.in_channels
    torch.testing.assert_close(guided[:, :c], uncond[:, :c] + scale * (cond[:, :c] - uncond[:, :c]),
                               rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(guided[:, c:], cond[:, c:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(unit, cond, rtol=1e-5, atol=1e-5)


def test_adaln_zero_init_makes_every_block_the_identity(tiny):
    torch.manual_seed(0)
    model = ImageConditionedDiT(tiny)  # init="adaln_zero"
    x, t, clip, dino = _inputs(tiny)
    tokens = torch.randn(BATCH, tiny.num_tokens, tiny.hidden_size)
    with torch.no_grad():
        t0 = model.t_block(model.t_embedder(t))
        clip_h, dino_h = model.y_embedder(clip), model.dino_embedder(dino)
        for block in model.blocks:
            assert torch.equal(block(tokens, t0, clip_h, dino_h), tokens)
        assert torch.equal(model(x, t, clip, dino), torch.zeros(BATCH, 16, *tiny.input_size))
    pixart = ImageConditionedDiT(tiny.replace(init="pixart"))  # the release's init: gates are not zero
    with torch.no_grad():
        t0 = pixart.t_block(pixart.t_embedder(t))
        moved = pixart.blocks[0](tokens, t0, pixart.y_embedder(clip), pixart.dino_embedder(dino))
    assert (moved - tokens).abs().max() > 1e-3


def test_gradient_checkpointing_gives_the_same_gradients(tiny):
    model = _trained_like(tiny).train()
    x, t, clip, dino = _inputs(tiny)
    drop = torch.tensor([False, True, False])  # so the learned null tokens get a gradient too
    model(x, t, clip, dino, drop_condition=drop).square().mean().backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.gradient_checkpointing = True
    model(x, t, clip, dino, drop_condition=drop).square().mean().backward()
    for a, p in zip(plain, model.parameters()):
        torch.testing.assert_close(p.grad, a, rtol=1e-5, atol=1e-7)


def test_forward_and_backward_take_under_a_second_on_cpu(tiny):
    model = ImageConditionedDiT(tiny).train()
    x, t, clip, dino = _inputs(tiny, batch=4)
    model(x, t, clip, dino).sum().backward()  # warm-up
    start = time.perf_counter()
    model(x, t, clip, dino, drop_condition=model.sample_drop_mask(4)).square().mean().backward()
    assert time.perf_counter() - start < 1.0


def test_overfits_a_tiny_regression(tiny):
    config = tiny.replace(input_size=(32, 8))  # 64 tokens: a random target the 242k parameters fit in 60 steps
    torch.manual_seed(0)
    model = ImageConditionedDiT(config).train()
    x, t, clip, dino = _inputs(config, batch=4, seed=3)
    target = torch.randn(4, 16, *config.input_size, generator=torch.Generator().manual_seed(4))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = (model(x, t, clip, dino) - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(target.square().mean().item(), rel=1e-5)  # zero output at init
    assert losses[-1] < 0.3 * losses[0]


def test_sample_drop_mask_follows_the_configured_probability(tiny):
    model = ImageConditionedDiT(tiny)
    mask = model.sample_drop_mask(20_000, generator=torch.Generator().manual_seed(0))
    assert mask.dtype == torch.bool
    assert mask.float().mean().item() == pytest.approx(tiny.condition_dropout, abs=0.01)


def test_bad_inputs_and_configs_raise_clear_errors(model, tiny):
    x, t, clip, dino = _inputs(tiny)
    with pytest.raises(ValueError, match=r"x must have shape \[B, 8, 64, 16\]"):
        model(x[:, :4], t, clip, dino)
    with pytest.raises(ValueError, match="dino_tokens must have shape"):
        model(x, t, clip, dino[..., :5])
    with pytest.raises(ValueError, match="t must have shape"):
        model(x, t[:2], clip, dino)
    with pytest.raises(ValueError, match="drop_condition must have shape"):
        model(x, t, clip, dino, drop_condition=torch.zeros(2, dtype=torch.bool))
    with pytest.raises(ValueError, match="learned null condition has 5 tokens"):
        model(x, t, clip[:, :3], dino, drop_condition=torch.ones(BATCH, dtype=torch.bool))
    with pytest.raises(ConfigError, match="pos_embed_grid must be one of"):
        tiny.replace(pos_embed_grid="square")
    with pytest.raises(ConfigError, match="square number of tokens"):
        tiny.replace(input_size=(24, 8), pos_embed_grid="release")  # 12×4 = 48 tokens
    with pytest.raises(ConfigError, match="divisible by patch_size"):
        tiny.replace(input_size=(31, 8))
    assert DiTConfig.from_json(DIT_PRESETS.get("paper").to_json()) == DIT_PRESETS.get("paper")


def test_paper_follows_the_release_init_and_null_condition():
    """Issue 9 items 11-12: PixArt init (only cross-attention proj and final layer zero) and the CLIP
    embedding of a zero image as the unconditional input, which the model never guesses."""
    paper = DIT_PRESETS.get("paper")
    assert (paper.init, paper.null_clip) == ("pixart", "zero_image")
    small = DIT_PRESETS.get("tiny").replace(init=paper.init, null_clip=paper.null_clip)
    torch.manual_seed(0)
    model = ImageConditionedDiT(small)
    assert model.y_embedder.null_tokens is None  # no parameters: the release's state dict
    assert model.t_block[1].weight.abs().min(dim=1).values.gt(0).all()  # no zeroed gate rows
    assert all(block.cross_attn.proj.weight.abs().sum() == 0 for block in model.blocks)
    assert model.final_layer.linear.weight.abs().sum() == 0
    x, t, clip, dino = _inputs(small)
    with pytest.raises(ValueError, match="all-zero image"):
        model.forward_with_cfg(x, t, clip, dino, 4.5)
    with pytest.raises(ValueError, match="all-zero image"):
        model(x, t, clip, dino, drop_condition=torch.ones(BATCH, dtype=torch.bool))
    zero_image_clip = torch.randn(small.clip_tokens, small.clip_channels)
    with torch.no_grad():
        guided = model.forward_with_cfg(x, t, clip, dino, 4.5, null_clip_tokens=zero_image_clip)
    assert torch.isfinite(guided).all()


def test_a_release_style_null_condition_is_read_or_refused(tmp_path):
    from safetensors.torch import save_file

    from avatar4d.diffusion.sampling import NULL_CONDITION_FILE, null_clip_tokens
    from avatar4d.errors import UserError

    with pytest.raises(UserError, match="encoded_null_condition.safetensors not found"):
        null_clip_tokens("zero_image", tmp_path)
    assert null_clip_tokens("learned", tmp_path) is None and null_clip_tokens("zeros", tmp_path) is None
    tokens = torch.randn(5, 32)
    save_file({"clip_tokens": tokens, "dino_tokens": torch.zeros(5, 24)}, str(tmp_path / NULL_CONDITION_FILE))
    assert torch.equal(null_clip_tokens("zero_image", tmp_path), tokens[None])


def test_sampling_a_release_style_dit_needs_its_null_condition():
    from avatar4d.diffusion import DiffusionConfig, SamplingConfig
    from avatar4d.diffusion.sampling import sample_latents
    from avatar4d.errors import UserError

    config = DIT_PRESETS.get("tiny").replace(null_clip="zero_image", init="pixart")
    model = ImageConditionedDiT(config).eval()
    x, _, clip, dino = _inputs(config)
    kwargs = dict(sampling=SamplingConfig(steps=2), diffusion=DiffusionConfig())
    with pytest.raises(UserError, match="all-zero image"):
        sample_latents(model, clip, dino, tuple(x.shape), **kwargs)
    zero_image_clip = torch.randn(1, config.clip_tokens, config.clip_channels)
    assert torch.isfinite(sample_latents(model, clip, dino, tuple(x.shape), null_clip=zero_image_clip, **kwargs)).all()
    unguided = SamplingConfig(steps=2, guidance_scale=1.0)  # no unconditional branch: nothing to refuse
    latents = sample_latents(model, clip, dino, tuple(x.shape), sampling=unguided, diffusion=DiffusionConfig())
    assert latents.shape == x.shape
