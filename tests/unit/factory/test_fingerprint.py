"""The run fingerprint: what it covers, what it leaves out, and the refusal message."""

from __future__ import annotations

import pytest

from factory.fingerprint import (
    FingerprintMismatchError,
    build_fingerprint,
    check_fingerprint,
    merge_fingerprint,
)
from factory.recipes import tiny

SHA_A, SHA_B = "a" * 64, "b" * 64


def _fingerprint(**overrides):
    config = tiny().replace(domains=["pixar", "lego"], **overrides)
    return build_fingerprint(config, {"pixar": SHA_A, "lego": SHA_A})


def test_row_settings_are_covered_and_operational_ones_are_not():
    base = _fingerprint()
    settings = base["settings"]
    assert settings["synthesize.truncation_psi"] == 0.7 and settings["run_seed"] == 0
    assert "factory_version" in settings and "schema_version" in settings and "generator_kind" in settings
    for operational in ("out", "actors_per_domain", "num_cpus_per_actor", "synthesize.device", "max_chunk_attempts"):
        assert operational not in settings
    assert base["domains"]["pixar"] == {"generator_sha256": SHA_A, "samples_per_domain": 32,
                                        "multiview_identities": 2}
    assert _fingerprint(out="elsewhere", actors_per_domain=3) == base


def test_a_changed_truncation_psi_is_refused_naming_the_setting():
    stored = _fingerprint()
    config = tiny().replace(domains=["pixar", "lego"])
    changed = build_fingerprint(config.replace(synthesize=config.synthesize.replace(truncation_psi=0.5)),
                                {"pixar": SHA_A, "lego": SHA_A})
    with pytest.raises(FingerprintMismatchError, match=r"synthesize.truncation_psi 0.7 → 0.5") as error:
        check_fingerprint("pairs.lance", stored, changed, domains_with_rows={"pixar"})
    assert "\n" not in str(error.value)
    check_fingerprint("pairs.lance", stored, changed, domains_with_rows=set())  # no rows yet: allowed


def test_another_generator_seed_or_size_is_refused_for_domains_with_rows():
    stored = _fingerprint()
    other_generator = build_fingerprint(tiny().replace(domains=["pixar", "lego"]), {"pixar": SHA_B, "lego": SHA_A})
    with pytest.raises(FingerprintMismatchError, match="domain pixar generator_sha256 aaaaaaaaaaaa… → bbbbbbbbbbbb…"):
        check_fingerprint("pairs.lance", stored, other_generator, domains_with_rows={"pixar"})
    check_fingerprint("pairs.lance", stored, other_generator, domains_with_rows={"lego"})  # pixar has no rows
    with pytest.raises(FingerprintMismatchError, match="run_seed 0 → 3"):
        check_fingerprint("pairs.lance", stored, _fingerprint(run_seed=3), domains_with_rows={"lego"})
    with pytest.raises(FingerprintMismatchError, match="samples_per_domain 32 → 40"):
        check_fingerprint("pairs.lance", stored, _fingerprint(samples_per_domain=40), domains_with_rows={"lego"})
    with pytest.raises(FingerprintMismatchError, match="older factory"):
        check_fingerprint("pairs.lance", None, stored, domains_with_rows={"lego"})


def test_unknown_generator_hashes_are_not_compared_and_merging_keeps_other_domains():
    stored = _fingerprint()
    unknown = build_fingerprint(tiny().replace(domains=["pixar"]), {"pixar": None})
    check_fingerprint("pairs.lance", stored, unknown, domains_with_rows={"pixar", "lego"})
    added = build_fingerprint(tiny().replace(domains=["ink"]), {"ink": SHA_B})
    merged = merge_fingerprint(stored, added)
    assert sorted(merged["domains"]) == ["ink", "lego", "pixar"]
    assert merged["domains"]["ink"]["generator_sha256"] == SHA_B
