"""What the driver refuses before it starts Ray: clashing, missing or changed runs."""

import json

import pytest

from avatar4d.errors import UserError
from train.config import apply_overrides
from train.dit.recipes import tiny
from train.runner import RUN_FILE, check_run_folder, latest_checkpoint_state


@pytest.fixture()
def config(tmp_path):
    return apply_overrides(tiny(), {"train.storage_path": str(tmp_path / "runs"), "train.steps": 20}).with_defaults("t")


def test_new_runs_start_and_existing_ones_need_resume(config):
    assert check_run_folder(config, resume=False) is True
    with pytest.raises(UserError, match="nothing to resume: no run 'dit-t'"):
        check_run_folder(config, resume=True)
    run_dir = config.train.run_dir()
    (run_dir / "checkpoint_00000010").mkdir(parents=True)
    (run_dir / "checkpoint_00000010" / "trainer_state.json").write_text(json.dumps({"step": 10}))
    (run_dir / RUN_FILE).write_text(json.dumps(config.to_dict()))
    with pytest.raises(UserError, match="already exists .* pass --resume"):
        check_run_folder(config, resume=False)
    assert check_run_folder(config, resume=True) is False


def test_a_run_that_failed_before_its_first_checkpoint_starts_again_without_resume(config):
    """It used to leave run.json behind, and the same command then demanded --resume."""
    run_dir = config.train.run_dir()
    run_dir.mkdir(parents=True)
    for name in (RUN_FILE, "events.jsonl", "progress.json"):
        (run_dir / name).write_text(json.dumps(config.to_dict()))
    (run_dir / ".validate_storage_marker").write_text("")
    assert check_run_folder(config, resume=False) is True
    assert not (run_dir / RUN_FILE).exists() and not (run_dir / "events.jsonl").exists()


def test_resume_accepts_more_steps_but_not_other_settings(config):
    run_dir = config.train.run_dir()
    (run_dir / "checkpoint_00000020").mkdir(parents=True)
    (run_dir / RUN_FILE).write_text(json.dumps(config.to_dict()))
    (run_dir / "checkpoint_00000020" / "trainer_state.json").write_text(json.dumps({"step": 20, "epoch": 3}))
    assert latest_checkpoint_state(run_dir) == {"step": 20, "epoch": 3}
    with pytest.raises(UserError, match="already at step 20; pass --steps above it"):
        check_run_folder(config, resume=True)
    check_run_folder(apply_overrides(config, {"train.steps": 30, "train.log_every": 1}), resume=True)
    with pytest.raises(UserError, match="other settings \\(train.lr\\)"):
        check_run_folder(apply_overrides(config, {"train.steps": 30, "train.lr": 0.5}), resume=True)
    with pytest.raises(UserError, match="train.num_workers"):
        check_run_folder(apply_overrides(config, {"train.steps": 30, "train.num_workers": 3}), resume=True)


def test_a_foreign_folder_is_not_overwritten(config):
    run_dir = config.train.run_dir()
    run_dir.mkdir(parents=True)
    (run_dir / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="is not an avatar4d run"):
        check_run_folder(config, resume=False)
