"""`avatar4d factory …` user mistakes give one-line errors (exit 1) before any Ray starts; `--help`
documents every option; `factory domains` lists the catalog."""

from __future__ import annotations

import pytest

from avatar4d.cli import main

pytestmark = pytest.mark.integration


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("avatar4d: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_binary_files_huge_sizes_and_unreachable_clusters_are_one_line(capsys, tmp_path):
    import time

    binary = tmp_path / "binary.yaml"
    binary.write_bytes(bytes(range(256)) * 4)
    out = tmp_path / "d"
    assert "not a UTF-8 text file" in _error(capsys, ["factory", "run", "--out", str(out), "--config", str(binary)])
    assert "not a UTF-8 text file" in _error(capsys, ["factory", "run", "--out", str(out), "--domains-file",
                                                      str(binary)])
    assert "not a UTF-8 text file" in _error(capsys, ["factory", "domains", "--domains-file", str(binary)])
    begin = time.perf_counter()
    assert "limit of 100,000,000" in _error(capsys, ["factory", "run", "--out", str(out), "--samples-per-domain",
                                                     "1000000000000"])
    assert time.perf_counter() - begin < 5  # refused before anything is planned or started
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    assert "cannot reach a Ray cluster" in _error(capsys, ["factory", "run", "--out", str(out), "--address",
                                                           f"127.0.0.1:{port}"])
    assert not out.exists()  # a failed --address run leaves no .factory/run.lock behind


def test_unknown_domain_is_one_line_with_suggestions(capsys, tmp_path):
    err = _error(capsys, ["factory", "run", "--out", str(tmp_path / "d"), "--domains", "pixr", "greek_statue"])
    assert "unknown domain 'pixr'" in err and "pixar" in err


def test_bad_paths_are_one_line_errors(capsys, tmp_path):
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a folder")
    assert "is not a folder" in _error(capsys, ["factory", "run", "--out", str(a_file)])
    assert "no such folder" in _error(capsys, ["factory", "status", str(tmp_path / "missing")])
    assert "holds no factory dataset" in _error(capsys, ["factory", "status", str(tmp_path)])
    assert "holds no factory dataset" in _error(capsys, ["factory", "verify", str(tmp_path)])
    assert "PNG" in _error(capsys, ["factory", "preview", str(tmp_path), "--out", str(tmp_path / "sheet.jpg")])
    assert "domain file not found" in _error(capsys, ["factory", "domains", "--domains-file", str(tmp_path / "x.yaml")])
    assert "must be >= 0" in _error(capsys, ["factory", "run", "--out", str(tmp_path / "d"),
                                             "--samples-per-domain", "-1"])
    assert "config file not found" in _error(capsys, ["factory", "run", "--out", str(tmp_path / "d"),
                                                           "--config", str(tmp_path / "missing.yaml")])


def test_help_explains_each_run_option(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["factory", "run", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--recipe", "--out", "--domains", "--samples-per-domain", "--multiview-identities", "--address",
                   "--seed", "--actors-per-domain", "--num-cpus", "--config", "--no-progress"):
        assert option in text
    assert "./data" in text and "ray://" in text


def test_domains_lists_the_papers_28_domains(capsys):
    assert main(["factory", "domains"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 28
    assert lines[0].split()[0] == "pixar" and any(line.split()[0] == "realistic" for line in lines)


def test_user_domains_file_adds_a_domain(capsys, tmp_path):
    domains = tmp_path / "domains.yaml"
    domains.write_text("domains:\n  - {name: claymation, kind: prompt, prompt: a clay figure portrait}\n")
    assert main(["factory", "domains", "--domains-file", str(domains)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 29 and lines[-1].split()[:2] == ["claymation", "prompt"]


def test_recipes_tiny_default_and_paper_scale(tmp_path):
    from avatar4d.config import ConfigError
    from factory.recipes import FactoryConfig, get_recipe

    tiny, paper = get_recipe("tiny"), get_recipe("paper")
    assert FactoryConfig() == tiny and tiny.generator_preset == "tiny" and tiny.num_gpus_per_actor == 0
    assert len(tiny.domains) * tiny.samples_per_domain == 96 and tiny.multiview_identities == 2
    assert len(paper.domains) == len(set(paper.domains)) == 28 and paper.samples_per_domain == 20_000
    assert paper.generator_preset == "paper" and 0 < paper.num_gpus_per_actor < 1
    saved = tmp_path / "paper.yaml"
    saved.write_text(paper.to_yaml())
    assert FactoryConfig.load(saved) == paper
    with pytest.raises(ConfigError, match="unknown factory recipe 'huge'; choose from tiny, paper"):
        get_recipe("huge")
    with pytest.raises(ConfigError, match="domains listed twice: pixar"):
        tiny.replace(domains=["pixar", "pixar"])
