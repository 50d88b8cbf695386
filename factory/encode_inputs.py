"""The inputs and outputs of ``factory encode`` that live beside the data, local or in a bucket:
checking ``--data`` and ``--vae-checkpoint`` (one-line errors; a checkpoint in an ``s3://`` folder is
copied once per machine) and writing the null condition file whole (a rename locally, one PUT on S3).
Kept apart from :mod:`factory.encode` (the run) so the CLI checks its arguments without Ray."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from avatar4d import storage
from avatar4d.data.encoded_schema import ENCODED, null_condition_uri
from avatar4d.data.schema import PAIRS, dataset_uri
from avatar4d.errors import UserError
from avatar4d.models.vae import COMPONENT as VAE_COMPONENT


def vae_folder(path: str | Path) -> Path:
    """The local folder of a VAE checkpoint: ``path`` itself, or this machine's copy of an
    object-store folder (downloaded once, ``checkpoint.json`` written last by the trainer)."""
    if storage.is_remote(path):
        try:
            return storage.local_copy(storage.check_uri(path, "--vae-checkpoint"), marker="checkpoint.json")
        except FileNotFoundError:
            raise UserError(f"--vae-checkpoint {path}: no checkpoint there (no checkpoint.json)") from None
    return Path(path).expanduser()


def check_vae_checkpoint(path: str | Path) -> str:
    """The weights sha256 of an avatar4d triplane-VAE checkpoint folder, local or in a bucket
    (one-line errors otherwise)."""
    from avatar4d.checkpoint.io import read_checkpoint_info

    if not str(path):
        raise UserError("give the VAE checkpoint folder (--vae-checkpoint)")
    info = read_checkpoint_info(vae_folder(path))
    if info.component != VAE_COMPONENT:
        raise UserError(f"{path} holds a {info.component!r} checkpoint, not a triplane VAE ({VAE_COMPONENT!r})")
    return info.weights_sha256


def check_data_folder(data: str | Path) -> str | Path:
    """``data`` must be a folder or an ``s3://`` prefix holding ``pairs.lance`` (one-line errors
    otherwise); returns the URI (remote) or the local Path."""
    if storage.is_remote(data):
        from factory.sink import has_versions

        uri = storage.check_uri(data, "--data")
        if not has_versions(dataset_uri(uri, PAIRS)):
            raise UserError(f"--data {uri} holds no pairs.lance (run `avatar4d factory run --out {uri}` first)")
        return uri
    path = Path(data).expanduser()
    if not path.exists():
        raise UserError(f"--data {data}: no such folder")
    if not path.is_dir():
        raise UserError(f"--data {data} is not a folder")
    if not (path / f"{PAIRS}.lance").is_dir():
        raise UserError(f"--data {data} holds no pairs.lance (run `avatar4d factory run --out {data}` first)")
    return path


def write_null_condition(data: str | Path, tensors: dict[str, Any], encoder_sha: str) -> bool:
    """``<data>/encoded_null_condition.safetensors``, written whole (a rename locally, one PUT on
    S3) and only when absent or made by other encoders; True when written."""
    from safetensors.torch import save

    from avatar4d.data.encoded_reader import safetensors_metadata

    uri = null_condition_uri(data)
    existing = storage.read_bytes(uri)
    if existing is not None and safetensors_metadata(existing).get("encoder_sha256") == encoder_sha:
        return False
    storage.write_bytes(uri, save({name: tensor.contiguous() for name, tensor in tensors.items()},
                                  metadata={"encoder_sha256": encoder_sha, "table": ENCODED}))
    return True
