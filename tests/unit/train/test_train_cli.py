"""`avatar4d train vae|dit`: arguments, overrides, and one-line errors before anything starts."""

import argparse

import pytest

from avatar4d.cli import main
from avatar4d.errors import UserError
from train.cli import build_config, parse_overrides, register


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    return parser.parse_args(["train", *argv])


def test_options_and_overrides_reach_the_config(tmp_path):
    args = parse("dit", "--data", str(tmp_path), "--storage", str(tmp_path / "runs"), "--workers", "3",
                 "--steps", "9", "--run-name", "exp1", "--set", "train.lr=3e-4", "--set", "model.depth=3",
                 "--vae-checkpoint", str(tmp_path / "vae"))
    config = build_config(args)
    assert (config.task, config.data, config.train.num_workers, config.train.steps) == ("dit", str(tmp_path), 3, 9)
    assert config.train.run_name == "exp1" and config.train.lr == 3e-4 and config.model.depth == 3
    assert config.vae_checkpoint == str(tmp_path / "vae") and config.train.storage_path == str(tmp_path / "runs")
    vae = build_config(parse("vae", "--recipe", "paper", "--lpips-backbone", "/w/vgg.pth", "--generators", "/g"))
    assert vae.train.run_name == "vae-paper" and vae.loss.lpips_backbone == "/w/vgg.pth"
    assert vae.loss.generators == ["/g"] and vae.model.base_channels == 128


def test_override_values_are_yaml_scalars():
    assert parse_overrides(["a.b=1", "c=0.5", "d=true", "e=[1, 2]", "f=text"]) == {
        "a.b": 1, "c": 0.5, "d": True, "e": [1, 2], "f": "text"}
    with pytest.raises(UserError, match="PATH=VALUE"):
        parse_overrides(["novalue"])


@pytest.mark.parametrize("argv, message", [
    (["train", "vae", "--data", "{missing}"], "is not a folder"),
    (["train", "dit", "--data", "{tmp}", "--workers", "0"], "--workers must be >= 1"),
    (["train", "dit", "--data", "{tmp}", "--set", "train.nope=1"], "unknown config path 'train.nope'"),
    (["train", "dit", "--data", "{tmp}", "--storage", "{tmp}/runs"], "encoded dataset not found"),
    (["train", "vae", "--data", "{tmp}", "--storage", "{tmp}/runs"], "pairs dataset not found"),
])
def test_bad_inputs_are_one_line_errors(argv, message, tmp_path, capsys):
    argv = [a.format(missing=tmp_path / "missing", tmp=tmp_path) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("avatar4d: error:") and message in err and len(err.strip().splitlines()) == 1


def test_train_without_a_task_shows_help(capsys):
    assert main(["train"]) == 2
    out = capsys.readouterr().out
    assert "vae" in out and "dit" in out
