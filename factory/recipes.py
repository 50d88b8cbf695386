"""Factory runs as recipes: functions returning a complete :class:`FactoryConfig`.

``tiny`` is the embedded default of ``avatar4d factory run``: three domains × 32 pairs plus two
identities per multiview set, the procedural 4D world in each domain's look (``generator_kind``
"world"; "gan" hosts tiny randomly initialised per-domain GANs instead), CPU actors. It finishes
in well under 3 minutes on a 2-core CPU, Ray start-up included. ``paper`` is the paper's scale:
the 28 domains × 20,000 image–parametric-triplane pairs (560k, AvatarArtist §3.1) with the
``paper`` generator preset, plus multiview sets (the paper gives no identity count for them; 2,000
identities per set and domain is our choice: 28 × 2 × 2,000 × 12 + 28 × 2,000 × 4 views ≈ 1.57M
rendered views, each identity row holding its views).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from avatar4d.config import Config, ConfigError
from factory.stages import MultiviewConfig, SynthesizeConfig

TINY_DOMAINS = ["pixar", "greek_statue", "realistic"]


@dataclasses.dataclass
class FactoryConfig(Config):
    """Everything one factory run needs; the defaults are the ``tiny`` recipe (the embedded default).

    Work: ``samples_per_domain`` pairs and ``multiview_identities`` identities in each multiview
    set (dynamic, static) for every domain, cut into chunks of ``chunk_size`` pairs /
    ``multiview_chunk_size`` identities; every item's seed comes from ``run_seed``.
    Actors: ``actors_per_domain`` per domain, each keeping at most ``max_in_flight_per_actor``
    chunks queued (backpressure). An actor asks for ``num_gpus_per_actor`` GPUs (fractional: 0.25
    packs four actors on a GPU) when the cluster has GPUs, else ``num_cpus_per_actor`` CPUs only;
    ``num_cpus_per_actor`` is also its torch thread count (rounded, at least 1).
    ``generator_kind``: what hosts a domain without its own checkpoint: ``world`` (the procedural
    4D world, :mod:`avatar4d.world`) or ``gan`` (a random Next3D GAN of ``generator_preset``).
    ``generator_cache``: folder of those per-domain generators (default
    ``<out>/generators/<preset>`` for GANs, ``<out>/generators/world-<preset>`` for the world);
    ``domains_file``: a YAML adding or overriding domains.
    """

    out: str = "data"
    domains: list[str] = dataclasses.field(default_factory=lambda: list(TINY_DOMAINS))
    samples_per_domain: int = 32
    multiview_identities: int = 2
    chunk_size: int = 8
    multiview_chunk_size: int = 1
    actors_per_domain: int = 1
    max_in_flight_per_actor: int = 2
    run_seed: int = 0
    generator_preset: str = "tiny"
    generator_kind: str = "world"
    generator_cache: str | None = None
    domains_file: str | None = None
    num_cpus_per_actor: float = 1.0
    num_gpus_per_actor: float = 0.0
    max_chunk_attempts: int = 5
    synthesize: SynthesizeConfig = dataclasses.field(default_factory=lambda: SynthesizeConfig(batch_size=8))
    multiview: MultiviewConfig = dataclasses.field(
        default_factory=lambda: MultiviewConfig(expressions=3, cameras=3, batch_size=3))

    def __post_init__(self) -> None:
        if not self.domains:
            raise ConfigError("a factory run needs at least one domain")
        duplicates = sorted({d for d in self.domains if self.domains.count(d) > 1})
        if duplicates:
            raise ConfigError(f"domains listed twice: {', '.join(duplicates)}")
        for name in ("samples_per_domain", "multiview_identities"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("chunk_size", "multiview_chunk_size", "actors_per_domain", "max_in_flight_per_actor",
                     "max_chunk_attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_cpus_per_actor <= 0 or self.num_gpus_per_actor < 0:
            raise ConfigError("num_cpus_per_actor must be > 0 and num_gpus_per_actor >= 0")
        if self.generator_kind not in ("world", "gan"):
            raise ConfigError(f"generator_kind must be 'world' or 'gan', got {self.generator_kind!r}")
        if self.samples_per_domain == 0 and self.multiview_identities == 0:
            raise ConfigError("nothing to do: samples_per_domain and multiview_identities are both 0")

    @property
    def default_generator_cache(self) -> str:
        """Where made per-domain generators go when ``generator_cache`` is unset."""
        folder = self.generator_preset if self.generator_kind == "gan" else f"world-{self.generator_preset}"
        from avatar4d.storage import join  # a folder or an object-store URI alike

        return join(self.out, "generators", folder)

    @property
    def actor_threads(self) -> int:
        """torch intra-op threads of one CPU actor."""
        return max(1, round(self.num_cpus_per_actor))


def tiny() -> FactoryConfig:
    """The embedded default: 3 domains × 32 pairs (chunks of 8) + 2 identities per multiview set
    (dynamic: 3 expressions × 3 cameras, static: 3 cameras), the tiny procedural world in each
    domain's look, one CPU actor per domain."""
    return FactoryConfig()


def paper() -> FactoryConfig:
    """The paper's scale: 28 domains × 20,000 pairs (560k) + 2,000 identities per multiview set and
    domain (dynamic: 12 expressions × 4 cameras; static: 1 × 4), ``paper`` GANs, bf16, a quarter GPU
    per actor (four actors share a GPU; on a CPU-only cluster each actor takes one CPU)."""
    from factory.domains import builtin_domains

    return FactoryConfig(
        domains=[d.name for d in builtin_domains()], samples_per_domain=20_000, multiview_identities=2_000,
        chunk_size=64, multiview_chunk_size=4, actors_per_domain=1, max_in_flight_per_actor=2,
        generator_preset="paper", generator_kind="gan", num_cpus_per_actor=1.0, num_gpus_per_actor=0.25,
        synthesize=SynthesizeConfig(batch_size=16, precision="bfloat16", num_threads=None),
        multiview=MultiviewConfig(expressions=12, cameras=4, batch_size=8, precision="bfloat16", num_threads=None),
    )


RECIPES: dict[str, Callable[[], FactoryConfig]] = {"tiny": tiny, "paper": paper}
DEFAULT_RECIPE = "tiny"


def get_recipe(name: str) -> FactoryConfig:
    """The config of recipe ``name``; unknown names raise ``ConfigError`` listing the recipes."""
    try:
        return RECIPES[name]()
    except KeyError:
        raise ConfigError(f"unknown factory recipe {name!r}; choose from {', '.join(RECIPES)}") from None
