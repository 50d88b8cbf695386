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
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.startswith("avatar4d: error:") and message in err and len(err.strip().splitlines()) == 1


def test_train_without_a_task_shows_help(capsys):
    assert main(["train"]) == 2
    out = capsys.readouterr().out
    assert "vae" in out and "dit" in out


def test_print_config_dumps_the_recipe_as_yaml_and_config_reads_it_back(tmp_path, capsys):
    import yaml

    assert main(["train", "dit", "--steps", "7", "--set", "train.lr=2e-4", "--print-config"]) == 0
    text = capsys.readouterr().out
    data = yaml.safe_load(text)
    assert data["task"] == "dit" and data["train"]["steps"] == 7 and data["train"]["lr"] == 2e-4
    (tmp_path / "run.yaml").write_text(text)
    config = build_config(parse("dit", "--config", str(tmp_path / "run.yaml"), "--workers", "1"))
    assert config.train.steps == 7 and config.train.lr == 2e-4 and config.train.num_workers == 1
    assert main(["train", "vae", "--config", str(tmp_path / "run.yaml")]) == 1
    assert "is a 'dit' config" in capsys.readouterr().err


def test_relative_paths_are_made_absolute_on_the_driver(tmp_path, monkeypatch):
    from train.runner import prepare_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    config = prepare_config(build_config(parse("dit", "--data", "data", "--storage", "runs",
                                               "--vae-checkpoint", "runs/vae/final", "--generators", "g")))
    assert config.data == str(tmp_path / "data") and config.train.storage_path == str(tmp_path / "runs")
    assert config.vae_checkpoint == str(tmp_path / "runs/vae/final") and config.generators == [str(tmp_path / "g")]
    assert config.train.tracking_uri == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}"
    assert config.train.artifact_location() == (tmp_path / "runs" / "mlartifacts").as_uri()
    vae = prepare_config(build_config(parse("vae", "--lpips-backbone", "w/alex.pth", "--storage", "s3://b/runs",
                                            "--tracking-uri", "http://mlflow:5000")))  # no sqlite in a bucket
    assert vae.loss.lpips_backbone == str(tmp_path / "w/alex.pth") and vae.train.storage_path == "s3://b/runs"


def test_mlflow_settings_follow_mlflow_s_precedence(tmp_path, monkeypatch):
    from train.runner import prepare_config

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env.db")
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "from-env")
    env = prepare_config(build_config(parse("vae"))).train
    assert env.tracking_uri == f"sqlite:///{tmp_path / 'env.db'}" and env.experiment == "from-env"
    assert env.artifact_location() == (tmp_path / "mlartifacts").as_uri()  # next to the database
    flag = prepare_config(build_config(parse("vae", "--tracking-uri", "http://mlflow:5000", "--experiment", "x"))).train
    assert flag.tracking_uri == "http://mlflow:5000" and flag.experiment == "x"
    assert flag.artifact_location() is None  # the server decides
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME")
    default = prepare_config(build_config(parse("vae"))).train
    assert default.tracking_uri == f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}" and default.experiment == "avatar4d"


def test_summary_line_names_paths_that_the_user_can_open(tmp_path, monkeypatch):
    from train.cli import summary_line
    from train.runner import TrainResult

    monkeypatch.chdir(tmp_path)
    config = build_config(parse("vae"))
    result = TrainResult(run_dir=str(tmp_path / "runs" / "vae-tiny"), final_step=10, metrics={"loss": 0.5},
                         checkpoint=None, seconds=75.0, tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}",
                         experiment="avatar4d", model_uri="models:/m-1")
    assert summary_line(result, config) == (
        "run vae-tiny: step 10, loss 0.5 in 1m15s; final model runs/vae-tiny/final; "
        "MLflow sqlite:///runs/mlflow.db experiment avatar4d, model models:/m-1")
