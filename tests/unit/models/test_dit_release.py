"""DiT ``paper`` preset against the released AvatarArtist DiT manifest, and the weight converter."""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import pytest
import torch

from avatar4d.checkpoint import CheckpointError
from avatar4d.models.dit import (
    DIT_PRESETS,
    ImageConditionedDiT,
    convert_released_dit,
    convert_released_dit_file,
    load_dit,
    load_released_dit_file,
    sincos_pos_embed_2d,
)
from tests.support.manifests import load_manifest


@pytest.fixture(scope="module")
def manifest() -> dict:
    return load_manifest("avatarartist-release/dit_TriDitCLIPDINO_XL_2.json")


@pytest.fixture(scope="module")
def paper_model() -> ImageConditionedDiT:
    with torch.device("meta"):
        return ImageConditionedDiT(DIT_PRESETS.get("paper"))


def _release_wrapped(state: dict[str, torch.Tensor], prefix: str = "") -> dict:
    """A checkpoint dict as the release's save_checkpoint writes it (EMA weights in 'state_dict_ema')."""
    return {"state_dict": {prefix + k: v for k, v in state.items()},
            "state_dict_ema": {prefix + k: v for k, v in state.items()}, "epoch": 7}


def test_paper_state_dict_is_the_release_key_for_key_in_order(paper_model, manifest):
    state = paper_model.state_dict()
    expected = [(name, tuple(shape)) for name, shape in manifest["tensors"]]
    assert len(state) == manifest["num_state_dict_keys"] == 538
    assert [(name, tuple(t.shape)) for name, t in state.items()] == expected
    assert [name for name, _ in paper_model.named_buffers()] == manifest["buffers"] == ["pos_embed"]


def test_paper_parameter_counts_match_the_release(paper_model, manifest):
    assert sum(p.numel() for p in paper_model.parameters()) == manifest["num_params"] == 726_157_504
    for module, count in manifest["num_params_by_top_level_module"].items():
        assert sum(p.numel() for p in getattr(paper_model, module).parameters()) == count, module


def test_release_grid_pos_embed_matches_the_manifest_checksum(manifest):
    facts = manifest["pos_embed_facts"]
    pos = sincos_pos_embed_2d(1152, DIT_PRESETS.get("paper").token_grid, "release")  # [1024, 1152] float32
    assert [1, *pos.shape] == facts["shape"]
    assert hashlib.sha256(pos.numpy().astype("<f4").tobytes()).hexdigest() == facts["sha256_float32_le"]
    assert pos.double().sum().item() == pytest.approx(facts["sum"], rel=1e-9)
    assert pos[0, :4].tolist() == facts["row0_first4"]
    assert pos[1, :4].tolist() == facts["row1_first4"]
    assert pos[32, :4].tolist() == facts["row32_first4"]
    assert pos[1, 576:580].tolist() == facts["row1_ch576_579"]
    assert pos[32, 576:580].tolist() == facts["row32_ch576_579"]


def test_true_grid_differs_from_the_release_quirk():
    grid = DIT_PRESETS.get("paper").token_grid
    true, release = sincos_pos_embed_2d(1152, grid, "true"), sincos_pos_embed_2d(1152, grid, "release")
    # token 16 is row 1, column 0 on the real 64×16 grid; the release gives it column 8, row 0.
    assert true[16, 576] == pytest.approx(torch.sin(torch.tensor(1.0)).item())
    assert true[16, 0] == 0.0
    assert release[16, 0] == pytest.approx(torch.sin(torch.tensor(8.0)).item())
    assert release[16, 576] == 0.0


def test_converter_maps_a_release_shaped_checkpoint_onto_paper(paper_model, manifest):
    with torch.device("meta"):
        released = {name: torch.empty(shape) for name, shape in manifest["tensors"]}
    state = convert_released_dit(_release_wrapped(released, prefix="module."))
    own = paper_model.state_dict()
    assert list(state) == list(own)
    assert all(state[k].shape == own[k].shape for k in own)
    with torch.device("meta"):
        converted = ImageConditionedDiT(DIT_PRESETS.get("paper"))
    missing, unexpected = converted.load_state_dict(state, strict=True, assign=True)
    assert missing == [] and unexpected == []
    facts = manifest["pos_embed_facts"]
    digest = hashlib.sha256(converted.pos_embed[0].numpy().astype("<f4").tobytes()).hexdigest()
    assert digest == facts["sha256_float32_le"]


def test_converter_transfers_values_bit_exactly_and_uses_the_ema_weights():
    config = DIT_PRESETS.get("tiny")
    torch.manual_seed(0)
    source = ImageConditionedDiT(config)
    ema = {k: torch.randn_like(v) for k, v in source.state_dict().items()}
    raw = {k: torch.randn_like(v) for k, v in ema.items()}
    checkpoint = {"state_dict": {"model." + k: v for k, v in raw.items()},
                  "state_dict_ema": {"model." + k: v for k, v in ema.items()}, "optimizer": {}, "epoch": 3}
    state = convert_released_dit(checkpoint, config)
    target = ImageConditionedDiT(config)
    target.load_state_dict(state, strict=True)
    for name, tensor in target.state_dict().items():
        if name == "pos_embed":  # the stored one is dropped and recomputed
            assert torch.equal(tensor, source.pos_embed) and not torch.equal(tensor, ema[name])
        else:
            assert torch.equal(tensor, ema[name]), name


def test_converter_rejects_files_not_wrapped_like_the_release():
    config = DIT_PRESETS.get("tiny")
    state = ImageConditionedDiT(config).state_dict()
    with pytest.raises(CheckpointError, match="'state_dict'"):
        convert_released_dit({"state_dict_ema": state}, config)
    with pytest.raises(CheckpointError, match="state_dict_ema"):
        convert_released_dit({"state_dict": state}, config)
    extra = _release_wrapped({**state, "blocks.9.attn.qkv.weight": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="1 unexpected: blocks.9.attn.qkv.weight"):
        convert_released_dit(extra, config)
    short = _release_wrapped({k: v for k, v in state.items() if k != "t_block.1.bias"})
    with pytest.raises(CheckpointError, match="1 missing: t_block.1.bias"):
        convert_released_dit(short, config)
    with pytest.raises(CheckpointError, match="the released DiT weights do not fit"):
        convert_released_dit(_release_wrapped(state))  # tiny weights, paper config


class _NotATensor:
    pass


def test_file_loading_round_trip_and_refusal_of_pickled_objects(tmp_path: Path):
    config = DIT_PRESETS.get("tiny")
    torch.manual_seed(1)
    state = {k: torch.randn_like(v) for k, v in ImageConditionedDiT(config).state_dict().items()}
    source = tmp_path / "DiT.pth"
    torch.save(_release_wrapped(state), source)
    assert set(load_released_dit_file(source)) == {"state_dict", "state_dict_ema", "epoch"}

    info = convert_released_dit_file(source, tmp_path / "converted", preset="tiny")
    model, loaded_info = load_dit(tmp_path / "converted")
    assert info.component == loaded_info.component == "dit"
    assert torch.equal(model.blocks[1].mlp.fc2.weight, state["blocks.1.mlp.fc2.weight"])

    unsafe = tmp_path / "unsafe.pth"
    torch.save({"state_dict": {}, "state_dict_ema": {}, "extra": _NotATensor()}, unsafe, pickle_module=pickle)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_released_dit_file(unsafe)
    with pytest.raises(CheckpointError, match="not found"):
        load_released_dit_file(tmp_path / "missing.pth")
