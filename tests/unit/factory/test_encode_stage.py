"""EncodeStage on tiny models: a pairs batch → one encoded row per pair, deterministic, the latent is
the VAE's scaled posterior mean, the tokens are the encoders' output in float16."""

import pyarrow as pa
import pytest
import torch

from avatar4d.data import check_compatible, decode_tensor, encode_png, encode_tensor, pairs_schema
from avatar4d.data.encoded_schema import encoded_tensor_spec, latent_scale
from avatar4d.data.schema import TensorSpec
from avatar4d.errors import UserError
from avatar4d.models.vae import VAE_PRESETS, TriplaneVAE, load_vae, save_vae
from factory.stages.encode import EncodeConfig, EncodeStage
from factory.stages.encoders import ImageEncoders

TRIPLANE = TensorSpec((4, 8, 64, 64), "float16")


def _pairs_schema(triplane: TensorSpec = TRIPLANE) -> pa.Schema:
    return pairs_schema(w_dim=8, face_params_dim=10, triplane=triplane, identity_dim=3)


def _pairs(n: int, chunk_id: str = "pairs/lego/pairs/000002", seed: int = 0, triplane: TensorSpec = TRIPLANE):
    gen = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 64, 64, generator=gen) * 2 - 1
    planes = torch.randn(n, *triplane.shape, generator=gen)
    return pa.table({
        "sample_id": [f"lego/{i:08d}" for i in range(8, 8 + n)],
        "chunk_id": [chunk_id] * n,
        "domain": ["lego"] * n,
        "image": pa.array([encode_png(image) for image in images], pa.binary()),
        "triplane": pa.array([encode_tensor(p, triplane) for p in planes], pa.large_binary()),
    }), planes.to(torch.float16)


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    torch.manual_seed(0)
    directory = tmp_path_factory.mktemp("vae") / "vae"
    save_vae(directory, TriplaneVAE(VAE_PRESETS.get("tiny")))
    return directory


@pytest.fixture(scope="module")
def stage(vae_dir):
    return EncodeStage(vae_dir, _pairs_schema(), EncodeConfig(batch_size=4, num_threads=1))


@pytest.fixture(scope="module")
def pairs():
    return _pairs(5)


@pytest.fixture(scope="module")
def encoded(stage, pairs):
    return stage(pairs[0])


def test_one_row_per_pair_with_the_same_ids(stage, pairs, encoded):
    table = pairs[0]
    assert encoded.num_rows == 5 and encoded.schema == stage.schema
    assert encoded.column("sample_id").to_pylist() == table.column("sample_id").to_pylist()
    assert set(encoded.column("chunk_id").to_pylist()) == {"encoded/lego/pairs/000002"}
    assert set(encoded.column("domain").to_pylist()) == {"lego"}
    assert set(encoded.column("vae_sha256").to_pylist()) == {stage.vae_info.weights_sha256}
    assert set(encoded.column("encoder_sha256").to_pylist()) == {stage.encoders.weights_sha256}
    assert "latent_std" not in encoded.schema.names
    check_compatible(encoded.schema, stage.schema)


def test_specs_are_the_documented_shapes(stage):
    schema = stage.schema
    assert encoded_tensor_spec(schema, "clip_tokens") == TensorSpec((5, 32), "float16")
    assert encoded_tensor_spec(schema, "dino_tokens") == TensorSpec((5, 24), "float16")
    assert encoded_tensor_spec(schema, "latent") == TensorSpec(VAE_PRESETS.get("tiny").latent_shape(), "float32")
    assert latent_scale(schema) == pytest.approx(0.3994218)


def test_latent_is_the_scaled_posterior_mean(stage, pairs, encoded, vae_dir):
    vae, _ = load_vae(vae_dir)
    with torch.no_grad():
        mean = vae.encode_triplane(pairs[1].float())  # [5, 8, 4, 8, 8]
    spec = encoded_tensor_spec(stage.schema, "latent")
    latents = torch.stack([decode_tensor(value.as_py(), spec) for value in encoded.column("latent")])
    torch.testing.assert_close(latents, mean * 0.3994218, rtol=1e-5, atol=1e-6)
    assert latents.shape[1:] == vae.config.latent_shape()


def test_tokens_are_the_encoders_output_in_float16(stage, pairs, encoded):
    from avatar4d.data import decode_pngs

    reference = ImageEncoders(stage.config.encoders)
    with torch.no_grad():
        clip, dino = reference(decode_pngs(pairs[0].column("image").to_pylist()))
    clip_spec, dino_spec = stage.clip_spec, stage.dino_spec
    stored_clip = torch.stack([decode_tensor(v.as_py(), clip_spec) for v in encoded.column("clip_tokens")])
    stored_dino = torch.stack([decode_tensor(v.as_py(), dino_spec) for v in encoded.column("dino_tokens")])
    assert stored_clip.dtype == torch.float16
    torch.testing.assert_close(stored_clip.float(), clip, rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(stored_dino.float(), dino, rtol=2e-3, atol=2e-3)


def test_deterministic_and_independent_of_batch_neighbours(stage, pairs, encoded):
    assert stage(pairs[0]).equals(encoded)
    alone = stage(pairs[0].slice(3, 1))  # row 3 alone: a batch padded with copies of itself
    for name in ("clip_tokens", "dino_tokens", "latent"):
        assert alone.column(name)[0].as_py() == encoded.column(name)[3].as_py()


def test_latent_std_column_when_asked(vae_dir, pairs, encoded):
    with_std = EncodeStage(vae_dir, _pairs_schema(), EncodeConfig(batch_size=4, num_threads=1, store_latent_std=True))
    batch = with_std(pairs[0], "encoded/custom")
    assert "latent_std" in batch.schema.names and set(batch.column("chunk_id").to_pylist()) == {"encoded/custom"}
    spec = encoded_tensor_spec(batch.schema, "latent_std")
    std = decode_tensor(batch.column("latent_std")[0].as_py(), spec)
    assert (std > 0).all() and batch.column("latent")[0] == encoded.column("latent")[0]
    with pytest.raises(Exception, match="columns differ"):
        check_compatible(encoded.schema, batch.schema)


def test_bad_inputs_are_clear_errors(vae_dir, stage, pairs):
    other = TensorSpec((4, 16, 64, 64), "float16")
    expected = r"the pairs hold triplanes \[4, 16, 64, 64\], the VAE encodes \[4, 8, 64, 64\]"
    with pytest.raises(UserError, match=expected):
        EncodeStage(vae_dir, _pairs_schema(other))
    with pytest.raises(ValueError, match="lacks columns"):
        stage(pairs[0].drop_columns(["triplane"]))
    two_chunks = pa.concat_tables([pairs[0].slice(0, 2), _pairs(2, "pairs/lego/pairs/000003")[0]])
    with pytest.raises(ValueError, match="spans 2 pairs chunks"):
        stage(two_chunks)
    with pytest.raises(ValueError, match="empty"):
        stage(pairs[0].slice(0, 0))
