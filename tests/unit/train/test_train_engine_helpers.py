"""Pieces of the worker loop that run without Ray: seeds, metric reduction, events, fault injection,
the optimiser, and MLflow parameter flattening."""

import json
import os
import subprocess
import sys
import textwrap

import torch
from torch import nn

from train.config import TrainConfig
from train.engine import (
    FAULT_ENV,
    append_event,
    build_optimizer,
    maybe_inject_fault,
    read_events,
    reduce_metrics,
    step_seed,
    write_json_atomic,
)
from train.tracking import flatten_params, run_key


def test_step_seeds_are_deterministic_and_distinct():
    assert step_seed(0, 0, 5) == step_seed(0, 0, 5)
    seeds = {step_seed(seed, rank, step) for seed in (0, 1) for rank in (0, 1) for step in range(1, 50)}
    assert len(seeds) == 2 * 2 * 49 and all(0 <= s < 2**63 for s in seeds)


def test_reduce_metrics_without_a_process_group_is_the_identity():
    assert reduce_metrics({"loss": 0.5, "mse": 0.25}, torch.device("cpu")) == {"loss": 0.5, "mse": 0.25}


def test_events_and_progress_files(tmp_path):
    append_event(tmp_path / "run", "start", first_step=1, restored_from=None)
    append_event(tmp_path / "run", "checkpoint", step=10)
    append_event(None, "ignored")
    events = read_events(tmp_path / "run")
    assert [e["event"] for e in events] == ["start", "checkpoint"] and events[1]["step"] == 10
    write_json_atomic(tmp_path / "run" / "progress.json", {"step": 3})
    assert json.loads((tmp_path / "run" / "progress.json").read_text()) == {"step": 3}
    assert [p.name for p in (tmp_path / "run").iterdir() if p.name.startswith(".")] == []


def test_fault_injection_fires_once_at_its_step_and_rank(tmp_path, monkeypatch):
    fault = tmp_path / "fault.json"
    fault.write_text(json.dumps({"step": 3, "rank": 1}))
    code = textwrap.dedent("""
        from train.engine import maybe_inject_fault
        for rank in (0, 1):
            for step in range(1, 6):
                maybe_inject_fault(step, rank)
                print(rank, step, flush=True)
    """)
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ, FAULT_ENV: str(fault)},
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stdout.split("\n")[-2] == "1 2"  # rank 0 ran all steps, rank 1 exited after step 3
    assert not fault.exists() and (tmp_path / "fault.json.fired").is_file()
    monkeypatch.setenv(FAULT_ENV, str(fault))
    maybe_inject_fault(3, 1)  # fired already: nothing happens


def test_optimizer_is_adamw_with_the_configured_hyper_parameters():
    model = nn.Linear(3, 2)
    model.bias.requires_grad_(False)
    optimizer = build_optimizer(model, TrainConfig(lr=1e-4, weight_decay=3e-2, eps=1e-10, betas=(0.9, 0.99)))
    group = optimizer.param_groups[0]
    assert isinstance(optimizer, torch.optim.AdamW) and len(group["params"]) == 1
    assert (group["lr"], group["weight_decay"], group["eps"], group["betas"]) == (1e-4, 3e-2, 1e-10, (0.9, 0.99))


def test_params_are_flattened_with_dotted_names(tmp_path):
    flat = flatten_params({"train": {"lr": 0.001, "betas": [0.9, 0.999]}, "task": "vae", "x": None})
    assert flat == {"train.lr": "0.001", "train.betas": "[0.9, 0.999]", "task": "vae", "x": "None"}
    assert run_key(TrainConfig(storage_path=str(tmp_path), run_name="r")) == f"{tmp_path.resolve()}/r"
