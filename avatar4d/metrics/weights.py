"""Reading a metric network's weights from a local file: one place for the checks every metric makes
(the file exists, it is a tensor pickle that ``torch.load(weights_only=True)`` reads, so no code in
it runs) and their one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from avatar4d.errors import UserError


def read_weights_file(path: str | Path, what: str) -> tuple[Path, Any]:
    """The resolved path of a local ``what`` weights file and its contents (tensors only)."""
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise UserError(f"{what} weights not found: {resolved}")
    try:
        return resolved, torch.load(resolved, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the user's input
        raise UserError(f"{resolved} is not a {what} weights file ({type(error).__name__})") from None
