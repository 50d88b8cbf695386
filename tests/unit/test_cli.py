"""The ``avatar4d`` console script: help texts, one-line errors, the embedded-default demo."""

import subprocess
import sys

import pytest

from avatar4d.cli import main
from avatar4d.errors import EXIT_UNAVAILABLE


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


@pytest.mark.parametrize("command", ["serve", "eval"])
def test_commands_not_built_yet_say_so_in_one_line(command):
    result = run_cli(command)
    assert result.returncode == EXIT_UNAVAILABLE == 69
    assert result.stderr.startswith("avatar4d: error:") and "not built yet" in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_bad_arguments_are_one_line_errors(tmp_path):
    result = run_cli("demo", "--identities", "0", "--out", str(tmp_path))
    assert result.returncode == 1 and "--identities must be positive" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_writes_procedural_and_generated_grids(tmp_path):
    from PIL import Image

    from avatar4d.commands.demo import DEMO_EXPRESSIONS

    args = ["demo", "--out", str(tmp_path), "--identities", "2", "--cameras", "3", "--resolution", "48"]
    assert main(args) == 0
    rows = 2 * len(DEMO_EXPRESSIONS)  # identities × expressions; columns = cameras; 2 px padding
    procedural = Image.open(tmp_path / "procedural_heads.png").convert("RGB")
    assert procedural.size == (3 * 50 + 2, rows * 50 + 2)
    assert len(procedural.getcolors(maxcolors=1 << 20)) > 50  # shaded, not blank
    generated = Image.open(tmp_path / "generated_heads.png").convert("RGB")
    assert generated.size == (3 * 66 + 2, rows * 66 + 2)  # tiny generator: 64 px images
    assert len(generated.getcolors(maxcolors=1 << 20)) > 500
    first = tmp_path / "first.png"
    first.write_bytes((tmp_path / "generated_heads.png").read_bytes())
    assert main(args) == 0  # seeded: the same images again
    assert (tmp_path / "generated_heads.png").read_bytes() == first.read_bytes()


def test_demo_loads_a_generator_checkpoint(tmp_path):
    import torch

    from avatar4d.models.next3d import GENERATOR_PRESETS, Next3DGenerator
    from avatar4d.models.next3d.checkpoint import save_generator

    torch.manual_seed(3)
    save_generator(tmp_path / "g", Next3DGenerator(GENERATOR_PRESETS.get("tiny")))
    assert main(["demo", "--out", str(tmp_path / "o"), "--identities", "1", "--cameras", "1",
                 "--resolution", "32", "--generator", str(tmp_path / "g")]) == 0
    assert (tmp_path / "o" / "generated_heads.png").is_file()
    result = run_cli("demo", "--out", str(tmp_path / "o2"), "--generator", str(tmp_path / "missing"))
    assert result.returncode == 1 and "checkpoint folder not found" in result.stderr


@pytest.mark.parametrize("argv", [["--help"], ["train", "vae", "--help"], ["train", "dit", "--help"],
                                  ["factory", "run", "--help"], ["convert", "next3d-pkl", "--help"]])
def test_help_does_not_import_torch(argv):
    """`--help` is instant: neither torch nor Ray is imported to print it (was 1.8-2.4 s here)."""
    code = ("import sys\nfrom avatar4d.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n"
            "    assert e.code == 0\nheavy = [m for m in ('torch', 'ray', 'deepspeed', 'mlflow') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_global_options_work_after_the_subcommand(tmp_path, capsys):
    from avatar4d.cli import build_parser

    args = build_parser(["train", "vae"]).parse_args(["train", "vae", "-v", "--debug"])
    assert args.verbose == 1 and args.debug
    args = build_parser(["train", "vae"]).parse_args(["-vv", "train", "vae"])
    assert args.verbose == 2 and not args.debug
    with pytest.raises(ValueError):  # --debug after the sub-command re-raises the user error
        main(["train", "vae", "--data", str(tmp_path / "missing"), "--debug"])


def test_exit_codes_distinguish_usage_user_errors_and_unavailable(tmp_path, capsys):
    with pytest.raises(SystemExit) as usage:
        main(["train", "vae", "--no-such-option"])
    assert usage.value.code == 2
    assert main(["train", "vae", "--data", str(tmp_path / "missing")]) == 1
    assert main(["serve"]) == EXIT_UNAVAILABLE


@pytest.mark.parametrize("argv", [["convert", "next3d-pkl", "--help"], ["convert", "avatarartist", "--help"],
                                  ["train", "vae", "--help"], ["factory", "run", "--help"]])
def test_help_has_no_empty_defaults(argv, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    out = capsys.readouterr().out
    assert "(default: None)" not in out and "(default: False)" not in out
