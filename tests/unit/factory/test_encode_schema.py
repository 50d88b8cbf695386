"""The encoded table's schema: columns, metadata specs, chunk ids, compatibility checks."""

import json

import pytest

from avatar4d.data.encoded_schema import (
    check_same_encoding,
    describe_encoding,
    encoded_chunk_id,
    encoded_schema,
    encoded_specs,
    encoded_tensor_spec,
    encoded_uri,
    latent_scale,
    null_condition_path,
)
from avatar4d.data.schema import SchemaMismatchError, TensorSpec, check_compatible, schema_table

CLIP = TensorSpec((257, 1280), "float16")
DINO = TensorSpec((257, 768), "float16")
LATENT = TensorSpec((8, 4, 32, 32), "float32")


def _schema(**overrides):
    args = dict(clip_tokens=CLIP, dino_tokens=DINO, latent=LATENT, latent_scale=0.3994218, vae_sha256="a" * 64,
                encoder_sha256="b" * 64)
    args.update(overrides)
    return encoded_schema(**args)


def test_columns_and_metadata():
    import pyarrow as pa

    schema = _schema()
    assert schema.names == ["sample_id", "chunk_id", "domain", "clip_tokens", "dino_tokens", "latent", "vae_sha256",
                            "encoder_sha256"]
    assert schema.field("latent").type == pa.large_binary() and schema_table(schema) == "encoded"
    assert encoded_specs(schema) == {"clip_tokens": CLIP, "dino_tokens": DINO, "latent": LATENT}
    assert latent_scale(schema) == 0.3994218
    # paper sizes: 657,920 + 394,752 + 131,072 bytes per pair
    assert (CLIP.nbytes, DINO.nbytes, LATENT.nbytes) == (657_920, 394_752, 131_072)
    with_std = _schema(latent_std=True)
    assert "latent_std" in with_std.names and encoded_tensor_spec(with_std, "latent_std") == LATENT
    summary = describe_encoding(with_std)
    assert json.dumps(summary) and summary["vae_sha256"] == "a" * 64
    assert summary["specs"]["latent"]["shape"] == [8, 4, 32, 32]


def test_chunk_ids_and_paths():
    assert encoded_chunk_id("pairs/pixar/pairs/000007") == "encoded/pixar/pairs/000007"
    assert encoded_chunk_id("custom/x") == "encoded/custom/x"
    with pytest.raises(ValueError, match="not a factory chunk id"):
        encoded_chunk_id("nochunk")
    assert encoded_uri("/d/") == "/d/encoded.lance" and null_condition_path("/d").name.endswith(".safetensors")


def test_same_encoding_check_names_the_difference():
    base = _schema()
    check_compatible(base, _schema())
    check_same_encoding(base, _schema())
    with pytest.raises(SchemaMismatchError, match="other VAE weights"):
        check_same_encoding(base, _schema(vae_sha256="c" * 64))
    with pytest.raises(SchemaMismatchError, match="image encoder weights"):
        check_same_encoding(base, _schema(encoder_sha256="c" * 64))
    with pytest.raises(SchemaMismatchError, match=r"clip_tokens differs: existing \[257, 1280\] float16"):
        check_same_encoding(base, _schema(clip_tokens=TensorSpec((5, 32), "float16")))
    with pytest.raises(SchemaMismatchError, match="latent scale"):
        check_same_encoding(base, _schema(latent_scale=0.5))
    with pytest.raises(SchemaMismatchError, match="columns differ"):
        check_compatible(base, _schema(latent_std=True))


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="tokens, channels"):
        _schema(clip_tokens=TensorSpec((257,), "float16"))
    with pytest.raises(ValueError, match="latent spec"):
        _schema(latent=TensorSpec((8, 32, 32), "float32"))
    with pytest.raises(ValueError, match="no tensor spec"):
        encoded_tensor_spec(_schema(), "triplane")
    with pytest.raises(SchemaMismatchError, match="latent_std"):
        encoded_tensor_spec(_schema(), "latent_std")
    with pytest.raises(ValueError, match="may not override"):
        _schema(extra_metadata={"avatar4d.latent": "x"})
