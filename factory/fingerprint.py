"""The fingerprint of a factory dataset: everything that determines a row's content.

A chunk id names the same samples only when the rows are made the same way: the run seed and
chunking, the stage configs (truncation ψ, poses, batch size, precision, ...), the generator of
each domain (its kind and config from the run config, its weights' sha256 from the worker that
loaded it), the per-domain sizes (they fix the last chunk's range), and the factory and schema
versions. The fingerprint is stored in each dataset's own Lance table metadata (key
:data:`META_FINGERPRINT`, written before the first rows of a domain are committed), so it travels
with the data; a run whose fingerprint differs from the stored one is refused with the differing
settings named (:func:`check_fingerprint`). New domains may be added to a dataset; a domain (or
a whole dataset) that holds no rows yet may change its settings.

Settings that do not change a row (where the output goes, actor counts, CPUs, retry limits, the
device a stage runs on, encoder threads) are left out: :data:`OPERATIONAL`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from avatar4d.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from factory.recipes import FactoryConfig

META_FINGERPRINT = "avatar4d.fingerprint"
FINGERPRINT_FORMAT = 1
#: FactoryConfig fields (dotted paths; a prefix covers its sub-fields) that never change a row
OPERATIONAL = ("out", "domains", "samples_per_domain", "multiview_identities", "actors_per_domain",
               "max_in_flight_per_actor", "generator_cache", "domains_file", "num_cpus_per_actor",
               "num_gpus_per_actor", "max_chunk_attempts", "synthesize.device", "multiview.device",
               "synthesize.encode_threads", "multiview.encode_threads")


class FingerprintMismatchError(UserError):
    """The dataset was made with other settings than this run's."""


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts → ``{"a.b.c": value}`` (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def _operational(path: str) -> bool:
    return any(path == key or path.startswith(f"{key}.") for key in OPERATIONAL)


def run_settings(config: FactoryConfig) -> dict[str, Any]:
    """The row-determining settings of ``config`` (flattened), plus the factory and schema versions."""
    from avatar4d.data.schema import SCHEMA_VERSION
    from factory.stages.common import FACTORY_VERSION

    settings = {path: value for path, value in flatten(config.to_dict()).items() if not _operational(path)}
    return {**settings, "factory_version": FACTORY_VERSION, "schema_version": SCHEMA_VERSION}


def build_fingerprint(config: FactoryConfig, generators: Mapping[str, str | None]) -> dict[str, Any]:
    """The fingerprint of a run; ``generators`` maps each domain to its generator's weights sha256
    (None while unknown: it is then not compared)."""
    domains = {domain: {"generator_sha256": generators.get(domain), "samples_per_domain": config.samples_per_domain,
                        "multiview_identities": config.multiview_identities} for domain in config.domains}
    return {"format": FINGERPRINT_FORMAT, "settings": run_settings(config), "domains": domains}


def read_fingerprint(dataset: Any) -> dict[str, Any] | None:
    """The fingerprint stored in a Lance dataset's table metadata (None when it has none)."""
    text = (dataset.metadata or {}).get(META_FINGERPRINT)
    return None if text is None else json.loads(text)


def encode_fingerprint(fingerprint: Mapping[str, Any]) -> str:
    return json.dumps(fingerprint, sort_keys=True, separators=(",", ":"))


def differences(old: Mapping[str, Any], new: Mapping[str, Any], *, domains_with_rows: set[str]) -> list[str]:
    """Human-readable differences that matter: global settings (when any domain has rows) and the
    records of domains that hold rows. Unknown values (None) on this run's side are not compared."""
    found = []
    if domains_with_rows:
        old_settings, new_settings = old.get("settings", {}), new.get("settings", {})
        for key in sorted(set(old_settings) | set(new_settings)):
            before, after = old_settings.get(key, "(unset)"), new_settings.get(key, "(unset)")
            if before != after:
                found.append(f"{key} {_show(before)} → {_show(after)}")
    for domain in sorted(domains_with_rows & set(new.get("domains", {}))):
        before_record, after_record = old.get("domains", {}).get(domain, {}), new["domains"][domain]
        for key in sorted(after_record):
            before, after = before_record.get(key, "(unset)"), after_record[key]
            if after is not None and before != after:
                found.append(f"domain {domain} {key} {_show(before)} → {_show(after)}")
    return found


def _show(value: Any) -> str:
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return f"{value[:12]}…"  # a sha256
    return json.dumps(value) if not isinstance(value, str) else value


def check_fingerprint(name: str, old: Mapping[str, Any] | None, new: Mapping[str, Any], *,
                      domains_with_rows: set[str]) -> None:
    """Raise :class:`FingerprintMismatchError` naming every differing setting."""
    if old is None:
        if domains_with_rows:
            raise FingerprintMismatchError(f"{name} holds rows made by an older factory (no fingerprint in its "
                                           "metadata); use another --out")
        return
    found = differences(old, new, domains_with_rows=domains_with_rows)
    if found:
        shown = "; ".join(found[:6]) + (f"; and {len(found) - 6} more" if len(found) > 6 else "")
        raise FingerprintMismatchError(f"{name} was made with other settings (stored → this run): {shown}. "
                                       "Resume with the same settings or use another --out")


def merge_fingerprint(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """What to store after this run's check passed: this run's settings, every domain's record
    (this run's for its domains, the stored one for the others)."""
    domains = {**(old or {}).get("domains", {}), **new["domains"]}
    return {**new, "domains": dict(sorted(domains.items()))}
