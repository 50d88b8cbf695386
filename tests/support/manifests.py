"""Checkpoint manifests of the released models (names and shapes, no weights).

The repository keeps copies in ``tests/data/reference`` (see SOURCE.md there), so the
release-compatibility tests run in every checkout and in CI.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "data" / "reference"


def manifest_path(relative: str) -> Path:
    """``relative`` is e.g. ``"gan-release/invertavatar_next3dpp.json"``."""
    path = REFERENCE_DIR / relative
    if not path.is_file():
        raise FileNotFoundError(f"manifest {relative} is missing from {REFERENCE_DIR}")
    return path


def load_manifest(relative: str) -> dict[str, Any]:
    return json.loads(manifest_path(relative).read_text())
