"""Per-domain generator checkpoints: created once, bit-identical across folders, loaded like fine-tuned ones."""

import threading

import pytest
import torch

from avatar4d.checkpoint.io import WEIGHTS_FILE, read_checkpoint_info
from avatar4d.models.next3d.checkpoint import load_generator, save_generator
from factory.domains import DomainSpec, load_domains
from factory.generators import (
    GeneratorCheckpointError,
    build_random_generator,
    ensure_domain_generator,
    seed_from_name,
)

PIXAR = load_domains().get("pixar")


def test_created_once_with_metadata(tmp_path):
    path = ensure_domain_generator(PIXAR, tmp_path)
    assert path == tmp_path / "pixar" and (path / WEIGHTS_FILE).is_file()
    info = read_checkpoint_info(path)
    assert info.metadata["domain"] == "pixar" and info.metadata["origin"] == "random-init"
    assert info.metadata["preset"] == "tiny" and info.metadata["seed"] == seed_from_name("pixar")
    stamp = (path / WEIGHTS_FILE).stat().st_mtime_ns
    assert ensure_domain_generator(PIXAR, tmp_path) == path
    assert (path / WEIGHTS_FILE).stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["pixar"]  # no staging leftovers


def test_recreated_weights_are_bit_identical_and_domains_differ(tmp_path):
    first = ensure_domain_generator(PIXAR, tmp_path / "a")
    second = ensure_domain_generator(PIXAR, tmp_path / "b")
    assert (first / WEIGHTS_FILE).read_bytes() == (second / WEIGHTS_FILE).read_bytes()
    assert read_checkpoint_info(first).weights_sha256 == read_checkpoint_info(second).weights_sha256
    lego = ensure_domain_generator(load_domains().get("lego"), tmp_path / "a")
    assert read_checkpoint_info(lego).weights_sha256 != read_checkpoint_info(first).weights_sha256
    assert seed_from_name("pixar") != seed_from_name("lego") and 0 <= seed_from_name("pixar") < 2**63


def test_random_init_leaves_global_rng_alone_and_sets_w_avg():
    state = torch.random.get_rng_state()
    generator = build_random_generator("pixar")
    assert torch.equal(torch.random.get_rng_state(), state)
    w_avg = generator.backbone.mapping.w_avg
    assert w_avg.abs().sum() > 0 and torch.isfinite(w_avg).all()
    again = build_random_generator("pixar")
    assert all(torch.equal(a, b) for a, b in zip(generator.state_dict().values(), again.state_dict().values()))


def test_loads_through_the_fine_tuned_path(tmp_path):
    path = ensure_domain_generator(PIXAR, tmp_path)
    generator, info = load_generator(path)
    assert info.config == generator.config.to_dict() and generator.config.plane_resolution == 64


def test_concurrent_creation_leaves_one_valid_checkpoint(tmp_path):
    domain = DomainSpec(name="race", prompt="p")
    results, errors = [], []

    def create():
        try:
            results.append(ensure_domain_generator(domain, tmp_path))
        except Exception as exc:  # noqa: BLE001 - surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and results == [tmp_path / "race"] * 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["race"]
    load_generator(tmp_path / "race")


def test_given_checkpoint_is_used_or_reported_missing(tmp_path):
    fine_tuned = tmp_path / "ft"
    save_generator(fine_tuned, build_random_generator("x"), metadata={"origin": "fine-tune"})
    domain = DomainSpec(name="pixar", prompt="p", generator_checkpoint=str(fine_tuned))
    assert ensure_domain_generator(domain, tmp_path / "cache") == fine_tuned
    assert not (tmp_path / "cache").exists()
    missing = DomainSpec(name="pixar", prompt="p", generator_checkpoint=str(tmp_path / "nope"))
    with pytest.raises(GeneratorCheckpointError, match="domain pixar: generator checkpoint not found"):
        ensure_domain_generator(missing, tmp_path / "cache")


def test_cached_checkpoint_of_another_preset_is_refused(tmp_path):
    ensure_domain_generator(PIXAR, tmp_path)
    with pytest.raises(GeneratorCheckpointError, match="holds a 'tiny' gan generator, this run wants a 'paper' gan"):
        ensure_domain_generator(PIXAR, tmp_path, preset="paper")
