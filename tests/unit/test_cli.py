"""The ``avatar4d`` console script: help texts, one-line errors, the embedded-default demo."""

import subprocess
import sys

import pytest

from avatar4d.cli import main


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "avatar4d.cli", *args], capture_output=True, text=True, timeout=300)


def test_top_level_help_lists_every_command():
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("demo", "convert", "eval", "factory", "train", "serve"):
        assert command in result.stdout


@pytest.mark.parametrize("command", ["demo", "convert", "eval", "factory", "train", "serve"])
def test_each_command_explains_itself(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert len(capsys.readouterr().out.split()) > 15


@pytest.mark.parametrize("command", ["factory", "train", "serve", "eval"])
def test_commands_not_built_yet_say_so_in_one_line(command):
    result = run_cli(command)
    assert result.returncode == 2
    assert result.stderr.startswith("avatar4d: error:") and "not built yet" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_bad_arguments_are_one_line_errors(tmp_path):
    result = run_cli("demo", "--identities", "0", "--out", str(tmp_path))
    assert result.returncode == 2 and "--identities must be positive" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_writes_a_png_grid(tmp_path):
    from PIL import Image

    assert main(["demo", "--out", str(tmp_path), "--identities", "1", "--cameras", "2", "--resolution", "48"]) == 0
    image = Image.open(tmp_path / "procedural_heads.png")
    # rows = identities × (neutral + each expression), columns = cameras; 2 px padding
    from avatar4d.geometry.morphable import default_head_model

    rows = 1 + len(default_head_model().expression_names)
    assert image.size == (2 * 50 + 2, rows * 50 + 2)
    pixels = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert len(pixels) > 50  # shaded, not blank
