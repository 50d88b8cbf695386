"""Arrow schema of the precomputed DiT conditions and latents (``<data>/encoded.lance``).

One row per pair of ``pairs.lance`` (same ``sample_id``): the CLIP image tokens, the DINOv2 tokens
and the scaled VAE latent of its triplane, so DiT training never runs the encoders. Tensors are raw
little-endian bytes (:mod:`avatar4d.data.codec`) whose :class:`~avatar4d.data.schema.TensorSpec`
lives in the schema metadata under ``avatar4d.<column>``, as for the pairs table:

- ``clip_tokens`` [Tc, Dc] float16: CLIP vision ``hidden_states[-2]`` (release: 257 × 1280, ViT-H/14);
- ``dino_tokens`` [Td, Dd] float16: DINOv2 ``last_hidden_state`` (release: 257 × 768, dinov2-base);
- ``latent`` [E, F, h, w] float32: VAE posterior mean × ``latent_scale`` (release: 8 × 4 × 32 × 32,
  scale 0.3994218), i.e. already in diffusion space;
- ``latent_std`` (optional column, same spec): posterior std × ``latent_scale``.

``vae_sha256`` / ``encoder_sha256`` name the weights that made a row; the schema metadata records
them too (``avatar4d.vae_sha256``, ``avatar4d.encoder_sha256``) so a resumed run can refuse to mix
rows of two VAEs. pyarrow is imported inside the functions: ``avatar4d`` imports without it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from avatar4d.data.schema import (
    META_SCHEMA_VERSION,
    META_TABLE,
    SCHEMA_VERSION,
    SchemaMismatchError,
    TensorSpec,
    schema_metadata,
)

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

ENCODED = "encoded"
ENCODED_TENSOR_COLUMNS = ("clip_tokens", "dino_tokens", "latent", "latent_std")
META_LATENT_SCALE = "avatar4d.latent_scale"
META_VAE_SHA256 = "avatar4d.vae_sha256"
META_ENCODER_SHA256 = "avatar4d.encoder_sha256"
NULL_CONDITION_FILE = "encoded_null_condition.safetensors"


def encoded_uri(data: str | Path) -> str:
    """``<data>/encoded.lance`` (a local folder or an object-store URI)."""
    return f"{str(data).rstrip('/')}/{ENCODED}.lance"


def null_condition_path(data: str | Path) -> Path:
    """``<data>/encoded_null_condition.safetensors``: CLIP and DINO tokens of an all-zero input
    (the release's unconditional branch for classifier-free guidance)."""
    return Path(data) / NULL_CONDITION_FILE


def null_condition_uri(data: str | Path) -> str:
    """:func:`null_condition_path` as a string that also works for an object-store ``data``
    (``s3://bucket/prefix/encoded_null_condition.safetensors``); read and write it with
    :mod:`avatar4d.storage`."""
    from avatar4d.storage import join

    return join(data, NULL_CONDITION_FILE)


def encoded_chunk_id(source_chunk_id: str) -> str:
    """The encoded chunk of a pairs chunk: ``pairs/<domain>/pairs/<index>`` → ``encoded/<domain>/pairs/<index>``."""
    table, _, rest = source_chunk_id.partition("/")
    if not rest:
        raise ValueError(f"not a factory chunk id: {source_chunk_id!r}")
    return f"{ENCODED}/{rest}" if table == "pairs" else f"{ENCODED}/{source_chunk_id}"


def spec_key(column: str) -> str:
    return f"avatar4d.{column}"


def encoded_schema(*, clip_tokens: TensorSpec, dino_tokens: TensorSpec, latent: TensorSpec,
                   latent_scale: float, vae_sha256: str, encoder_sha256: str, latent_std: bool = False,
                   extra_metadata: Mapping[str, str] | None = None) -> pa.Schema:
    """Schema of the encoded table (see the module docstring)."""
    import pyarrow as pa

    if len(clip_tokens.shape) != 2 or len(dino_tokens.shape) != 2:
        raise ValueError(f"token specs must be [tokens, channels], got {list(clip_tokens.shape)} and "
                         f"{list(dino_tokens.shape)}")
    if len(latent.shape) != 4:
        raise ValueError(f"the latent spec must be [channels, planes, h, w], got {list(latent.shape)}")
    if latent_scale <= 0:
        raise ValueError(f"latent_scale must be > 0, got {latent_scale}")
    tensor = pa.large_binary()
    fields = [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("chunk_id", pa.string(), nullable=False),
        pa.field("domain", pa.string(), nullable=False),
        pa.field("clip_tokens", tensor, nullable=False),
        pa.field("dino_tokens", tensor, nullable=False),
        pa.field("latent", tensor, nullable=False),
        *([pa.field("latent_std", tensor, nullable=False)] if latent_std else []),
        pa.field("vae_sha256", pa.string(), nullable=False),
        pa.field("encoder_sha256", pa.string(), nullable=False),
    ]
    specs = {"clip_tokens": clip_tokens, "dino_tokens": dino_tokens, "latent": latent}
    if latent_std:
        specs["latent_std"] = latent
    meta = {META_SCHEMA_VERSION: str(SCHEMA_VERSION), META_TABLE: ENCODED, META_LATENT_SCALE: repr(float(latent_scale)),
            META_VAE_SHA256: vae_sha256, META_ENCODER_SHA256: encoder_sha256,
            **{spec_key(name): spec.to_json() for name, spec in specs.items()}}
    for key, value in (extra_metadata or {}).items():
        if key in meta:
            raise ValueError(f"extra_metadata may not override {key!r}")
        meta[str(key)] = str(value)
    return pa.schema(fields, metadata={k.encode(): v.encode() for k, v in meta.items()})


def encoded_tensor_spec(schema: pa.Schema, column: str) -> TensorSpec:
    """The :class:`TensorSpec` of an encoded tensor column, read from the schema metadata."""
    if column not in ENCODED_TENSOR_COLUMNS:
        raise ValueError(f"no tensor spec for {column!r}; known: {list(ENCODED_TENSOR_COLUMNS)}")
    raw = schema_metadata(schema).get(spec_key(column))
    if raw is None:
        raise SchemaMismatchError(f"schema metadata has no {spec_key(column)} (not an encoded table, or no {column})")
    return TensorSpec.from_json(raw)


def encoded_specs(schema: pa.Schema) -> dict[str, TensorSpec]:
    """Every tensor column's spec present in ``schema`` (``latent_std`` only when stored)."""
    meta = schema_metadata(schema)
    return {name: TensorSpec.from_json(meta[spec_key(name)]) for name in ENCODED_TENSOR_COLUMNS
            if spec_key(name) in meta}


def latent_scale(schema: pa.Schema) -> float:
    """The factor the stored latents were multiplied by (divide by it before VAE decoding)."""
    raw = schema_metadata(schema).get(META_LATENT_SCALE)
    if raw is None:
        raise SchemaMismatchError(f"schema metadata has no {META_LATENT_SCALE}")
    return float(raw)


def check_same_encoding(existing: pa.Schema, expected: pa.Schema) -> None:
    """Raise :class:`SchemaMismatchError` (one line) unless rows made for ``expected`` may join a
    dataset with schema ``existing``: same tensor specs, latent scale, VAE and encoder weights.
    (Column names and types are :func:`avatar4d.data.schema.check_compatible`'s job.)"""
    old, new = schema_metadata(existing), schema_metadata(expected)
    for key, what in ((META_VAE_SHA256, "VAE weights"), (META_ENCODER_SHA256, "image encoder weights")):
        if old.get(key) != new.get(key):
            raise SchemaMismatchError(
                f"the existing encoded dataset was made with other {what} (sha256 {_short(old.get(key))}, this run "
                f"{_short(new.get(key))}); delete it to re-encode everything, or use the same weights")
    if old.get(META_LATENT_SCALE) != new.get(META_LATENT_SCALE):
        raise SchemaMismatchError(f"latent scale differs: existing {old.get(META_LATENT_SCALE)}, "
                                  f"this run {new.get(META_LATENT_SCALE)}")
    old_specs, new_specs = encoded_specs(existing), encoded_specs(expected)
    if old_specs != new_specs:
        changed = sorted(n for n in set(old_specs) | set(new_specs) if old_specs.get(n) != new_specs.get(n))
        name = changed[0]
        raise SchemaMismatchError(f"{name} differs: existing {_spec_text(old_specs.get(name))}, "
                                  f"this run {_spec_text(new_specs.get(name))}")


def describe_encoding(schema: pa.Schema) -> dict[str, object]:
    """A JSON-friendly summary: specs, latent scale, weight hashes."""
    meta = schema_metadata(schema)
    return {"specs": {name: json.loads(spec.to_json()) for name, spec in encoded_specs(schema).items()},
            "latent_scale": float(meta[META_LATENT_SCALE]) if META_LATENT_SCALE in meta else None,
            "vae_sha256": meta.get(META_VAE_SHA256), "encoder_sha256": meta.get(META_ENCODER_SHA256)}


def _short(sha: str | None) -> str:
    return "missing" if sha is None else f"{sha[:12]}…"


def _spec_text(spec: TensorSpec | None) -> str:
    return "missing" if spec is None else f"{list(spec.shape)} {spec.dtype}"
