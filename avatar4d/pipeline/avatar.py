"""An *avatar*: what one portrait becomes, saved as ``avatar.safetensors`` + ``avatar.json``.

The tensors: the de-normalised parametric triplane [4, C, R, R] (plane 0 the UV texture, planes 1–3
the static triplane), the portrait it came from (uint8 [3, H, W], which the motion-aware renderer
reads), the source camera's 25-d label and the source face coefficients (identity ++ expression ++
jaw). The JSON: the id, the head model's coefficient sizes, the SHA-256 of every checkpoint that
made it (DiT, VAE, encoders, generator) and how it was sampled — enough to tell whether two avatars
came from the same models.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import stat
import uuid
from pathlib import Path
from typing import Any

from torch import Tensor

from avatar4d import __version__
from avatar4d.errors import UserError
from avatar4d.geometry.camera import Camera
from avatar4d.geometry.morphable import FaceParams

FORMAT = "avatar4d-avatar"
FORMAT_VERSION = 1
TENSORS_FILE = "avatar.safetensors"
INFO_FILE = "avatar.json"
ID_PATTERN = re.compile(r"^[0-9a-f]{32}$")


def new_avatar_id() -> str:
    return uuid.uuid4().hex


@dataclasses.dataclass
class Avatar:
    """One avatar (CPU tensors). ``checkpoints``: component → weights SHA-256."""

    avatar_id: str
    triplane: Tensor  # [4, C, R, R] float32, data units
    source_image: Tensor  # [3, H, W] uint8
    source_camera: Tensor  # [25] EG3D label
    source_coefficients: Tensor  # [Ni + Ne + 3]
    identity_dim: int
    expression_dim: int
    checkpoints: dict[str, str]
    sampling: dict[str, Any]
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.triplane.ndim != 4 or self.triplane.shape[0] != 4:
            raise ValueError(f"an avatar's triplane is [4, C, R, R], got {list(self.triplane.shape)}")
        if self.source_camera.shape != (25,):
            raise ValueError(f"source_camera must be a 25-d label, got {list(self.source_camera.shape)}")
        expected = FaceParams.vector_dim(self.identity_dim, self.expression_dim)
        if self.source_coefficients.shape != (expected,):
            raise ValueError(f"source_coefficients must have {expected} values, got "
                             f"{list(self.source_coefficients.shape)}")

    @property
    def camera(self) -> Camera:
        return Camera.from_label(self.source_camera)

    @property
    def face_params(self) -> FaceParams:
        return FaceParams.from_vector(self.source_coefficients, self.identity_dim, self.expression_dim)

    def info(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "avatar_id": self.avatar_id,
                "avatar4d_version": __version__, "triplane_shape": list(self.triplane.shape),
                "identity_dim": self.identity_dim, "expression_dim": self.expression_dim,
                "checkpoints": self.checkpoints, "sampling": self.sampling, "metadata": self.metadata}

    def save(self, directory: str | Path) -> Path:
        """Write the avatar folder atomically (a reader never sees half an avatar)."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = directory.parent / f".{directory.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
        staging.mkdir()  # mode 0777 & ~umask, as checkpoints (tempfile.mkdtemp would make it 0700)
        tensors = {"triplane": self.triplane.float().contiguous(), "source_image": self.source_image.contiguous(),
                   "source_camera": self.source_camera.float().contiguous(),
                   "source_coefficients": self.source_coefficients.float().contiguous()}
        save_file(tensors, str(staging / TENSORS_FILE), metadata={"format": FORMAT})
        (staging / INFO_FILE).write_text(json.dumps(self.info(), indent=2, sort_keys=True) + "\n")
        # safetensors writes 0600 whatever the umask; give the tensors the mode open() gave the JSON
        os.chmod(staging / TENSORS_FILE, stat.S_IMODE((staging / INFO_FILE).stat().st_mode))
        if directory.exists():  # replace: move the old one aside first, so the swap is two renames
            old = directory.with_name(f".{directory.name}.old-{uuid.uuid4().hex[:8]}")
            directory.rename(old)
            staging.rename(directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(directory)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> Avatar:
        """Read an avatar folder; anything damaged or foreign is a one-line :class:`UserError`."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        if not directory.exists():
            raise UserError(f"avatar not found: {directory}")
        if not (directory / INFO_FILE).is_file() or not (directory / TENSORS_FILE).is_file():
            raise UserError(f"{directory} is not an avatar (expected {INFO_FILE} and {TENSORS_FILE}; make one with "
                            "`avatar4d create`)")
        try:
            info = json.loads((directory / INFO_FILE).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{directory / INFO_FILE} is damaged ({exc})") from None
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise UserError(f"{directory / INFO_FILE} is not an avatar4d avatar")
        if info.get("format_version", 0) > FORMAT_VERSION:
            raise UserError(f"{directory} was written by a newer avatar4d (format {info['format_version']})")
        try:
            tensors = load_file(str(directory / TENSORS_FILE))
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserError(f"{directory / TENSORS_FILE} is damaged ({str(exc).splitlines()[0][:120]})") from None
        missing = {"triplane", "source_image", "source_camera", "source_coefficients"} - set(tensors)
        if missing:
            raise UserError(f"{directory / TENSORS_FILE} lacks {sorted(missing)}")
        try:
            return cls(avatar_id=str(info["avatar_id"]), triplane=tensors["triplane"],
                       source_image=tensors["source_image"], source_camera=tensors["source_camera"],
                       source_coefficients=tensors["source_coefficients"], identity_dim=int(info["identity_dim"]),
                       expression_dim=int(info["expression_dim"]), checkpoints=dict(info.get("checkpoints", {})),
                       sampling=dict(info.get("sampling", {})), metadata=dict(info.get("metadata", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{directory} is a damaged avatar ({exc})") from None

