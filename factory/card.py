"""The dataset card written next to the datasets after every run (``<out>/DATASET_CARD.md`` and
``<out>/dataset_card.json``): how the data were made (recipe, fingerprint, git commit, library
versions), what they hold (domains with their prompts and generator hashes, rows, tensor specs)
and how to read them."""

from __future__ import annotations

import datetime
import json
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avatar4d.data.schema import TABLES, dataset_uri, schema_metadata

if TYPE_CHECKING:  # pragma: no cover
    from factory.recipes import FactoryConfig

CARD_MD = "DATASET_CARD.md"
CARD_JSON = "dataset_card.json"
SPEC_KEYS = ("avatar4d.triplane", "avatar4d.depth", "avatar4d.features", "avatar4d.image", "avatar4d.face_params_dims")
LIBRARIES = ("avatar4d", "torch", "numpy", "pyarrow", "pylance", "ray")


def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str:
    """The commit of the avatar4d source tree this runs from (``+dirty`` with local changes)."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (not a git checkout)"
    return commit + ("+dirty" if dirty else "")


def build_card(config: FactoryConfig) -> dict[str, Any]:
    from factory.domains import load_domains
    from factory.fingerprint import read_fingerprint
    from factory.sink import open_dataset

    catalog = load_domains(config.domains_file)
    tables: dict[str, Any] = {}
    fingerprint: dict[str, Any] = {}
    for table in TABLES:
        dataset = open_dataset(dataset_uri(config.out, table))
        if dataset is None:
            continue
        meta = schema_metadata(dataset.schema)
        specs = {key.removeprefix("avatar4d."): json.loads(value) for key, value in meta.items() if key in SPEC_KEYS}
        tables[table] = {"rows": dataset.count_rows(), "version": dataset.version,
                         "columns": [f"{field.name}: {field.type}" for field in dataset.schema], "tensor_specs": specs}
        fingerprint = read_fingerprint(dataset) or fingerprint
    domains = {}
    for name, record in sorted(fingerprint.get("domains", {}).items()):
        spec = catalog.get(name) if name in catalog.names() else None
        domains[name] = {**record, "kind": getattr(spec, "kind", None), "prompt": getattr(spec, "prompt", None)}
    return {"created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "git_commit": git_commit(), "libraries": library_versions(), "recipe": config.to_dict(),
            "settings": fingerprint.get("settings", {}), "domains": domains, "tables": tables}


def render_markdown(card: dict[str, Any]) -> str:
    lines = ["# avatar4d factory dataset", "",
             f"Made {card['created']} from avatar4d git commit `{card['git_commit']}`.", "",
             "Libraries: " + ", ".join(f"{name} {version}" for name, version in card["libraries"].items()), "",
             "## Tables", ""]
    for table, info in card["tables"].items():
        lines += [f"### `{table}.lance`: {info['rows']} rows (version {info['version']})", ""]
        lines += [f"- tensor `{name}`: {json.dumps(spec)}" for name, spec in info["tensor_specs"].items()]
        lines += ["", "Columns: " + "; ".join(f"`{column}`" for column in info["columns"]), ""]
    lines += ["## Domains", "", "| domain | kind | prompt | generator sha256 | pairs | multiview identities |",
              "| --- | --- | --- | --- | --- | --- |"]
    for name, record in card["domains"].items():
        lines.append(f"| {name} | {record.get('kind') or ''} | {record.get('prompt') or ''} | "
                     f"`{record.get('generator_sha256') or ''}` | {record.get('samples_per_domain')} | "
                     f"{record.get('multiview_identities')} |")
    lines += ["", "## Recipe", "", "```json", json.dumps(card["recipe"], indent=2, sort_keys=True), "```", "",
              "## Reading", "",
              "```python", "import lance",
              "pairs = lance.dataset('pairs.lance')",
              "rows = pairs.to_table(columns=['sample_id', 'image', 'triplane'], blob_handling='all_binary', limit=4)",
              "```", "",
              "Tensors are raw little-endian bytes of the shapes and dtypes above "
              "(`avatar4d.data.decode_tensor`); images are PNG; `row_checksum` is checked by "
              "`avatar4d factory verify`.", ""]
    return "\n".join(lines)


def write_dataset_card(config: FactoryConfig) -> str:
    """Write both card files into ``config.out`` (a folder or an object-store URI); return the
    Markdown one's path."""
    from avatar4d import storage

    card = build_card(config)
    storage.write_text(storage.join(config.out, CARD_JSON), json.dumps(card, indent=2, sort_keys=True))
    path = storage.join(config.out, CARD_MD)
    storage.write_text(path, render_markdown(card))
    return path
