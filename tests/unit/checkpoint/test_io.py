import json

import pytest
import torch
from torch import nn

from avatar4d.checkpoint import CheckpointError, load_checkpoint, load_state_dict_strict, save_checkpoint
from avatar4d.geometry.camera import PoseSamplerConfig


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


def test_round_trip_keeps_weights_config_step_and_metadata(tmp_path):
    model = _model()
    cfg = PoseSamplerConfig(yaw_range=(-0.1, 0.1))
    info = save_checkpoint(tmp_path / "ckpt", model.state_dict(), component="toy", config=cfg, step=17,
                           metadata={"domain": "pixar"})
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    state, loaded = load_checkpoint(tmp_path / "ckpt", component="toy")
    assert loaded.step == 17 and loaded.metadata == {"domain": "pixar"}
    assert PoseSamplerConfig.from_dict(loaded.config) == cfg
    assert loaded.weights_sha256 == info.weights_sha256 and len(info.weights_sha256) == 64
    other = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    load_state_dict_strict(other, state)
    for a, b in zip(model.state_dict().values(), other.state_dict().values()):
        assert torch.equal(a, b)


def test_shared_storage_is_saved_as_copies(tmp_path):
    shared = torch.arange(6.0)
    save_checkpoint(tmp_path / "c", {"a": shared, "b": shared[:3]}, component="t", config={})
    state, _ = load_checkpoint(tmp_path / "c")
    assert torch.equal(state["b"], torch.tensor([0.0, 1.0, 2.0]))


def test_overwrite_is_atomic_and_leaves_no_staging_folders(tmp_path):
    save_checkpoint(tmp_path / "c", {"w": torch.zeros(2)}, component="t", config={}, step=1)
    save_checkpoint(tmp_path / "c", {"w": torch.ones(2)}, component="t", config={}, step=2)
    state, info = load_checkpoint(tmp_path / "c")
    assert info.step == 2 and torch.equal(state["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_foreign_files_give_clear_errors(tmp_path):
    torch.save({"w": torch.zeros(1)}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="is a file"):
        load_checkpoint(tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not an avatar4d checkpoint"):
        load_checkpoint(tmp_path / "empty")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "model.safetensors").write_bytes(b"\x00" * 16)
    (foreign / "checkpoint.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(CheckpointError, match="not an avatar4d checkpoint description"):
        load_checkpoint(foreign)


def test_damaged_weights_and_wrong_component_are_detected(tmp_path):
    save_checkpoint(tmp_path / "c", {"w": torch.zeros(4)}, component="vae", config={})
    with pytest.raises(CheckpointError, match="holds a 'vae'"):
        load_checkpoint(tmp_path / "c", component="dit")
    weights = tmp_path / "c" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(tmp_path / "c")


def test_strict_loading_lists_missing_unexpected_and_mis_shaped_keys():
    model = _model()
    state = dict(model.state_dict())
    state.pop("0.bias")
    state["extra"] = torch.zeros(1)
    state["2.weight"] = torch.zeros(3, 8)
    with pytest.raises(CheckpointError) as err:
        load_state_dict_strict(model, state, what="toy")
    message = str(err.value)
    assert "1 missing: 0.bias" in message and "1 unexpected: extra" in message
    assert "2.weight (3, 8) vs (2, 8)" in message


def test_non_tensor_entries_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="not a tensor"):
        save_checkpoint(tmp_path / "c", {"w": [1, 2]}, component="t", config={})


def test_identical_weights_give_identical_files_in_every_process(tmp_path):
    """The recorded hash names a generator in dataset rows: it must not depend on the process
    (safetensors writes multi-key metadata in hash-randomised order)."""
    import subprocess
    import sys

    code = ("import sys, torch; from avatar4d.checkpoint import save_checkpoint; "
            "print(save_checkpoint(sys.argv[1], {'w': torch.arange(4.0)}, component='g', config={}).weights_sha256)")
    hashes = {subprocess.run([sys.executable, "-c", code, str(tmp_path / f"c{i}")], capture_output=True, text=True,
                             check=True, env={"PYTHONHASHSEED": str(i), **__import__("os").environ}).stdout
              for i in range(3)}
    assert len(hashes) == 1
