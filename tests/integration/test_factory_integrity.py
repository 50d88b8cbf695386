"""Data integrity of a finished factory folder: mixing settings is refused (the fingerprint lives
in the datasets' own Lance metadata), damage is found by `factory verify`, removed by `factory
repair`, and a rerun restores exactly the rows of a clean run; a vanished table is refused loudly;
damaged folders give one-line errors everywhere; the datasets read with plain Lance, pandas and
`ray.data.read_lance` as the README shows."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from avatar4d.cli import main
from tests.integration.conftest import DOMAINS, read_table, small_config

pytestmark = pytest.mark.integration

N = 6


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    from factory.pipeline import run_factory

    out = tmp_path_factory.mktemp("integrity") / "clean"
    config = small_config(out, samples_per_domain=N, chunk_size=2)
    run_factory(config, num_cpus=2, progress=False)
    return config, out


def _copy(clean: Path, tmp_path: Path) -> Path:
    target = tmp_path / "data"
    shutil.copytree(clean, target, ignore=shutil.ignore_patterns("run.lock"))
    return target


def _rows(out: Path, table: str, key: str) -> dict[str, str]:
    data, _ = read_table(out, table, [key, "row_checksum"])
    return dict(zip(data.column(key).to_pylist(), data.column("row_checksum").to_pylist()))


def _one_line_error(capsys, argv: list[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("avatar4d: error: ") and "\n" not in err and "Traceback" not in err and ".rs:" not in err
    return err


def test_resuming_with_other_row_settings_is_refused_naming_them(clean_run, tmp_path):
    from factory.fingerprint import FingerprintMismatchError
    from factory.pipeline import run_factory

    config, clean = clean_run
    out = _copy(clean, tmp_path)
    config = config.replace(out=str(out))
    psi = config.replace(synthesize=config.synthesize.replace(truncation_psi=0.5))
    with pytest.raises(FingerprintMismatchError, match=r"synthesize.truncation_psi 0.7 → 0.5"):
        run_factory(psi, num_cpus=2, progress=False)
    shutil.rmtree(out / ".factory")  # the guard no longer depends on the state folder
    with pytest.raises(FingerprintMismatchError, match=r"run_seed 0 → 5.*samples_per_domain 6 → 9"):
        run_factory(config.replace(run_seed=5, samples_per_domain=9), num_cpus=2, progress=False)
    # a domains file that points pixar at another generator checkpoint (greek_statue's)
    other = Path(config.default_generator_cache) / "greek_statue"
    domains_file = tmp_path / "domains.yaml"
    domains_file.write_text(f"domains:\n  - {{name: pixar, kind: prompt, prompt: a 3D render, "
                            f"generator_checkpoint: {other}}}\n")
    with pytest.raises(FingerprintMismatchError, match="domain pixar generator_sha256"):
        run_factory(config.replace(domains_file=str(domains_file)), num_cpus=2, progress=False)
    assert _rows(out, "pairs", "sample_id") == _rows(clean, "pairs", "sample_id")  # nothing was written


def test_verify_finds_damage_repair_and_rerun_restore_a_clean_run(clean_run, tmp_path, capsys):
    import lance

    from factory.pipeline import run_factory
    from factory.sink import DatasetDamagedError

    config, clean = clean_run
    out = _copy(clean, tmp_path)
    pairs = lance.dataset(str(out / "pairs.lance"))
    blob_file = pairs.get_fragments()[1].data_files()[0].path
    shutil.rmtree(out / "pairs.lance" / "data" / blob_file.removesuffix(".lance"))  # a lost blob sidecar
    # noticed without reading any data: `factory status` says DAMAGED, a rerun refuses in one line
    assert main(["factory", "status", str(out)]) == 0
    assert "DAMAGED: fragment 1: blob folder" in capsys.readouterr().out
    with pytest.raises(DatasetDamagedError, match="blob folder .* is missing"):
        run_factory(config.replace(out=str(out)), num_cpus=2, progress=False)
    multiview = lance.dataset(str(out / "multiview.lance"))
    truncated = out / "multiview.lance" / "data" / multiview.get_fragments()[0].data_files()[0].path
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 3])

    assert main(["factory", "verify", str(out)]) == 1
    report = capsys.readouterr().out
    assert "pairs: 1 DAMAGED" in report and "multiview: 1 DAMAGED" in report and "repair" in report
    assert "Not found" in report and ".rs:" not in report
    assert "factory verify" in _one_line_error(capsys, ["factory", "status", str(out)])  # truncated multiview
    assert main(["factory", "verify", str(clean)]) == 0
    capsys.readouterr()

    assert main(["factory", "repair", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "pairs: removed 1 damaged fragment(s), 2 rows" in printed and "multiview: removed 1" in printed
    assert main(["factory", "verify", str(out)]) == 0
    capsys.readouterr()
    summary = run_factory(config.replace(out=str(out)), num_cpus=2, progress=False)
    assert summary.committed_chunks == 2  # exactly the removed chunks were regenerated
    for table, key in (("pairs", "sample_id"), ("multiview", "identity_id")):
        assert _rows(out, table, key) == _rows(clean, table, key)


def test_a_vanished_table_is_refused_loudly_and_damaged_manifests_are_one_line(clean_run, tmp_path, capsys):
    from factory.guards import TableVanishedError
    from factory.pipeline import run_factory

    config, clean = clean_run
    out = _copy(clean, tmp_path)
    shutil.rmtree(out / "pairs.lance" / "_versions")
    (out / ".factory" / "last-run.json").unlink()  # noticed from the table itself, not the state folder
    with pytest.raises(TableVanishedError, match="manifests"):
        run_factory(config.replace(out=str(out)), num_cpus=2, progress=False)
    assert any((out / "pairs.lance" / "data").glob("*.lance"))  # nothing deleted as an "orphan"
    assert main(["factory", "status", str(out)]) == 0
    assert "pairs: NO COMMITTED VERSION" in capsys.readouterr().out

    garbage = _copy(clean, tmp_path / "garbage")
    for manifest in (garbage / "pairs.lance" / "_versions").glob("*.manifest"):
        manifest.write_bytes(b"\x00garbage" * 8)
    for argv in (["factory", "status", str(garbage)], ["factory", "compact", str(garbage)],
                 ["factory", "preview", str(garbage), "--out", str(tmp_path / "sheet.png")]):
        assert "is damaged" in _one_line_error(capsys, argv)
    assert "cannot write" in _one_line_error(capsys, ["factory", "preview", str(clean), "--out",
                                                       "/proc/avatar4d-sheet.png"])


def test_readme_reading_recipes_work(clean_run):
    """The README's "Reading the datasets" snippets: plain Lance, pandas, ray.data.read_lance."""
    import lance
    import ray

    from avatar4d.data import LanceShardReader, decode_png, decode_tensor, tensor_spec

    _, out = clean_run
    pairs = lance.dataset(str(out / "pairs.lance"))
    table = pairs.to_table(columns=["sample_id", "image", "triplane"], blob_handling="all_binary", limit=4)
    spec = tensor_spec(pairs.schema, "triplane")
    assert tuple(decode_tensor(table.column("triplane")[0].as_py(), spec).shape) == spec.shape
    assert decode_png(table.column("image")[0].as_py()).shape[0] == 3
    frame = pairs.to_table(columns=["sample_id", "domain", "seed"]).to_pandas()
    assert frame.groupby("domain").size().to_dict() == {d: N for d in DOMAINS}
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        dataset = ray.data.read_lance(str(out / "pairs.lance"), columns=["sample_id", "triplane"],
                                      scanner_options={"blob_handling": "all_binary"})
        rows = dataset.take(2)
    finally:
        ray.shutdown()
    assert len(rows[0]["triplane"]) == spec.nbytes
    batch = next(iter(LanceShardReader(str(out / "pairs.lance"), batch_size=2, columns=["triplane"])))
    assert tuple(batch["triplane"].shape) == (2, *spec.shape)
