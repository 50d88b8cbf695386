"""``avatar4d eval`` as a user runs it: a held-out world multiview set (the factory's multiview stage,
other identities than any training data), an avatar pipeline folder (dit/, vae/, generator/), the
command in a subprocess with a real MLflow sqlite store, and the HTML page opened in headless
Chromium, whose screenshot must show the table-1 layout (its borders and the reference row)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.integration

DOMAINS = ("pixar", "greek_statue")
RUN_SEED = 7  # another seed than the factory's default 0: identities no training run saw


def make_multiview(data: Path, generators: Path, *, domains=DOMAINS, identities: int = 1, expressions: int = 3,
                   cameras: int = 2) -> Path:
    """``<data>/multiview.lance``: dynamic sets of world identities made by the factory's multiview
    stage and committed by its exactly-once sink (no Ray)."""
    from avatar4d.data.schema import dataset_uri
    from factory.chunks import Chunk
    from factory.domains import load_domains
    from factory.generators import ensure_domain_generator
    from factory.sink import LanceCommitter, write_fragments
    from factory.stages import MultiviewConfig, MultiviewStage

    uri = dataset_uri(str(data), "multiview")
    committer = None
    for domain in domains:
        checkpoint = ensure_domain_generator(load_domains().get(domain), generators, "tiny", "world")
        stage = MultiviewStage(domain, checkpoint, MultiviewConfig(expressions=expressions, cameras=cameras,
                                                                   batch_size=expressions * identities))
        chunk = Chunk("multiview", domain, "dynamic", 0, 0, identities, RUN_SEED)
        batch = stage(chunk)
        committer = committer or LanceCommitter(uri, stage.schema)
        committer.commit([chunk.chunk_id], write_fragments(uri, batch, stage.schema))
    return data


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    from tests.unit.pipeline.checkpoints import make_checkpoints

    root = tmp_path_factory.mktemp("eval")
    make_multiview(root / "heldout", root / "generators")
    return {"root": root, "data": root / "heldout", "checkpoints": make_checkpoints(root / "untrained")}


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "avatar4d.cli", *args], capture_output=True, text=True, timeout=600,
                          env=env)


def screenshot(page: Path, out: Path, profile: Path) -> np.ndarray:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "Debian's chromium is needed for the page test"
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                    "--hide-scrollbars", f"--screenshot={out}", "--window-size=1200,900", page.as_uri()],
                   capture_output=True, timeout=180, check=True)
    from PIL import Image

    return np.asarray(Image.open(out).convert("RGB")).astype(int)


def longest_run(mask: np.ndarray) -> int:
    best = run = 0
    for value in mask:
        run = run + 1 if value else 0
        best = max(best, run)
    return best


def test_eval_writes_the_report_logs_it_to_mlflow_and_the_page_shows_the_table(setup, subprocess_env, tmp_path):
    out, db = tmp_path / "report", tmp_path / "mlflow.db"
    result = cli("eval", "--checkpoints", f"untrained={setup['checkpoints']}", "--data", str(setup["data"]),
                 "--out", str(out), "--views", "4", "--tracking-uri", f"sqlite:///{db}", "--experiment", "eval-test",
                 "--no-progress", env=subprocess_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1].startswith(f"report {out / 'report.html'}")
    assert "Traceback" not in result.stderr

    report = json.loads((out / "report.json").read_text())
    summary = report["models"][0]["summary"]
    assert report["models"][0]["name"] == "untrained" and report["meta"]["metrics_preset"] == "tiny"
    assert summary["self"]["cases"] == 2 and summary["self"]["frames"] == 6  # 2 identities × 3 driving views
    assert summary["cross"]["cases"] == 2 and summary["cross"]["frames"] == 8
    for task, metric in (("self", "psnr"), ("self", "lpips"), ("self", "fid"), ("cross", "clip"), ("cross", "fid")):
        assert summary[task][metric] is not None and np.isfinite(summary[task][metric]), (task, metric)
    assert {s["path"] for s in report["samples"]} <= {str(p.relative_to(out)) for p in (out / "samples").iterdir()}

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("eval-test")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.metrics["untrained/self/psnr"] == pytest.approx(summary["self"]["psnr"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert {"report/report.json", "report/report.html", "report/samples"} <= artifacts

    image = screenshot(out / "report.html", tmp_path / "page.png", tmp_path / "chromium-profile")
    border = np.abs(image - 153).max(-1) <= 16  # the table's #999 cell borders
    lines = [y for y in range(image.shape[0]) if longest_run(border[y]) >= 500]
    reference = (np.abs(image - np.array([238, 238, 255])).max(-1) <= 4).sum()  # the reference row's background
    assert len(lines) >= 4, f"table borders found at rows {lines}"
    assert reference > 5_000, "the AvatarArtist reference row is shown"


def test_user_mistakes_are_one_line_errors(setup, tmp_path, capsys):
    from avatar4d.cli import main

    cases = [(["--data", str(tmp_path / "missing"), "--checkpoints", str(setup["checkpoints"])], "not found"),
             (["--data", str(tmp_path), "--checkpoints", str(setup["checkpoints"])], "no videos"),
             (["--data", str(setup["data"]), "--checkpoints", str(tmp_path)], "checkpoint"),
             (["--data", str(setup["data"]), "--checkpoints", str(setup["checkpoints"]), "--preset", "paper",
               "--device", "cpu"], "need local weights")]
    for args, message in cases:
        code = main(["eval", *args, "--out", str(tmp_path / "out"), "--no-mlflow", "--no-progress"])
        err = capsys.readouterr().err
        assert code == 1 and err.startswith("avatar4d: error:") and message in err, (args, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_ray_workers_give_the_same_report_as_one_process(setup):
    """The (model, case) pairs on a local Ray cluster's workers (the factory's scheduler) and in this
    process: the same per-case numbers and the same merged FID."""
    from avatar4d.evaluation.makers import PipelineMaker
    from avatar4d.evaluation.runner import EVAL_PRESETS, load_clips, make_run_cases, run_local
    from factory.evaluate import run_distributed

    config = EVAL_PRESETS.get("tiny").replace(views=3, cross=False, samples_per_task=1)
    cases = make_run_cases(load_clips(setup["data"], config), config)
    named = [("untrained", str(setup["checkpoints"]))]
    (local,) = run_local([PipelineMaker.load(named[0][1], name="untrained")], cases, config)
    (distributed,) = run_distributed("local", named, cases, config, progress=False)
    assert [c.name for c in distributed.cases] == [c.name for c in local.cases]
    for ours, theirs in zip(distributed.cases, local.cases):
        for metric, value in theirs.metrics.items():
            assert ours.metrics[metric] == pytest.approx(value, rel=1e-3, abs=1e-4, nan_ok=True), (ours.name, metric)
    assert distributed.summary["self"]["fid"] == pytest.approx(local.summary["self"]["fid"], rel=1e-3)
    assert distributed.cases[0].sample is not None and distributed.cases[1].sample is None
