"""TrainConfig validation, the DeepSpeed config it produces, dotted overrides and the recipes."""

import pytest

from avatar4d.config import ConfigError
from train.config import TrainConfig, apply_overrides, deepspeed_config
from train.dit.recipes import DiTTrainConfig
from train.dit.recipes import get_recipe as dit_recipe
from train.task import config_from_dict
from train.vae.recipes import get_recipe as vae_recipe


def test_deepspeed_config_on_cpu_is_fp32_with_zero_and_warmup():
    train = TrainConfig(num_workers=2, micro_batch_size=3, grad_accumulation=2, zero_stage=2, lr=1e-3,
                        warmup_steps=7, grad_clip=0.5)
    config = deepspeed_config(train, on_gpu=False)
    assert config["train_batch_size"] == 12 == train.samples_per_step
    assert config["train_micro_batch_size_per_gpu"] == 3 and config["gradient_accumulation_steps"] == 2
    assert config["zero_optimization"] == {"stage": 2}
    assert config["bf16"] == {"enabled": False} and config["fp16"] == {"enabled": False}
    assert config["gradient_clipping"] == 0.5
    assert config["scheduler"]["params"] == {"warmup_min_lr": 0.0, "warmup_max_lr": 1e-3, "warmup_num_steps": 7,
                                             "warmup_type": "linear"}


def test_auto_precision_is_bf16_on_gpu_only_and_no_warmup_means_no_scheduler():
    train = TrainConfig(warmup_steps=0)
    assert deepspeed_config(train, on_gpu=True)["bf16"] == {"enabled": True}
    assert "scheduler" not in deepspeed_config(train, on_gpu=True)
    assert TrainConfig(precision="fp32").resolved_precision(on_gpu=True) == "fp32"


@pytest.mark.parametrize("field, value", [("zero_stage", 4), ("precision", "fp16"), ("steps", 0),
                                          ("run_name", "a b"), ("ema_decay", 1.0), ("betas", (0.9, 1.0))])
def test_bad_values_are_config_errors(field, value):
    with pytest.raises(ConfigError):
        TrainConfig(**{field: value})


def test_default_tracking_uri_is_sqlite_next_to_the_runs(tmp_path):
    train = TrainConfig(storage_path=str(tmp_path / "runs"), run_name="r")
    assert train.resolved_tracking_uri() == f"sqlite:///{(tmp_path / 'runs').resolve()}/mlflow.db"
    assert train.artifact_location() == (tmp_path / "runs" / "mlartifacts").resolve().as_uri()
    assert train.run_dir() == tmp_path / "runs" / "r"
    assert TrainConfig(tracking_uri="http://mlflow:5000").artifact_location() is None


def test_overrides_follow_dotted_paths_and_reject_unknown_ones():
    config = apply_overrides(vae_recipe("tiny"), {"train.steps": 7, "loss.kl": 0.5, "model.base_channels": 8})
    assert config.train.steps == 7 and config.loss.kl == 0.5 and config.model.base_channels == 8
    with pytest.raises(ConfigError, match="unknown config path 'train.nope'"):
        apply_overrides(config, {"train.nope": 1})
    with pytest.raises(ConfigError):
        apply_overrides(config, {"train.steps": "many"})


def test_recipes_follow_the_paper_and_round_trip():
    dit = dit_recipe("paper")
    assert (dit.train.lr, dit.train.weight_decay, dit.train.eps, dit.train.warmup_steps) == (1e-4, 3e-2, 1e-10, 500)
    assert (dit.train.ema_decay, dit.train.grad_clip, dit.train.samples_per_step) == (0.9999, 1.0, 1536)
    assert dit.diffusion.condition_drop_prob == dit.model.condition_dropout == 0.1
    assert (dit.sampling.scheduler, dit.sampling.steps, dit.sampling.guidance_scale) == ("dpmsolver++", 19, 4.5)
    vae = vae_recipe("paper")
    assert (vae.loss.triplane_l1, vae.loss.depth_l1, vae.loss.lpips, vae.loss.kl) == (1.0, 1.0, 1.0, 1e-5)
    assert (vae.loss.latent_tv, vae.loss.reduction) == (2e-3, "sum")
    assert vae.loss.cameras.pitch_range == (-0.25, 0.65) and vae.loss.cameras.yaw_range == (-0.78, 0.78)
    assert vae.loss.cameras.roll_range == (-0.25, 0.25) and vae.train.samples_per_step == 32
    assert vae.train.lr == 1e-4 and vae.train.steps == 100_000
    for config in (dit, vae, dit_recipe("tiny").with_defaults("tiny")):
        assert config_from_dict(config.to_dict()) == config


def test_with_defaults_names_the_run_and_the_model():
    config = dit_recipe("tiny").with_defaults("tiny")
    assert config.train.run_name == "dit-tiny" and config.train.registered_model == "avatar4d-dit"


def test_dit_config_refuses_disagreeing_dropout():
    base = dit_recipe("tiny")
    with pytest.raises(ConfigError, match="condition_dropout"):
        DiTTrainConfig(model=base.model.replace(condition_dropout=0.2), diffusion=base.diffusion)
