"""Every model offers save_pretrained/from_pretrained in the Hugging Face layout, with our hash and
strict key/shape checks; checkpoints follow the umask."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch

from avatar4d.checkpoint.io import CheckpointError, save_checkpoint


def tiny_models():
    from avatar4d.models.dit import DIT_PRESETS, ImageConditionedDiT
    from avatar4d.models.vae import VAE_PRESETS, TriplaneVAE

    return [TriplaneVAE(VAE_PRESETS.get("tiny")), ImageConditionedDiT(DIT_PRESETS.get("tiny"))]


@pytest.mark.parametrize("index", [0, 1])
def test_models_round_trip_in_the_hugging_face_layout(index, tmp_path):
    torch.manual_seed(0)
    model = tiny_models()[index]
    info = model.save_pretrained(tmp_path / "m", step=7, metadata={"note": "x"})
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"model.safetensors", "config.json", "checkpoint.json"}
    assert json.loads((tmp_path / "m" / "config.json").read_text()) == model.config.to_dict()
    loaded = type(model).from_pretrained(tmp_path / "m")
    assert type(loaded) is type(model) and loaded.config == model.config and info.step == 7
    for name, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name


def test_generator_and_discriminator_have_the_mixin(tmp_path):
    from avatar4d.models.discriminator import DualDiscriminator
    from avatar4d.models.next3d import GENERATOR_PRESETS, Next3DGenerator

    generator = Next3DGenerator(GENERATOR_PRESETS.get("tiny"))
    generator.save_pretrained(tmp_path / "g")
    assert Next3DGenerator.from_pretrained(tmp_path / "g").config == generator.config
    assert DualDiscriminator.checkpoint_component == "dual_discriminator"
    assert DualDiscriminator.config_class().__name__ == "DualDiscriminatorConfig"


def test_damaged_weights_wrong_component_and_wrong_shapes_are_refused(tmp_path):
    from avatar4d.models.dit import ImageConditionedDiT
    from avatar4d.models.vae import VAE_PRESETS, TriplaneVAE

    vae = TriplaneVAE(VAE_PRESETS.get("tiny"))
    vae.save_pretrained(tmp_path / "v")
    with pytest.raises(CheckpointError, match="holds a 'triplane_vae' checkpoint"):
        ImageConditionedDiT.from_pretrained(tmp_path / "v")
    weights = tmp_path / "v" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(CheckpointError, match="damaged"):
        TriplaneVAE.from_pretrained(tmp_path / "v")
    state = {k: v for k, v in vae.state_dict().items() if not k.startswith("decoder.")}
    save_checkpoint(tmp_path / "partial", state, component="triplane_vae", config=vae.config)
    with pytest.raises(CheckpointError, match="missing"):
        TriplaneVAE.from_pretrained(tmp_path / "partial")


def test_a_plain_hugging_face_folder_loads_with_strict_checks(tmp_path):
    from safetensors.torch import save_file

    from avatar4d.models.vae import VAE_PRESETS, TriplaneVAE

    vae = TriplaneVAE(VAE_PRESETS.get("tiny"))
    (tmp_path / "hf").mkdir()
    save_file(vae.state_dict(), str(tmp_path / "hf" / "model.safetensors"))
    (tmp_path / "hf" / "config.json").write_text(json.dumps(vae.config.to_dict()))
    assert TriplaneVAE.from_pretrained(tmp_path / "hf").config == vae.config


def test_checkpoints_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "c", {"w": torch.zeros(2)}, component="x", config={"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "c").stat().st_mode) == 0o755
    for name in ("model.safetensors", "checkpoint.json", "config.json"):
        assert stat.S_IMODE((tmp_path / "c" / name).stat().st_mode) == 0o644, name
