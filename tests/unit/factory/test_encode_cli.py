"""`factory encode` arguments: bad paths and options are one-line UserErrors before anything starts."""

import argparse

import pytest
import torch

from avatar4d.checkpoint import save_checkpoint
from avatar4d.errors import UserError
from avatar4d.models.vae import VAE_PRESETS, TriplaneVAE, save_vae
from factory.encode_cli import build_encode_config, register_encode


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="avatar4d factory")
    register_encode(parser.add_subparsers(dest="factory_command"))
    return parser


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("encode_cli")
    (root / "data" / "pairs.lance").mkdir(parents=True)
    (root / "empty").mkdir()
    torch.manual_seed(0)
    save_vae(root / "vae", TriplaneVAE(VAE_PRESETS.get("tiny")))
    save_checkpoint(root / "other", {"w": torch.zeros(1)}, component="dit", config={})
    (root / "file.txt").write_text("x")
    return root


def _error(argv: list[str]) -> str:
    args = _parser().parse_args(argv)
    with pytest.raises(UserError) as error:
        args.handler(args)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_missing_vae_checkpoint_is_one_line(folders):
    message = _error(["encode", "--data", str(folders / "data"), "--vae-checkpoint", str(folders / "nope")])
    assert message == f"--vae-checkpoint {folders / 'nope'}: no such folder"


def test_bad_paths_and_options(folders):
    data, vae = str(folders / "data"), str(folders / "vae")
    assert "no such folder" in _error(["encode", "--data", str(folders / "missing"), "--vae-checkpoint", vae])
    assert "is not a folder" in _error(["encode", "--data", str(folders / "file.txt"), "--vae-checkpoint", vae])
    assert "holds no pairs.lance" in _error(["encode", "--data", str(folders / "empty"), "--vae-checkpoint", vae])
    assert "is a file" in _error(["encode", "--data", data, "--vae-checkpoint", str(folders / "file.txt")])
    assert "not a triplane VAE" in _error(["encode", "--data", data, "--vae-checkpoint", str(folders / "other")])
    assert "not an avatar4d checkpoint" in _error(["encode", "--data", data,
                                                   "--vae-checkpoint", str(folders / "empty")])
    assert "needs local weights: give --clip-checkpoint and --dino-checkpoint" in _error(
        ["encode", "--data", data, "--vae-checkpoint", vae, "--encoders", "paper"])
    assert "--dino-checkpoint" in _error(["encode", "--data", data, "--vae-checkpoint", vae, "--encoders", "paper",
                                          "--clip-checkpoint", str(folders / "file.txt")])
    assert "--clip-checkpoint" in _error(["encode", "--data", data, "--vae-checkpoint", vae,
                                          "--clip-checkpoint", str(folders / "missing.bin")])
    assert "--batch-size must be >= 1" in _error(["encode", "--data", data, "--vae-checkpoint", vae,
                                                  "--batch-size", "0"])
    assert "--local runs without Ray" in _error(["encode", "--data", data, "--vae-checkpoint", vae, "--local",
                                                 "--address", "auto"])
    assert "--device applies to --local" in _error(["encode", "--data", data, "--vae-checkpoint", vae,
                                                    "--device", "cuda"])


def test_arguments_build_the_run_config(folders):
    args = _parser().parse_args(["encode", "--data", str(folders / "data"), "--vae-checkpoint", str(folders / "vae"),
                                 "--batch-size", "3", "--actors", "2", "--store-latent-std", "--local",
                                 "--device", "cpu", "--clip-checkpoint", str(folders / "file.txt")])
    config = build_encode_config(args)
    assert config.num_actors == 2 and config.encode.batch_size == 3 and config.encode.store_latent_std
    assert config.encode.encoders.clip.checkpoint == str(folders / "file.txt")
    assert config.encode.encoders.dino.checkpoint is None and config.encode.encoders.clip.token_shape == (5, 32)
    assert config.vae_checkpoint == str(folders / "vae")


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args(["encode", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--data", "--vae-checkpoint", "--encoders", "--clip-checkpoint", "--dino-checkpoint", "--address",
                   "--local", "--actors", "--batch-size", "--store-latent-std", "--num-cpus", "--no-progress"):
        assert option in text
