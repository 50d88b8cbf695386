"""The README's workflow, verbatim, from a fresh working folder with relative paths.

The command lines are read from the README's block after ``<!-- readme-workflow -->`` (factory run
→ train vae → factory encode → train dit) and run one after the other in a new temporary folder,
as a user would type them. Every command must succeed and every path it prints must exist there
(the final models, the MLflow database, the datasets). Training used to fail on relative paths
(workers run in Ray's session folder) and printed paths that did not exist.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

from tests.integration.conftest import REPO

pytestmark = pytest.mark.integration

MARKER = "<!-- readme-workflow -->"


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split(MARKER, 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    lines = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    return [line for line in lines if line]


def printed_paths(output: str) -> list[str]:
    """Local paths in a command's output: ``sqlite:///PATH`` and words holding a '/' (not URIs)."""
    found = []
    for word in output.split():
        word = word.strip(";,()'\"")
        if word.startswith("sqlite:///"):
            found.append(word.removeprefix("sqlite:///"))
        elif "/" in word and ":" not in word and not word.startswith("-") and not word.endswith("/s"):  # not rates
            found.append(word)
    return found


def test_the_readme_workflow_runs_as_written(tmp_path, subprocess_env):
    commands = readme_commands()
    assert [shlex.split(c)[:3] for c in commands] == [
        ["avatar4d", "factory", "run"], ["avatar4d", "train", "vae"], ["avatar4d", "factory", "encode"],
        ["avatar4d", "train", "dit"]]
    env = {k: v for k, v in subprocess_env.items() if not k.startswith("MLFLOW_")}
    for command in commands:
        argv = [sys.executable, "-m", "avatar4d.cli", *shlex.split(command)[1:]]
        result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
        lines = result.stdout.strip().splitlines()
        assert len(lines) == 1, f"{command} printed more than its summary line:\n{result.stdout}"
        for path in printed_paths(lines[0]):
            assert (tmp_path / path).exists(), f"{command} printed {path}, which does not exist"
        if shlex.split(command)[1] == "train":
            assert re.search(r"final model runs/[\w-]+/final; MLflow sqlite:///runs/mlflow.db ", lines[0]), lines[0]
            noise = [line for line in result.stderr.splitlines() if "Traceback" in line or "Warning" in line
                     or "Reporting training result" in line or "core_worker" in line]
            assert not noise, noise
    for expected in ("runs/vae-tiny/final/model.safetensors", "runs/dit-tiny/final/config.json", "runs/mlflow.db",
                     "data/encoded.lance"):
        assert (tmp_path / expected).exists(), expected
    artifacts = list((tmp_path / "runs" / "mlartifacts").rglob("MLmodel"))
    assert len(artifacts) >= 2, "the registered models' artifacts live next to the MLflow database"
