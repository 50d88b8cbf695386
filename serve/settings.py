"""Settings of the Serve application (one typed config; the Serve config YAML passes it as ``args``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from avatar4d.config import Config, ConfigError

DEFAULT_PORT = 8000


@dataclasses.dataclass
class BatchSettings(Config):
    """``@serve.batch`` settings of one deployment (changeable live through its ``user_config``)."""

    max_batch_size: int = 8
    batch_wait_timeout_s: float = 0.05

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.batch_wait_timeout_s < 0:
            raise ConfigError("max_batch_size must be >= 1 and batch_wait_timeout_s >= 0")


@dataclasses.dataclass
class ServeSettings(Config):
    """What the application loads and the limits it enforces.

    ``checkpoints``: as ``avatar4d create --checkpoints``. ``store_dir``: where avatars persist (a
    restarted store replica reads them back); ``store_capacity``: avatars kept in memory (LRU).
    Limits answer with 413/422 before any model runs. ``max_replicas``: autoscaling upper bound of
    the generator and renderer (1 = a fixed single replica). ``num_threads``: torch threads per replica.
    """

    checkpoints: str = ""
    store_dir: str = "outputs/avatars"
    store_capacity: int = 256
    pipeline_preset: str = "tiny"
    device: str | None = None
    max_body_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 4096 * 4096
    max_frames: int = 96
    default_frames: int = 24
    generator_batch: BatchSettings = dataclasses.field(default_factory=BatchSettings)
    renderer_batch: BatchSettings = dataclasses.field(default_factory=lambda: BatchSettings(max_batch_size=8,
                                                                                            batch_wait_timeout_s=0.02))
    max_replicas: int = 1
    num_threads: int = 1

    def __post_init__(self) -> None:
        for name in ("store_capacity", "max_body_bytes", "max_pixels", "max_frames", "max_replicas", "num_threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 1 <= self.default_frames <= self.max_frames:
            raise ConfigError(f"default_frames must be in [1, max_frames={self.max_frames}]")

    def resolved(self) -> ServeSettings:
        """Absolute paths (replicas run in Ray's session folders)."""
        return self.replace(checkpoints=str(Path(self.checkpoints).expanduser().resolve()) if self.checkpoints else "",
                            store_dir=str(Path(self.store_dir).expanduser().resolve()))

    @classmethod
    def from_args(cls, args: dict[str, Any]) -> ServeSettings:
        return cls.from_dict(dict(args))
