"""Reading ``<data>/encoded.lance`` (the DiT's precomputed inputs) for training.

:class:`EncodedShardReader` is :class:`~avatar4d.data.reader.LanceShardReader` (same sharding,
shuffling and fork-safety rules) that also decodes the encoded tensor columns, whose specs live in
the schema metadata (:mod:`avatar4d.data.encoded_schema`): ``clip_tokens`` [B, Tc, Dc] and
``dino_tokens`` [B, Td, Dd] in their stored dtype (float16), ``latent`` (and ``latent_std`` when
stored) [B, E, F, h, w] float32 in diffusion space (already × the latent scale). These small
tensors are copied out of the Arrow buffers. lance is imported lazily, safetensors too. The null
condition file is read through :mod:`avatar4d.storage` (a local folder or ``s3://``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch import Tensor

from avatar4d.data.codec import decode_tensors
from avatar4d.data.encoded_schema import encoded_specs, null_condition_uri
from avatar4d.data.reader import LanceShardReader


class EncodedShardReader(LanceShardReader):
    """Per-rank streaming reader of the encoded table; yields dicts with decoded tensor columns."""

    def __iter__(self) -> Iterator[dict[str, Any]]:
        specs = None
        for batch in super().__iter__():
            if specs is None:
                import lance

                from avatar4d.storage import storage_options

                dataset = lance.dataset(self.uri, version=self.version, storage_options=storage_options(self.uri))
                specs = encoded_specs(dataset.schema) if self.decode else {}
            for name, spec in specs.items():
                if isinstance(batch.get(name), list):  # raw bytes (the base reader knows only the factory's specs)
                    batch[name] = decode_tensors(batch[name], spec)
            yield batch


def load_null_condition(data: str | Path) -> dict[str, Tensor]:
    """``{"clip_tokens": [Tc, Dc], "dino_tokens": [Td, Dd]}``: the tokens of an all-zero input written by
    ``factory encode`` (the release's unconditional branch for classifier-free guidance). ``data``: a
    local folder or an object-store URI."""
    from safetensors.torch import load

    return load(_null_condition_bytes(data))


def null_condition_encoder_sha256(data: str | Path) -> str | None:
    """The ``encoder_sha256`` the null condition file was made with (compare with the table's)."""
    return safetensors_metadata(_null_condition_bytes(data)).get("encoder_sha256")


def safetensors_metadata(raw: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors file held in memory. safetensors' Python API reads
    metadata only from a file on disk (``safe_open``); the format's header is documented and tiny:
    an 8-byte little-endian length, then that many bytes of JSON."""
    import json

    length = int.from_bytes(raw[:8], "little")
    return dict(json.loads(raw[8:8 + length]).get("__metadata__") or {})


def _null_condition_bytes(data: str | Path) -> bytes:
    from avatar4d.storage import read_bytes

    uri = null_condition_uri(data)
    raw = read_bytes(uri)
    if raw is None:
        raise FileNotFoundError(2, "no null condition (run `avatar4d factory encode` first)", uri)
    return raw
