"""Deterministic work plan of a factory run: chunks of samples and per-sample seeds.

A chunk is a contiguous index range of one domain's items in one table and set. Each item's seed
comes from ``(run_seed, domain, set, item index)`` alone (:func:`sample_seed`), so the data do not
depend on how the work was cut into chunks, and any row can be regenerated from its seed.

:class:`ChunkPlan` is lazy: chunks are made as the scheduler asks for them, so the driver's memory
does not grow with the run's size. Sizes are bounded (:data:`MAX_ITEMS_PER_DOMAIN` items per domain
and set, :data:`MAX_CHUNKS_PER_DOMAIN` chunks: the chunk index has six digits in the chunk id).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterator

from avatar4d.data.schema import MULTIVIEW, MULTIVIEW_SETS, PAIRS, TABLES
from avatar4d.errors import UserError

SEED_BITS = 63
MAX_ITEMS_PER_DOMAIN = 100_000_000  # samples (or identities per multiview set) of one domain: 5,000× the paper
MAX_CHUNKS_PER_DOMAIN = 999_999  # chunk ids carry a six-digit index
PAIRS_SET = "pairs"
SETS_BY_TABLE = {PAIRS: (PAIRS_SET,), MULTIVIEW: MULTIVIEW_SETS}


def sample_seed(run_seed: int, domain: str, set_name: str, item_index: int) -> int:
    """Deterministic 63-bit seed of one item (BLAKE2b of the JSON ``[run_seed, domain, set, index]``)."""
    key = json.dumps([int(run_seed), str(domain), str(set_name), int(item_index)], separators=(",", ":"))
    digest = hashlib.blake2b(key.encode(), digest_size=8, person=b"avatar4d-seed").digest()
    return int.from_bytes(digest, "little") >> (64 - SEED_BITS)


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Items ``start .. stop-1`` of ``domain`` in ``table``/``set_name`` (the unit of work and of commit)."""

    table: str
    domain: str
    set_name: str
    index: int
    start: int
    stop: int
    run_seed: int

    def __post_init__(self) -> None:
        if self.table not in TABLES:
            raise ValueError(f"unknown table {self.table!r}; choose from {list(TABLES)}")
        if self.set_name not in SETS_BY_TABLE[self.table]:
            raise ValueError(f"set {self.set_name!r} is not a set of table {self.table!r} "
                             f"({list(SETS_BY_TABLE[self.table])})")
        if not 0 <= self.start < self.stop:
            raise ValueError(f"chunk needs 0 <= start < stop, got {self.start}, {self.stop}")
        if self.index < 0:
            raise ValueError(f"chunk index must be >= 0, got {self.index}")

    @property
    def chunk_id(self) -> str:
        return f"{self.table}/{self.domain}/{self.set_name}/{self.index:06d}"

    @property
    def size(self) -> int:
        return self.stop - self.start

    @property
    def item_indices(self) -> range:
        return range(self.start, self.stop)

    def seeds(self) -> list[int]:
        """:func:`sample_seed` of every item, in index order."""
        return [sample_seed(self.run_seed, self.domain, self.set_name, i) for i in self.item_indices]


def _domain_chunks(table: str, domain: str, set_name: str, count: int, chunk_size: int, run_seed: int) -> list[Chunk]:
    return [Chunk(table, domain, set_name, index, start, min(start + chunk_size, count), run_seed)
            for index, start in enumerate(range(0, count, chunk_size))]


def plan_chunks(*, domains: list[str], samples_per_domain: int, multiview_identities: int, chunk_size: int,
                multiview_chunk_size: int, run_seed: int) -> list[Chunk]:
    """Every chunk of a run, in a deterministic order that interleaves the domains.

    Per domain the chunks run pairs, then dynamic, then static identities; the domains' lists are
    merged round-robin so each domain progresses from the start. ``multiview_identities`` is the
    number of identities in each multiview set (dynamic and static) of each domain.
    """
    if not domains:
        raise ValueError("plan_chunks needs at least one domain")
    duplicates = sorted({d for d in domains if domains.count(d) > 1})
    if duplicates:
        raise ValueError(f"domains listed twice: {duplicates}")
    if samples_per_domain < 0 or multiview_identities < 0:
        raise ValueError("samples_per_domain and multiview_identities must be >= 0")
    if chunk_size < 1 or multiview_chunk_size < 1:
        raise ValueError("chunk_size and multiview_chunk_size must be >= 1")
    per_domain = []
    for domain in domains:
        chunks = _domain_chunks(PAIRS, domain, PAIRS_SET, samples_per_domain, chunk_size, run_seed)
        for set_name in MULTIVIEW_SETS:
            chunks += _domain_chunks(MULTIVIEW, domain, set_name, multiview_identities, multiview_chunk_size,
                                     run_seed)
        per_domain.append(chunks)
    longest = max(len(chunks) for chunks in per_domain)
    return [chunks[i] for i in range(longest) for chunks in per_domain if i < len(chunks)]


def check_plan_size(*, samples_per_domain: int, multiview_identities: int, chunk_size: int,
                    multiview_chunk_size: int) -> None:
    """One-line :class:`UserError` when a run exceeds the documented size limits."""
    for what, count, size in (("samples per domain", samples_per_domain, chunk_size),
                              ("multiview identities per set", multiview_identities, multiview_chunk_size)):
        if count > MAX_ITEMS_PER_DOMAIN:
            raise UserError(f"{count:,} {what} is more than the limit of {MAX_ITEMS_PER_DOMAIN:,}; split the "
                            "work into several output folders")
        chunks = -(-count // max(1, size))
        if chunks > MAX_CHUNKS_PER_DOMAIN:
            raise UserError(f"{count:,} {what} in chunks of {size} make {chunks:,} chunks per domain, more than the "
                            f"limit of {MAX_CHUNKS_PER_DOMAIN:,}; raise the chunk size")


@dataclasses.dataclass(frozen=True)
class ChunkPlan:
    """The chunks of a run, made lazily (see :func:`plan_chunks` for the order of the full list)."""

    domains: tuple[str, ...]
    samples_per_domain: int
    multiview_identities: int
    chunk_size: int
    multiview_chunk_size: int
    run_seed: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "domains", tuple(self.domains))
        if not self.domains:
            raise ValueError("a chunk plan needs at least one domain")
        duplicates = sorted({d for d in self.domains if self.domains.count(d) > 1})
        if duplicates:
            raise ValueError(f"domains listed twice: {duplicates}")
        if self.samples_per_domain < 0 or self.multiview_identities < 0:
            raise ValueError("samples_per_domain and multiview_identities must be >= 0")
        if self.chunk_size < 1 or self.multiview_chunk_size < 1:
            raise ValueError("chunk_size and multiview_chunk_size must be >= 1")
        check_plan_size(samples_per_domain=self.samples_per_domain, multiview_identities=self.multiview_identities,
                        chunk_size=self.chunk_size, multiview_chunk_size=self.multiview_chunk_size)

    def _sets(self) -> list[tuple[str, str, int, int]]:
        """(table, set, items, chunk size) of every set of a domain, in plan order."""
        sets = [(PAIRS, PAIRS_SET, self.samples_per_domain, self.chunk_size)]
        sets += [(MULTIVIEW, name, self.multiview_identities, self.multiview_chunk_size) for name in MULTIVIEW_SETS]
        return sets

    def domain_chunks(self, domain: str) -> Iterator[Chunk]:
        """``domain``'s chunks in order (pairs, dynamic, static), one at a time."""
        for table, set_name, count, size in self._sets():
            for index, start in enumerate(range(0, count, size)):
                yield Chunk(table, domain, set_name, index, start, min(start + size, count), self.run_seed)

    def chunk(self, chunk_id: str) -> Chunk:
        """The chunk named ``chunk_id`` (``KeyError`` when the plan has none of that name)."""
        try:
            table, domain, set_name, index_text = chunk_id.split("/")
            index = int(index_text)
        except ValueError:
            raise KeyError(chunk_id) from None
        for table_, set_, count, size in self._sets():
            if (table_, set_) == (table, set_name) and domain in self.domains and 0 <= index * size < count:
                return Chunk(table, domain, set_name, index, index * size, min(index * size + size, count),
                             self.run_seed)
        raise KeyError(chunk_id)

    def chunks_per_domain(self) -> int:
        return sum(-(-count // size) for _, _, count, size in self._sets())

    def __len__(self) -> int:
        return self.chunks_per_domain() * len(self.domains)

    def __iter__(self) -> Iterator[Chunk]:
        """Every chunk, the domains merged round-robin (the order of :func:`plan_chunks`)."""
        iterators = [self.domain_chunks(domain) for domain in self.domains]
        while iterators:
            alive = []
            for iterator in iterators:
                chunk = next(iterator, None)
                if chunk is not None:
                    yield chunk
                    alive.append(iterator)
            iterators = alive
