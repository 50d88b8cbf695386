"""`avatar4d convert avatarartist`: released DiT/VAE files (wrapped as the release wraps them) → our
checkpoints. The paper-size structure is checked in tests/unit/models/test_{dit,vae}_release.py;
here the whole CLI path runs on the tiny presets."""

import torch

from avatar4d.cli import main
from avatar4d.models.dit import DIT_PRESETS, ImageConditionedDiT
from avatar4d.models.dit.convert import load_dit
from avatar4d.models.vae import VAE_PRESETS, TriplaneVAE
from avatar4d.models.vae.convert import load_vae, to_released_vae_state_dict


def test_converts_release_wrapped_files(tmp_path, capsys):
    torch.manual_seed(0)
    dit = ImageConditionedDiT(DIT_PRESETS.get("tiny"))
    ema = {f"module.{k}": v + 1.0 for k, v in dit.state_dict().items()}  # EMA weights differ from the raw ones
    torch.save({"state_dict": {f"module.{k}": v for k, v in dit.state_dict().items()}, "state_dict_ema": ema,
                "epoch": 3}, tmp_path / "DiT.pth")
    vae = TriplaneVAE(VAE_PRESETS.get("tiny"))
    release_vae = {k: v.half() for k, v in to_released_vae_state_dict(vae.state_dict()).items()}
    torch.save(release_vae, tmp_path / "pytorch_model.bin")

    assert main(["convert", "avatarartist", "--dit", str(tmp_path / "DiT.pth"), "--vae",
                 str(tmp_path / "pytorch_model.bin"), "--out", str(tmp_path / "out"), "--preset", "tiny"]) == 0
    assert capsys.readouterr().out.count("wrote") == 2
    converted_dit, info = load_dit(tmp_path / "out" / "dit")
    assert info.metadata["source_key"] == "state_dict_ema"
    for name, value in converted_dit.state_dict().items():
        if name != "pos_embed":
            assert torch.equal(value, ema[f"module.{name}"]), name
    converted_vae, _ = load_vae(tmp_path / "out" / "vae")
    for name, value in converted_vae.state_dict().items():
        assert torch.equal(value, vae.state_dict()[name].half().float()), name


def test_bad_inputs_are_one_line_errors(tmp_path, capsys):
    assert main(["convert", "avatarartist", "--out", str(tmp_path / "o")]) == 1
    assert "give --dit, --vae and/or --render" in capsys.readouterr().err
    assert main(["convert", "avatarartist", "--dit", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "o")]) == 1
    assert "file not found" in capsys.readouterr().err
    torch.save({"weights": torch.zeros(1)}, tmp_path / "odd.pth")
    assert main(["convert", "avatarartist", "--dit", str(tmp_path / "odd.pth"), "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("avatar4d: error:") and "state_dict" in err and len(err.strip().splitlines()) == 1
