"""Chunk planning: full coverage, unique ids, determinism, seeds independent of chunking."""

import collections

import pytest

from factory.chunks import Chunk, plan_chunks, sample_seed

DOMAINS = ["pixar", "lego", "ink"]


def _plan(**overrides):
    kwargs = dict(domains=DOMAINS, samples_per_domain=23, multiview_identities=5, chunk_size=8,
                  multiview_chunk_size=2, run_seed=7)
    return plan_chunks(**{**kwargs, **overrides})


def test_plan_covers_every_item_exactly_once():
    chunks = _plan()
    covered = collections.Counter((c.table, c.domain, c.set_name, i) for c in chunks for i in c.item_indices)
    assert set(covered.values()) == {1}
    for domain in DOMAINS:
        assert sorted(i for (t, d, s, i) in covered if (t, d, s) == ("pairs", domain, "pairs")) == list(range(23))
        for set_name in ("dynamic", "static"):
            items = [i for (t, d, s, i) in covered if (t, d, s) == ("multiview", domain, set_name)]
            assert sorted(items) == list(range(5))
    assert sum(c.size for c in chunks if c.table == "pairs") == 3 * 23
    assert max(c.size for c in chunks if c.table == "pairs") == 8 and min(c.size for c in chunks) == 1


def test_chunk_ids_unique_and_formatted():
    chunks = _plan()
    ids = [c.chunk_id for c in chunks]
    assert len(ids) == len(set(ids)) == 3 * (3 + 3 + 3)
    assert ids[0] == "pairs/pixar/pairs/000000"
    assert "multiview/ink/static/000002" in ids


def test_plan_is_deterministic_and_interleaves_domains():
    first, second = _plan(), _plan()
    assert first == second
    assert [c.domain for c in first[:6]] == DOMAINS * 2  # round robin: every domain progresses
    unequal = plan_chunks(domains=["a", "b"], samples_per_domain=4, multiview_identities=0, chunk_size=1,
                          multiview_chunk_size=1, run_seed=0)
    assert [c.domain for c in unequal] == ["a", "b"] * 4


def test_seeds_do_not_depend_on_chunk_size():
    def seeds(chunk_size):
        return {(c.domain, c.set_name, i): s for c in _plan(chunk_size=chunk_size, multiview_chunk_size=chunk_size)
                for i, s in zip(c.item_indices, c.seeds())}

    assert seeds(8) == seeds(3) == seeds(100)


def test_sample_seed_is_63_bit_and_distinguishes_every_input():
    seed = sample_seed(7, "pixar", "pairs", 3)
    assert seed == sample_seed(7, "pixar", "pairs", 3) and 0 <= seed < 2**63
    others = {sample_seed(8, "pixar", "pairs", 3), sample_seed(7, "lego", "pairs", 3),
              sample_seed(7, "pixar", "dynamic", 3), sample_seed(7, "pixar", "pairs", 4)}
    assert seed not in others and len(others) == 4
    all_seeds = [sample_seed(0, "d", "pairs", i) for i in range(2000)]
    assert len(set(all_seeds)) == 2000


def test_sample_seed_values_are_pinned():
    # top 63 bits of blake2b(person="avatar4d-seed") of the JSON key: changing them changes every dataset
    assert sample_seed(0, "pixar", "pairs", 0) == 3938107070438632528
    assert sample_seed(7, "pixar", "pairs", 3) == 2584431554629841647


@pytest.mark.parametrize("kwargs, message", [
    (dict(domains=[]), "at least one domain"),
    (dict(domains=["a", "a"]), r"listed twice: \['a'\]"),
    (dict(chunk_size=0), "chunk_size"),
    (dict(samples_per_domain=-1), ">= 0"),
])
def test_plan_argument_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _plan(**kwargs)


def test_chunk_validation_and_properties():
    chunk = Chunk("pairs", "pixar", "pairs", 2, 16, 24, run_seed=1)
    assert chunk.size == 8 and list(chunk.item_indices) == list(range(16, 24))
    assert chunk.seeds()[0] == sample_seed(1, "pixar", "pairs", 16)
    with pytest.raises(ValueError, match="not a set of table"):
        Chunk("pairs", "pixar", "dynamic", 0, 0, 1, 0)
    with pytest.raises(ValueError, match="unknown table"):
        Chunk("images", "pixar", "pairs", 0, 0, 1, 0)
    with pytest.raises(ValueError, match="start < stop"):
        Chunk("multiview", "pixar", "static", 0, 3, 3, 0)


def test_lazy_plan_matches_the_full_list_and_finds_chunks_by_id():
    from factory.chunks import ChunkPlan

    kwargs = dict(samples_per_domain=23, multiview_identities=5, chunk_size=8, multiview_chunk_size=2, run_seed=7)
    plan = ChunkPlan(tuple(DOMAINS), **kwargs)
    full = plan_chunks(domains=DOMAINS, **kwargs)
    assert list(plan) == full and len(plan) == len(full)
    assert all(plan.chunk(chunk.chunk_id) == chunk for chunk in full)
    with pytest.raises(KeyError):
        plan.chunk("pairs/pixar/pairs/000003")  # 23 samples in chunks of 8: indices 0..2


def test_huge_plans_are_refused_in_one_line_and_big_ones_stay_lazy():
    import time
    import tracemalloc

    from avatar4d.errors import UserError
    from factory.chunks import MAX_ITEMS_PER_DOMAIN, ChunkPlan

    with pytest.raises(UserError, match="limit") as error:
        ChunkPlan(("pixar",), 1_000_000_000_000, 0, 64, 1, 0)
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="chunks per domain"):
        ChunkPlan(("pixar",), MAX_ITEMS_PER_DOMAIN, 0, 8, 1, 0)  # 12.5M chunks > 999,999
    tracemalloc.start()
    begin = time.perf_counter()
    plan = ChunkPlan(tuple(f"d{i}" for i in range(28)), 50_000_000, 0, 64, 1, 0)  # 21.9M chunks
    first = next(iter(plan))
    assert len(plan) == 28 * 781_250 and first.chunk_id == "pairs/d0/pairs/000000"
    assert plan.chunk("pairs/d27/pairs/781249").size == 50_000_000 - 781_249 * 64
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1 << 20 and time.perf_counter() - begin < 1.0  # nothing was listed
