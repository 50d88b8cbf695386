"""`factory encode` on a real tiny factory dataset (2 domains × 8 pairs, chunks of 4, written by
SynthesizeStage + the exactly-once sink): one encoded row per pair, resuming after a crash adds no
duplicates, latents decode to the VAE's shapes, a Ray run agrees with the local one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from avatar4d.data.encoded_reader import EncodedShardReader, load_null_condition
from avatar4d.data.encoded_schema import encoded_uri
from avatar4d.errors import UserError
from avatar4d.models.vae import VAE_PRESETS, TriplaneVAE, load_vae, save_vae

pytestmark = pytest.mark.integration

DOMAINS = ["pixar", "greek_statue"]


class Crash(RuntimeError):
    """Raised from on_commit: the driver dies right after a commit."""


@pytest.fixture(scope="module")
def factory_data(tmp_path_factory) -> Path:
    """pairs.lance of 2 domains × 8 samples (4 chunks of 4) and a tiny VAE checkpoint."""
    from factory.chunks import plan_chunks
    from factory.domains import load_domains
    from factory.generators import ensure_domain_generator
    from factory.sink import LanceCommitter, write_fragments
    from factory.stages import SynthesizeConfig, SynthesizeStage

    root = tmp_path_factory.mktemp("encode")
    catalog = load_domains()
    stages = {d: SynthesizeStage(d, ensure_domain_generator(catalog.get(d), root / "generators"),
                                 SynthesizeConfig(batch_size=4)) for d in DOMAINS}
    uri = str(root / "data" / "pairs.lance")
    committer = None
    for chunk in plan_chunks(domains=DOMAINS, samples_per_domain=8, multiview_identities=0, chunk_size=4,
                             multiview_chunk_size=1, run_seed=3):
        stage = stages[chunk.domain]
        committer = committer or LanceCommitter(uri, stage.schema)
        committer.commit([chunk.chunk_id], write_fragments(uri, stage(chunk), stage.schema))
    torch.manual_seed(0)
    save_vae(root / "vae", TriplaneVAE(VAE_PRESETS.get("tiny")))
    return root


def _copy(factory_data: Path, tmp_path: Path) -> Path:
    data = tmp_path / "data"
    shutil.copytree(factory_data / "data" / "pairs.lance", data / "pairs.lance")
    return data


def _config(data: Path, vae: Path, **overrides):
    from factory.encode import EncodeRunConfig
    from factory.stages.encode import EncodeConfig

    return EncodeRunConfig(data=str(data), vae_checkpoint=str(vae), encode=EncodeConfig(batch_size=4, num_threads=1),
                           num_cpus_per_actor=1.0, **overrides)


def _encoded_rows(data: Path) -> dict[str, list]:
    import lance

    return lance.dataset(encoded_uri(str(data))).to_table(columns=["sample_id", "chunk_id"]).to_pydict()


def _pair_ids(data: Path) -> list[str]:
    import lance

    return sorted(lance.dataset(str(data / "pairs.lance")).to_table(columns=["sample_id"]).column(0).to_pylist())


def test_local_run_is_exactly_once_and_resumes_after_a_crash(factory_data, tmp_path):
    from factory.encode import run_encode
    from factory.sink import write_fragments

    data, vae_dir = _copy(factory_data, tmp_path), factory_data / "vae"
    config = _config(data, vae_dir)

    def crash(event):
        raise Crash(event.chunk_ids)

    with pytest.raises(Crash):
        run_encode(config, local=True, progress=False, on_commit=crash)
    first = _encoded_rows(data)
    assert len(first["sample_id"]) == 4 and len(set(first["chunk_id"])) == 1
    # a worker that wrote its fragments but died before the commit leaves an orphan
    import lance
    stray = lance.dataset(encoded_uri(str(data)))
    write_fragments(encoded_uri(str(data)), stray.to_table().slice(0, 2), stray.schema)

    summary = run_encode(config, local=True, progress=False)
    assert (summary.skipped_chunks, summary.committed_chunks, summary.rows_committed) == (1, 3, 12)
    assert summary.orphans_removed >= 1 and summary.rows_total == 16
    rows = _encoded_rows(data)
    assert sorted(rows["sample_id"]) == _pair_ids(data)  # one row per pair, no duplicates
    assert sorted(set(rows["chunk_id"])) == [f"encoded/{d}/pairs/{i:06d}" for d in sorted(DOMAINS) for i in (0, 1)]

    again = run_encode(config, local=True, progress=False)
    assert (again.committed_chunks, again.skipped_chunks, again.rows_total) == (0, 4, 16)

    # the stored latent is the VAE's scaled posterior mean and decodes to the pairs' triplane shape
    vae, _ = load_vae(vae_dir)
    reader = EncodedShardReader(encoded_uri(str(data)), batch_size=16)
    batch = next(iter(reader))
    assert batch["latent"].shape == (16, *vae.config.latent_shape()) and batch["latent"].dtype == torch.float32
    assert batch["clip_tokens"].shape == (16, 5, 32) and batch["clip_tokens"].dtype == torch.float16
    assert batch["dino_tokens"].shape == (16, 5, 24)
    pairs = lance.dataset(str(data / "pairs.lance"))
    from avatar4d.data.reader import decode_batch

    wanted = batch["sample_id"][:3]
    quoted = ", ".join(f"'{sample_id}'" for sample_id in wanted)
    source = pairs.scanner(columns=["sample_id", "triplane"], filter=f"sample_id IN ({quoted})",
                           blob_handling="all_binary").to_table()
    order = [source.column("sample_id").to_pylist().index(sample_id) for sample_id in wanted]
    triplanes = decode_batch(source.combine_chunks().to_batches()[0], pairs.schema)["triplane"][order]
    with torch.no_grad():
        expected = vae.encode_triplane(triplanes.float()) * vae.config.latent_scale_factor
        decoded = vae.decode_triplane(batch["latent"][:3] / vae.config.latent_scale_factor)
    torch.testing.assert_close(batch["latent"][:3], expected, rtol=1e-5, atol=1e-6)
    assert decoded.shape == triplanes.shape == (3, 4, 8, 64, 64)
    null = load_null_condition(data)
    assert null["clip_tokens"].shape == (5, 32) and null["dino_tokens"].shape == (5, 24)


def test_resume_with_another_vae_is_refused(factory_data, tmp_path):
    from factory.encode import run_encode

    data = _copy(factory_data, tmp_path)
    run_encode(_config(data, factory_data / "vae"), local=True, progress=False)
    torch.manual_seed(1)
    save_vae(tmp_path / "vae2", TriplaneVAE(VAE_PRESETS.get("tiny")))
    with pytest.raises(UserError, match="holds latents of another VAE") as error:
        run_encode(_config(data, tmp_path / "vae2"), local=True, progress=False)
    assert "\n" not in str(error.value)


def test_ray_run_writes_the_same_rows_as_a_local_run(factory_data, tmp_path):
    import lance

    from factory.encode import run_encode

    ray_data, local_data = _copy(factory_data, tmp_path / "ray"), _copy(factory_data, tmp_path / "local")
    summary = run_encode(_config(ray_data, factory_data / "vae"), num_cpus=2, progress=False)
    assert summary.ray_address and summary.rows_total == 16 and summary.committed_chunks == 4
    run_encode(_config(local_data, factory_data / "vae"), local=True, progress=False)
    columns = ["sample_id", "clip_tokens", "dino_tokens", "latent", "vae_sha256", "encoder_sha256"]
    from_ray, from_local = (lance.dataset(encoded_uri(str(d))).to_table(columns=columns).sort_by("sample_id")
                            for d in (ray_data, local_data))
    assert from_ray.column("sample_id").to_pylist() == from_local.column("sample_id").to_pylist()
    for name in ("vae_sha256", "encoder_sha256"):
        assert from_ray.column(name).to_pylist() == from_local.column(name).to_pylist()
    reader_ray = next(iter(EncodedShardReader(encoded_uri(str(ray_data)), batch_size=16)))
    reader_local = next(iter(EncodedShardReader(encoded_uri(str(local_data)), batch_size=16)))
    order_ray = sorted(range(16), key=lambda i: reader_ray["sample_id"][i])
    order_local = sorted(range(16), key=lambda i: reader_local["sample_id"][i])
    for name in ("clip_tokens", "dino_tokens", "latent"):
        torch.testing.assert_close(reader_ray[name][order_ray].float(), reader_local[name][order_local].float(),
                                   rtol=1e-3, atol=1e-3)


def test_cli_handler_encodes_locally(factory_data, tmp_path, capsys):
    import argparse

    from factory.encode_cli import register_encode

    data = _copy(factory_data, tmp_path)
    parser = argparse.ArgumentParser()
    register_encode(parser.add_subparsers())
    args = parser.parse_args(["encode", "--data", str(data), "--vae-checkpoint", str(factory_data / "vae"), "--local",
                              "--no-progress", "--store-latent-std", "--batch-size", "8"])
    assert args.handler(args) == 0
    assert "4 chunks committed (0 already done), 16 encoded rows" in capsys.readouterr().out
    batch = next(iter(EncodedShardReader(encoded_uri(str(data)), batch_size=4, columns=["latent", "latent_std"])))
    assert batch["latent_std"].shape == batch["latent"].shape and (batch["latent_std"] > 0).all()
    from factory.inspect import format_status, status

    report = status(data)  # `factory status` covers encoded.lance (it used to list pairs and multiview only)
    encoded = report["tables"]["encoded"]
    assert encoded["rows"] == 16 and encoded["rows_by_domain"] == {"greek_statue": 8, "pixar": 8}
    assert encoded["committed_chunks"] == 4 and len(encoded["encoding"]["avatar4d.vae_sha256"]) == 64
    text = format_status(report)
    assert "encoded: 16 rows" in text and "vae_sha256" in text
