"""A real factory run (local Ray, real Lance, CPU): exact rows, decodable, regenerable from seeds;
a re-run skips everything; an incompatible existing dataset is a one-line error."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from avatar4d.data.codec import decode_png, decode_tensor
from avatar4d.data.schema import tensor_spec
from avatar4d.errors import UserError
from tests.integration.conftest import DOMAINS, read_table, small_config

pytestmark = pytest.mark.integration

N = 12


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    from factory.pipeline import run_factory

    out = tmp_path_factory.mktemp("factory") / "data"
    config = small_config(out, samples_per_domain=N)
    summary = run_factory(config, num_cpus=2, progress=False)
    return config, summary, out


def test_run_writes_exactly_the_requested_pairs(finished_run):
    config, summary, out = finished_run
    table, _ = read_table(out, "pairs", ["sample_id", "domain", "sample_index", "chunk_id"])
    ids = table.column("sample_id").to_pylist()
    assert len(ids) == len(DOMAINS) * N == summary.rows_total["pairs"] == summary.rows_committed["pairs"]
    assert len(set(ids)) == len(ids)
    assert set(ids) == {f"{d}/{i:08d}" for d in DOMAINS for i in range(N)}
    assert summary.committed_chunks == summary.planned_chunks == len(DOMAINS) * (N // 3 + 2)
    assert summary.resubmitted_chunks == 0 and summary.skipped_chunks == 0
    # start-up is measured per phase (the status line shows the same phases)
    assert set(summary.startup_phases) == {"ray", "workers", "datasets"}
    assert sum(summary.startup_phases.values()) <= summary.startup_seconds <= summary.seconds


def test_every_pair_decodes_and_matches_regeneration_from_its_seed(finished_run):
    from factory.domains import load_domains
    from factory.generators import ensure_domain_generator
    from factory.stages import SynthesizeStage

    config, _, out = finished_run
    table, schema = read_table(out, "pairs", ["sample_id", "domain", "sample_index", "seed", "w", "camera",
                                              "face_params", "image", "triplane", "generator_sha256"])
    spec = tensor_spec(schema, "triplane")
    rows = table.to_pylist()
    catalog = load_domains()
    for domain in DOMAINS:
        checkpoint = ensure_domain_generator(catalog.get(domain), Path(config.default_generator_cache),
                                             config.generator_preset, config.generator_kind)
        stage = SynthesizeStage(domain, checkpoint, config.synthesize)
        for row in (r for r in rows if r["domain"] == domain):
            image = decode_png(row["image"])
            triplane = decode_tensor(row["triplane"], spec)
            assert image.dtype == torch.uint8 and image.shape[0] == 3 and image.shape[1] == image.shape[2]
            assert tuple(triplane.shape) == spec.shape == (4, 8, 64, 64) and triplane.dtype == torch.float16
            assert torch.isfinite(triplane.float()).all()
            again = stage.regenerate(row["sample_index"], row["seed"])
            for column in ("sample_id", "w", "camera", "face_params", "image", "triplane", "generator_sha256"):
                assert again[column] == row[column], f"{row['sample_id']}: {column} differs on regeneration"


def test_multiview_rows_hold_both_sets_with_their_views(finished_run):
    config, summary, out = finished_run
    table, schema = read_table(out, "multiview", ["identity_id", "domain", "set", "views", "triplane"])
    rows = table.to_pylist()
    assert summary.rows_total["multiview"] == len(rows) == len(DOMAINS) * 2 * config.multiview_identities
    assert {(r["domain"], r["set"]) for r in rows} == {(d, s) for d in DOMAINS for s in ("dynamic", "static")}
    depth_spec = tensor_spec(schema, "depth")
    for row in rows:
        expressions = config.multiview.expressions if row["set"] == "dynamic" else 1
        assert len(row["views"]) == expressions * config.multiview.cameras
        view = row["views"][0]
        assert decode_png(view["image"]).shape[0] == 3
        assert tuple(decode_tensor(view["depth"], depth_spec).shape) == depth_spec.shape


def test_rerun_skips_committed_chunks_and_incompatible_schema_is_a_user_error(finished_run):
    from factory.pipeline import run_factory

    config, first, out = finished_run
    again = run_factory(config, num_cpus=2, progress=False)
    assert again.skipped_chunks == first.planned_chunks and again.committed_chunks == 0
    assert again.rows_total == first.rows_total and again.ray_address == ""  # nothing left: no Ray started

    # one more chunk to do (a new domain), written with fp32 planes into the fp16 dataset
    float32_planes = config.replace(domains=[*config.domains, "realistic"],
                                    synthesize=config.synthesize.replace(triplane_dtype="float32"))
    with pytest.raises(UserError, match="triplane") as error:
        run_factory(float32_planes, num_cpus=2, progress=False)
    assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="run_seed"):
        run_factory(config.replace(run_seed=1), num_cpus=2, progress=False)


def test_status_and_preview_describe_the_run(finished_run, tmp_path: Path):
    from factory.inspect import format_status, preview, status

    _, _, out = finished_run
    report = status(out)
    pairs = report["tables"]["pairs"]
    assert pairs["rows_by_domain"] == {d: N for d in sorted(DOMAINS)}
    assert pairs["triplane"] == {"shape": [4, 8, 64, 64], "dtype": "float16"}
    assert pairs["bytes"] > N * len(DOMAINS) * 4 * 8 * 64 * 64 * 2
    assert set(report["tables"]["multiview"]["rows_by_domain"]) == {f"{d}/{s}" for d in DOMAINS
                                                                     for s in ("dynamic", "static")}
    assert "pixar" in format_status(report)
    assert pairs["generators"] == {d: [pairs["fingerprint"]["domains"][d]["generator_sha256"]] for d in DOMAINS}
    sheet = preview(out, tmp_path / "sheet.png", per_domain=2)
    import numpy as np
    from PIL import Image

    with Image.open(sheet) as image:  # labelled: 4 pair rows + 2 × (image, depth) multiview rows, cells >= 160 px
        width, height = image.size
        pixels = np.asarray(image.convert("L"), dtype=np.float32)
    assert width >= 5 * 160 and height >= 8 * 160
    label_strip = pixels[: 40]  # the title and column labels: dark text on white
    assert (label_strip < 128).sum() > 200
    views, _ = read_table(out, "multiview", ["views", "set"])
    dynamic = next(row["views"] for row in views.to_pylist() if row["set"] == "dynamic")
    images = [decode_png(view["image"]).float() for view in dynamic]
    assert min((a - b).abs().mean() for i, a in enumerate(images) for b in images[i + 1:]) > 0  # no identical tiles
    card = (out / "DATASET_CARD.md").read_text()
    assert "pixar" in card and "triplane" in card and "git" in card.lower() and "pylance" in card


def test_compact_merges_fragments_and_keeps_every_row(finished_run, capsys):
    from avatar4d.cli import main

    _, summary, out = finished_run
    before, _ = read_table(out, "pairs", ["sample_id", "triplane"])
    assert main(["factory", "compact", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"pairs: {summary.rows_total['pairs']} rows, fragments {len(DOMAINS) * N // 3} → 1" in printed
    after, _ = read_table(out, "pairs", ["sample_id", "triplane"])
    assert sorted(after.to_pylist(), key=lambda r: r["sample_id"]) == sorted(before.to_pylist(),
                                                                             key=lambda r: r["sample_id"])
