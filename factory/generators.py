"""Per-domain generator checkpoints.

A domain's generator is its fine-tuned checkpoint when the catalog names one; otherwise one made
for the run and saved once into the cache folder, of the run's ``kind``:

- ``world`` (the embedded default): the procedural 4D world (:mod:`avatar4d.world`) in the
  domain's look (:func:`~avatar4d.world.style_for_domain`), analytic heads with ground truth;
- ``gan``: a randomly initialised Next3D generator seeded by the domain name.

Stages load every kind through :func:`avatar4d.generators.load_generator_checkpoint`. Made
checkpoints depend only on the domain name, kind and preset: the same name gives bit-identical
weights (and the same ``weights_sha256``) on every machine with the same torch version.

The cache (and a catalog's checkpoint) may be on object storage (``s3://…``, the factory's default
when ``--out`` is a bucket): a worker uses its node's local copy (under
:func:`avatar4d.storage.local_copy_path`), downloads the stored checkpoint when there is one, else makes
it locally and uploads it, ``checkpoint.json`` last (readers wait for it, so they never take half
a checkpoint; two nodes making the same domain upload identical bytes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import threading
import uuid
from pathlib import Path

import torch

from avatar4d import storage
from avatar4d.checkpoint.io import CheckpointError, CheckpointInfo, read_checkpoint_info
from avatar4d.errors import UserError
from avatar4d.generators import GENERATOR_KINDS, generator_kind
from avatar4d.geometry.camera import PoseSampler, PoseSamplerConfig
from avatar4d.models.next3d import GENERATOR_PRESETS, Next3DGenerator
from avatar4d.models.next3d.checkpoint import save_generator
from avatar4d.world import WORLD_PRESETS, ProceduralWorldGenerator, save_world, style_for_domain
from factory.domains import DomainSpec
from factory.stages.common import fixed_threads

logger = logging.getLogger(__name__)

RANDOM_INIT_ORIGIN = "random-init"
CHECKPOINT_MARKER = "checkpoint.json"  # written last: a checkpoint folder is complete when it exists
W_AVG_SAMPLES = 1024


class GeneratorCheckpointError(UserError):
    """A domain's generator checkpoint is missing or does not fit."""


_INIT_LOCK = threading.Lock()


def seed_from_name(name: str) -> int:
    """63-bit seed of a domain's random initialisation (BLAKE2b of the name)."""
    digest = hashlib.blake2b(name.encode(), digest_size=8, person=b"avatar4d-domain").digest()
    return int.from_bytes(digest, "little") >> 1


@torch.no_grad()
def _estimate_w_avg(generator: Next3DGenerator, seed: int, samples: int = W_AVG_SAMPLES) -> None:
    """Set the mapping's ``w_avg`` (truncation centre) to the mean w over seeded z and FFHQ-like
    cameras, as training's moving average would; a freshly initialised GAN has ``w_avg = 0``."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(samples, generator.config.backbone.z_dim, generator=gen)
    camera = PoseSampler(PoseSamplerConfig(distribution="gaussian")).sample(samples, gen).camera
    # one thread and a float64 mean: the result must not depend on the machine's load or core count
    with fixed_threads("cpu", 1):
        ws = generator.mapping(z, camera)  # [N, num_ws, w_dim]
        generator.backbone.mapping.w_avg.copy_(ws[:, 0].double().mean(dim=0).float())


def build_random_generator(name: str, preset: str = "tiny") -> Next3DGenerator:
    """The randomly initialised generator of domain ``name`` (CPU; global RNG state untouched)."""
    seed = seed_from_name(name)
    # torch's global RNG seeds the initialisation: threads building generators at the same time
    # would interleave their draws, so construction is serialised
    with _INIT_LOCK, torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = Next3DGenerator(GENERATOR_PRESETS.get(preset))
    _estimate_w_avg(generator, seed)
    return generator.eval()


def _check_existing(path: Path, domain: DomainSpec, preset: str, kind: str | None) -> CheckpointInfo:
    """``kind`` None accepts any generator kind (a catalog's own checkpoint)."""
    try:
        info = read_checkpoint_info(path)
        found_kind = generator_kind(info)
    except CheckpointError as exc:
        raise GeneratorCheckpointError(f"domain {domain.name}: {exc}") from None
    made_with = info.metadata.get("preset")
    if kind is not None and (found_kind != kind or made_with != preset):
        raise GeneratorCheckpointError(f"domain {domain.name}: {path} holds a {made_with!r} {found_kind} generator, "
                                       f"this run wants a {preset!r} {kind}; use another cache folder")
    return info


def build_world_generator(name: str, preset: str = "tiny") -> ProceduralWorldGenerator:
    """The procedural world of domain ``name`` in its look (deterministic; no randomness at all)."""
    return ProceduralWorldGenerator(WORLD_PRESETS.get(preset, style=style_for_domain(name))).eval()


def ensure_domain_generator(domain: DomainSpec, cache_dir: str | Path, preset: str = "tiny",
                            kind: str = "gan") -> Path:
    """The local checkpoint folder of ``domain``'s generator; ``cache_dir`` (or the domain's
    checkpoint) may be an object-store URI (see the module docstring), else see
    :func:`ensure_local_generator`."""
    if domain.generator_checkpoint and storage.is_remote(domain.generator_checkpoint):
        local = _local_copy(storage.check_uri(domain.generator_checkpoint, f"domain {domain.name}: checkpoint"))
        return ensure_local_generator(dataclasses.replace(domain, generator_checkpoint=str(local)), local, preset,
                                      kind)
    if domain.generator_checkpoint or not storage.is_remote(cache_dir):
        return ensure_local_generator(domain, Path(cache_dir), preset, kind)
    remote = storage.join(storage.check_uri(cache_dir, "generator cache"), domain.name)
    if storage.exists(storage.join(remote, CHECKPOINT_MARKER)):
        local = _local_copy(remote)
        _check_existing(local, domain, preset, kind)
        return local
    local = ensure_local_generator(domain, storage.local_copy_path(remote).parent, preset, kind)
    storage.upload_dir(local, remote, last=CHECKPOINT_MARKER)
    logger.info("uploaded the %s %s generator of domain %s to %s", preset, kind, domain.name, remote)
    return local


def _local_copy(uri: str) -> Path:
    try:
        return storage.local_copy(uri, marker=CHECKPOINT_MARKER)
    except FileNotFoundError:
        raise GeneratorCheckpointError(f"generator checkpoint not found: {uri} (no {CHECKPOINT_MARKER})") from None


def ensure_local_generator(domain: DomainSpec, cache_dir: Path, preset: str = "tiny", kind: str = "gan") -> Path:
    """The checkpoint folder of ``domain``'s generator, creating the run's one if needed.

    ``domain.generator_checkpoint`` must exist when set (any kind). Otherwise ``cache_dir/<name>``
    is created once with a ``kind`` generator (``world`` or a random ``gan``) of ``preset``: written
    to a private staging folder and renamed into place, so concurrent callers (several actors of
    one domain) never see half a checkpoint and the first rename wins.
    """
    if domain.generator_checkpoint:
        path = Path(domain.generator_checkpoint).expanduser()
        if not path.is_dir():
            raise GeneratorCheckpointError(f"domain {domain.name}: generator checkpoint not found: {path}")
        _check_existing(path, domain, preset, None)
        return path
    if kind not in GENERATOR_KINDS:
        raise GeneratorCheckpointError(f"unknown generator kind {kind!r}; choose from {list(GENERATOR_KINDS)}")
    (WORLD_PRESETS if kind == "world" else GENERATOR_PRESETS).get(preset)  # unknown preset → ConfigError first
    cache_dir = Path(cache_dir).expanduser()
    target = cache_dir / domain.name
    if target.is_dir():
        _check_existing(target, domain, preset, kind)
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = cache_dir / f".{domain.name}.{uuid.uuid4().hex}.staging"
    if kind == "world":
        save_world(staging, build_world_generator(domain.name, preset),
                   metadata={"domain": domain.name, "origin": "procedural", "preset": preset})
    else:
        generator = build_random_generator(domain.name, preset)
        save_generator(staging, generator, metadata={"domain": domain.name, "origin": RANDOM_INIT_ORIGIN,
                                                     "preset": preset, "seed": seed_from_name(domain.name)})
    try:
        os.rename(staging, target)
        logger.info("created the %s %s generator of domain %s in %s", preset, kind, domain.name, target)
    except OSError:
        if not target.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
            raise
        shutil.rmtree(staging, ignore_errors=True)  # another process won the race; its weights are identical
    _check_existing(target, domain, preset, kind)
    return target
