"""The Serve deployments: thin adapters around the core pipeline's stages (:mod:`avatar4d.pipeline`).

    Preprocess ──▶ Encoders ──▶ AvatarGenerator (@serve.batch) ──▶ AvatarStore (memory LRU + folder)
                                          FrameRenderer (@serve.batch) ◀── AvatarStore

Every replica builds only its stage from the same resolved checkpoints, runs torch on
``num_threads`` threads, and runs its model work in a worker thread so the event loop keeps
accepting requests (which is what lets ``@serve.batch`` gather a batch while one is computing).
Batch sizes are counted (``stats()``) so batching is observable under load.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from pathlib import Path
from typing import Any

import numpy as np
from ray import serve

from avatar4d.errors import UserError
from avatar4d.pipeline import PIPELINE_PRESETS, PipelineCheckpoints, PipelineConfig
from serve.settings import BatchSettings, ServeSettings

logger = logging.getLogger(__name__)


def pipeline_config(settings: ServeSettings) -> PipelineConfig:
    config = PIPELINE_PRESETS.get(settings.pipeline_preset)
    overrides: dict[str, Any] = {"max_pixels": settings.max_pixels, "max_frames": settings.max_frames}
    if settings.device:
        overrides["device"] = settings.device
    return config.replace(**overrides)


def _threads(settings: ServeSettings) -> None:
    import torch

    torch.set_num_threads(settings.num_threads)


def configure_batching(method: Any, user_config: dict[str, Any]) -> None:
    """Apply a deployment's ``user_config`` (:class:`BatchSettings`) to its ``@serve.batch`` method."""
    batch = BatchSettings.from_dict(user_config)
    method.set_max_batch_size(batch.max_batch_size)
    method.set_batch_wait_timeout_s(batch.batch_wait_timeout_s)


class BatchStats:
    """Histogram of the batch sizes a ``@serve.batch`` method received."""

    def __init__(self) -> None:
        self.sizes: collections.Counter[int] = collections.Counter()

    def add(self, size: int) -> None:
        self.sizes[size] += 1

    def summary(self) -> dict[str, Any]:
        batches = sum(self.sizes.values())
        return {"batches": batches, "requests": sum(k * v for k, v in self.sizes.items()),
                "max_batch_size": max(self.sizes, default=0), "histogram": {str(k): v for k, v in
                                                                            sorted(self.sizes.items())}}


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Preprocess:
    """Portrait bytes → decoded, checked, cropped portrait + tracked camera and coefficients."""

    def __init__(self, checkpoints: PipelineCheckpoints, settings: ServeSettings) -> None:
        from avatar4d.pipeline import PortraitStage

        _threads(settings)
        self.settings = settings
        self.stage = PortraitStage(checkpoints, pipeline_config(settings))
        self.stage.tracker  # noqa: B018 - load the landmark model now, not on the first request

    def _run(self, data: bytes) -> tuple[Any, Any, Any]:
        from avatar4d.pipeline import decode_image

        image = decode_image(data, max_pixels=self.settings.max_pixels, what="the portrait")
        portrait = self.stage.portraits([image])  # [1, 3, P, P]
        label, coefficients = self.stage.track(portrait)
        return portrait[0], label[0], coefficients[0]

    async def __call__(self, data: bytes) -> tuple[Any, Any, Any]:
        return await asyncio.to_thread(self._run, data)

    def ready(self) -> bool:
        return True


@serve.deployment(ray_actor_options={"num_cpus": 0})
class Encoders:
    """Portrait uint8 [3, P, P] → (CLIP tokens [Tc, Dc], DINO tokens [Td, Dd])."""

    def __init__(self, checkpoints: PipelineCheckpoints, settings: ServeSettings) -> None:
        import torch

        from avatar4d.encoders import ImageEncoders

        _threads(settings)
        self.device = torch.device(pipeline_config(settings).device)
        self.encoders = ImageEncoders(checkpoints.encoders).to(self.device)
        self.sha256 = self.encoders.weights_sha256

    def _run(self, portrait: Any) -> tuple[Any, Any]:
        import torch

        with torch.no_grad():
            clip, dino = self.encoders(portrait[None].to(self.device))
        return clip[0].cpu(), dino[0].cpu()

    async def __call__(self, portrait: Any) -> tuple[Any, Any]:
        return await asyncio.to_thread(self._run, portrait)

    def info(self) -> dict[str, Any]:
        return {"encoders": self.sha256}

    def ready(self) -> bool:
        return True


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=32)
class AvatarGenerator:
    """Batched DiT sampling + VAE decode: (clip, dino, seed) requests → triplanes [4, C, R, R]."""

    def __init__(self, checkpoints: PipelineCheckpoints, settings: ServeSettings) -> None:
        from avatar4d.pipeline import TriplaneSampler

        _threads(settings)
        self.sampler = TriplaneSampler(checkpoints, pipeline_config(settings))
        self.stats = BatchStats()
        self.reconfigure(settings.generator_batch.to_dict())

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        configure_batching(self.generate, user_config)

    def _run(self, requests: list[tuple[Any, Any, int]]) -> list[Any]:
        import torch

        clip = torch.stack([r[0] for r in requests])
        dino = torch.stack([r[1] for r in requests])
        triplanes = self.sampler.sample(clip, dino, [r[2] for r in requests])
        return list(triplanes)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def generate(self, requests: list[tuple[Any, Any, int]]) -> list[Any]:
        self.stats.add(len(requests))
        return await asyncio.to_thread(self._run, requests)

    async def __call__(self, clip: Any, dino: Any, seed: int) -> Any:
        return await self.generate((clip, dino, seed))

    def info(self) -> dict[str, Any]:
        return {"hashes": self.sampler.hashes, "sampling": self.sampler.sampling.to_dict()}

    def batch_stats(self) -> dict[str, Any]:
        return self.stats.summary()

    def ready(self) -> bool:
        return True


@serve.deployment(ray_actor_options={"num_cpus": 0})
class AvatarStore:
    """Avatars by id: the last ``store_capacity`` in memory, every one persisted to ``store_dir``
    (``<id>/avatar.safetensors`` + ``avatar.json``), so a restarted replica reads them back."""

    def __init__(self, settings: ServeSettings) -> None:
        self.root = Path(settings.store_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self.capacity = settings.store_capacity
        self.cache: collections.OrderedDict[str, Any] = collections.OrderedDict()
        self.lock = threading.Lock()

    def _remember(self, avatar: Any) -> None:
        with self.lock:
            self.cache[avatar.avatar_id] = avatar
            self.cache.move_to_end(avatar.avatar_id)
            while len(self.cache) > self.capacity:
                self.cache.popitem(last=False)

    async def put(self, avatar: Any) -> str:
        await asyncio.to_thread(avatar.save, self.root / avatar.avatar_id)
        self._remember(avatar)
        return avatar.avatar_id

    async def get(self, avatar_id: str) -> Any | None:
        from avatar4d.pipeline.avatar import ID_PATTERN, Avatar

        if not ID_PATTERN.match(avatar_id):  # ids are uuid4 hex: nothing else may name a path
            return None
        with self.lock:
            if avatar_id in self.cache:
                self.cache.move_to_end(avatar_id)
                return self.cache[avatar_id]
        folder = self.root / avatar_id
        if not folder.is_dir():
            return None
        try:
            avatar = await asyncio.to_thread(Avatar.load, folder)
        except UserError:
            logger.warning("avatar %s in %s is damaged", avatar_id, self.root)
            return None
        self._remember(avatar)
        return avatar

    def stats(self) -> dict[str, Any]:
        stored = sum(1 for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        return {"in_memory": len(self.cache), "stored": stored, "capacity": self.capacity}

    def ready(self) -> bool:
        return True


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=32)
class FrameRenderer:
    """Batched rendering: render jobs of any avatars → frames uint8 [N, S, S, 3] each."""

    def __init__(self, checkpoints: PipelineCheckpoints, settings: ServeSettings) -> None:
        from avatar4d.pipeline import FrameStage

        _threads(settings)
        self.stage = FrameStage(checkpoints, pipeline_config(settings))
        self.stats = BatchStats()
        self.reconfigure(settings.renderer_batch.to_dict())

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        configure_batching(self.render, user_config)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.02)
    async def render(self, jobs: list[Any]) -> list[np.ndarray]:
        self.stats.add(len(jobs))
        return await asyncio.to_thread(self.stage.render, jobs)

    async def __call__(self, job: Any) -> np.ndarray:
        self.stage.check_avatar(job.avatar)
        return await self.render(job)

    def info(self) -> dict[str, Any]:
        return {"renderer": self.stage.renderer.name, "generator": self.stage.parametric.sha256,
                "output_resolution": self.stage.renderer.output_resolution,
                "portrait_resolution": self.stage.parametric.portrait_resolution}

    def batch_stats(self) -> dict[str, Any]:
        return self.stats.summary()

    def ready(self) -> bool:
        return True
