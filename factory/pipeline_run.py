"""``avatar4d pipeline run``: source portraits → stylize (every domain) → per-domain GAN fine-tunes →
synthesize + multiview with the fine-tuned GANs, every step resumable.

Folders under ``out``:

- ``sources/pairs.lance``: the source portraits (the procedural world's ``realistic`` domain by
  default: portraits with known meshes and cameras, the role of FFHQ + 3DMM fitting in the paper),
  or ``--source``, a dataset of your own portraits (columns in :mod:`avatar4d.data.stylized_schema`);
- ``base-gan/``: the generator every domain starts from (``--base-checkpoint``, e.g. the converted
  FFHQ Next3D GAN; the tiny recipe makes a random tiny one once);
- ``stylized/stylized.lance``: every portrait in every domain (:mod:`factory.stylize_run`);
- ``runs/gan-<domain>/final``: each domain's fine-tuned GAN (``avatar4d train gan``; runs tracked in
  ``runs/mlflow.db`` unless ``MLFLOW_TRACKING_URI`` says otherwise);
- ``domains.yaml``: the catalog entries pointing each domain at its fine-tuned GAN;
- ``data/pairs.lance``, ``data/multiview.lance``: the factory's output made by those GANs (each row's
  ``generator_sha256`` is its domain checkpoint's weights hash; ``pipeline.json`` maps domains to
  checkpoint folders and hashes).

Resumable: the factory and stylize steps skip committed chunks (their datasets' ledgers); a domain
whose run has a ``final`` model is skipped, one with a checkpoint is resumed. The fine-tunes are
``avatar4d train gan`` runs (:func:`train.runner.run_training`) in one Ray session, as many at once
as the CPUs (or GPUs) hold their workers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from avatar4d.config import Config, ConfigError
from avatar4d.errors import UserError
from factory.recipes import FactoryConfig
from factory.stages import MultiviewConfig, SynthesizeConfig
from factory.stages.stylize import StylizeConfig

logger = logging.getLogger(__name__)

BASE_GAN_DOMAIN = "ffhq_base"  # the seed name of the tiny recipe's random base generator


@dataclasses.dataclass
class PipelineConfig(Config):
    """One pipeline run; ``tiny`` / ``paper`` recipes below.

    ``portraits``: source portraits made from the world's realistic domain (ignored with ``source``).
    ``gan_recipe`` / ``gan_images`` / ``gan_workers``: the fine-tune recipe, its image budget (0: the
    recipe's) and Ray Train workers per run; ``parallel_runs`` None: as many as resources allow.
    """

    out: str = "pipeline"
    domains: list[str] = dataclasses.field(default_factory=lambda: ["pixar", "greek_statue"])
    domains_file: str | None = None
    source: str | None = None
    portraits: int = 32
    portrait_kind: str = "world"
    base_checkpoint: str | None = None
    base_preset: str = "tiny"
    stylize: StylizeConfig = dataclasses.field(default_factory=lambda: StylizeConfig(steps=4))
    stylize_chunk_size: int = 8
    gan_recipe: str = "tiny"
    gan_images: int = 0
    gan_workers: int = 2
    parallel_runs: int | None = None
    samples_per_domain: int = 16
    multiview_identities: int = 1
    run_seed: int = 0

    def __post_init__(self) -> None:
        if not self.domains or len(set(self.domains)) != len(self.domains):
            raise ConfigError("the pipeline needs at least one domain, each named once")
        if self.portraits < 1 or self.gan_workers < 1 or self.gan_images < 0 or self.stylize_chunk_size < 1:
            raise ConfigError("portraits, gan_workers and stylize_chunk_size must be >= 1, gan_images >= 0")
        if self.parallel_runs is not None and self.parallel_runs < 1:
            raise ConfigError(f"parallel_runs must be >= 1, got {self.parallel_runs}")


def tiny() -> PipelineConfig:
    """CPU size: 32 world portraits, two domains stylized by the tiny random Stable Diffusion (4 steps),
    tiny GANs fine-tuned for 64 images each, 16 pairs + 1 multiview identity per domain."""
    return PipelineConfig(gan_images=64)


def paper() -> PipelineConfig:
    """The paper's data: every catalog domain but realistic stylized from 6,000 portraits (pretrained
    Stable Diffusion + face ControlNet: give --sd-path/--controlnet-path, and --base-checkpoint), 200k-image
    fine-tunes, then the factory's paper scale (20,000 pairs per domain, 2,000 multiview identities)."""
    from factory.domains import builtin_domains

    return PipelineConfig(domains=[d.name for d in builtin_domains() if d.kind != "realistic"], portraits=6_000,
                          portrait_kind="gan", base_preset="paper", stylize=StylizeConfig(models="pretrained"),
                          stylize_chunk_size=32, gan_recipe="paper", gan_workers=8, samples_per_domain=20_000,
                          multiview_identities=2_000)


RECIPES = {"tiny": tiny, "paper": paper}


def get_recipe(name: str) -> PipelineConfig:
    if name not in RECIPES:
        raise ConfigError(f"unknown pipeline recipe {name!r}; choose from {', '.join(RECIPES)}")
    return RECIPES[name]()


@dataclasses.dataclass
class PipelineSummary:
    """What a run did (also ``<out>/pipeline.json``)."""

    out: str
    source: str = ""
    stylized_rows: int = 0
    checkpoints: dict[str, str] = dataclasses.field(default_factory=dict)
    checkpoint_sha256: dict[str, str] = dataclasses.field(default_factory=dict)
    trained: list[str] = dataclasses.field(default_factory=list)
    skipped_runs: list[str] = dataclasses.field(default_factory=list)
    pairs: int = 0
    multiview: int = 0
    seconds: dict[str, float] = dataclasses.field(default_factory=dict)


def run_pipeline(config: PipelineConfig, *, address: str | None = None, progress: bool = True) -> PipelineSummary:
    """Run (or resume) every step; see the module docstring."""
    from factory.domains import load_domains

    out = Path(config.out).expanduser().absolute()
    catalog = load_domains(config.domains_file)
    for name in config.domains:
        catalog.get(name)
    out.mkdir(parents=True, exist_ok=True)
    summary = PipelineSummary(out=str(out))
    clock = time.perf_counter()

    def lap(step: str) -> None:
        nonlocal clock
        summary.seconds[step] = round(time.perf_counter() - clock, 1)
        clock = time.perf_counter()
        logger.info("pipeline: %s done in %.1fs", step, summary.seconds[step])

    if not config.source and config.portrait_kind != "world":
        raise UserError("give --source: a Lance dataset of your tracked portraits (README \"Stylize\")")
    summary.source = config.source or _make_sources(config, out, address, progress)
    lap("sources")
    base = _base_checkpoint(config, out)
    summary.stylized_rows = _stylize(config, out, summary.source, address, progress)
    lap("stylize")
    _fine_tune(config, out, base, address, summary)
    lap("fine-tune")
    _synthesize(config, out, summary, address, progress)
    lap("synthesize")
    (out / "pipeline.json").write_text(json.dumps(dataclasses.asdict(summary), indent=2, sort_keys=True))
    return summary


def _make_sources(config: PipelineConfig, out: Path, address: str | None, progress: bool) -> str:
    """``<out>/sources/pairs.lance``: ``portraits`` realistic-domain portraits (pairs only)."""
    from factory.pipeline import run_factory

    factory = FactoryConfig(out=str(out / "sources"), domains=["realistic"], samples_per_domain=config.portraits,
                            multiview_identities=0, chunk_size=8, generator_kind=config.portrait_kind,
                            generator_preset=config.base_preset, run_seed=config.run_seed + 1,
                            synthesize=SynthesizeConfig(batch_size=8))
    run_factory(factory, address=address, progress=progress)
    return str(out / "sources" / "pairs.lance")


def _base_checkpoint(config: PipelineConfig, out: Path) -> str:
    """The generator every domain fine-tunes from (made once for the tiny recipe)."""
    if config.base_checkpoint:
        if not Path(config.base_checkpoint).expanduser().is_dir():
            raise UserError(f"--base-checkpoint {config.base_checkpoint}: no such folder")
        return str(Path(config.base_checkpoint).expanduser().absolute())
    if config.base_preset != "tiny":
        raise UserError("give --base-checkpoint (the FFHQ Next3D GAN, e.g. from `avatar4d convert next3d-pkl`)")
    target = out / "base-gan"
    for staging in out.glob(".base-gan.*"):  # left by a killed run
        shutil.rmtree(staging, ignore_errors=True)
    if not target.is_dir():
        from avatar4d.models.next3d.checkpoint import save_generator
        from factory.generators import build_random_generator

        staging = out / f".base-gan.{uuid.uuid4().hex}"
        save_generator(staging, build_random_generator(BASE_GAN_DOMAIN, "tiny"),
                       metadata={"origin": "random-init", "preset": "tiny", "role": "pipeline base"})
        os.rename(staging, target)
    return str(target)


def _stylize(config: PipelineConfig, out: Path, source: str, address: str | None, progress: bool) -> int:
    from factory.stylize_run import StylizeRunConfig, run_stylize

    run = StylizeRunConfig(source=source, out=str(out / "stylized"), domains=list(config.domains),
                           domains_file=config.domains_file, stylize=config.stylize,
                           chunk_size=config.stylize_chunk_size, run_seed=config.run_seed)
    return run_stylize(run, address=address, progress=progress).rows_total


def parallel_runs(config: PipelineConfig, address: str | None) -> int:
    """How many fine-tunes fit at once: GPUs (a cluster's, or this machine's) or CPUs / workers per run."""
    if config.parallel_runs is not None:
        return config.parallel_runs
    gpus = 0
    try:
        import torch

        gpus = torch.cuda.device_count() if address is None else 0
    except Exception:  # noqa: BLE001 - no CUDA: CPUs decide
        gpus = 0
    cpus = os.cpu_count() or 1
    capacity = gpus // config.gan_workers if gpus else cpus // config.gan_workers
    return max(1, min(len(config.domains), capacity))


def _fine_tune(config: PipelineConfig, out: Path, base: str, address: str | None, summary: PipelineSummary) -> None:
    """One ``train gan`` run per domain not finished yet (resumed when it has a checkpoint), all in one
    Ray session; ``parallel_runs`` of them at once (threads: each run's trainer waits on its workers)."""
    from avatar4d.checkpoint.io import read_checkpoint_info
    from train.cluster import ray_session

    runs = out / "runs"
    pending = []
    for domain in config.domains:
        if (runs / f"gan-{domain}" / "final" / "checkpoint.json").is_file():
            summary.skipped_runs.append(domain)
        else:
            pending.append(domain)
    width = parallel_runs(config, address)
    logger.info("fine-tuning %d domains, %d at a time", len(pending), width)
    if pending:
        with ray_session(address, max(2, width * config.gan_workers)):
            with ThreadPoolExecutor(max_workers=width) as pool:
                list(pool.map(lambda domain: _train_domain(config, out, base, domain), pending))
    summary.trained = pending
    for domain in config.domains:
        final = runs / f"gan-{domain}" / "final"
        summary.checkpoints[domain] = str(final)
        summary.checkpoint_sha256[domain] = read_checkpoint_info(final).weights_sha256


def gan_config(config: PipelineConfig, out: Path, base: str, domain: str) -> Any:
    """The fine-tune of one domain: the recipe with the pipeline's data, base, budget and run name."""
    from train.config import apply_overrides
    from train.gan.recipes import get_recipe as gan_recipe

    overrides: dict[str, Any] = {"data": str(out / "stylized"), "domain": domain, "base_checkpoint": base,
                                 "train.storage_path": str(out / "runs"), "train.run_name": f"gan-{domain}",
                                 "train.num_workers": config.gan_workers, "train.seed": config.run_seed}
    if config.gan_images:
        overrides["images"] = config.gan_images
    return apply_overrides(gan_recipe(config.gan_recipe), overrides).with_defaults(config.gan_recipe)


def _train_domain(config: PipelineConfig, out: Path, base: str, domain: str) -> None:
    from train.runner import TrainingError, run_training

    run_dir = out / "runs" / f"gan-{domain}"
    resume = any((checkpoint / "trainer_state.json").is_file() for checkpoint in run_dir.glob("checkpoint_*"))
    try:
        result = run_training(gan_config(config, out, base, domain), resume=resume, progress=False)
    except TrainingError as error:
        raise UserError(f"fine-tuning {domain} failed: {error}") from None
    logger.info("fine-tuned %s: step %d in %.0fs", domain, result.final_step, result.seconds)


def _domains_file(config: PipelineConfig, out: Path, summary: PipelineSummary) -> Path:
    """``<out>/domains.yaml``: the user's entries (if any) with each domain's fine-tuned GAN."""
    import yaml

    entries: dict[str, dict[str, Any]] = {}
    if config.domains_file:
        for entry in (yaml.safe_load(Path(config.domains_file).read_text()) or {}).get("domains", []):
            entries[entry["name"]] = dict(entry)
    for domain, checkpoint in summary.checkpoints.items():
        entries.setdefault(domain, {"name": domain})["generator_checkpoint"] = checkpoint
    path = out / "domains.yaml"
    path.write_text(yaml.safe_dump({"domains": list(entries.values())}, sort_keys=False))
    return path


def _synthesize(config: PipelineConfig, out: Path, summary: PipelineSummary, address: str | None,
                progress: bool) -> None:
    import lance

    from factory.pipeline import run_factory

    factory = FactoryConfig(out=str(out / "data"), domains=list(config.domains),
                            samples_per_domain=config.samples_per_domain,
                            multiview_identities=config.multiview_identities, chunk_size=8,
                            generator_preset=config.base_preset, generator_kind="gan",
                            domains_file=str(_domains_file(config, out, summary)), run_seed=config.run_seed,
                            synthesize=SynthesizeConfig(batch_size=8),
                            multiview=MultiviewConfig(expressions=2, cameras=2, batch_size=2))
    run_factory(factory, address=address, progress=progress)
    summary.pairs = lance.dataset(str(out / "data" / "pairs.lance")).count_rows()
    if config.multiview_identities:
        summary.multiview = lance.dataset(str(out / "data" / "multiview.lance")).count_rows()
