"""The ``gflv2`` entry point: fast quiet help, one-line errors, exit codes."""

import argparse
import subprocess
import sys

import pytest

from gflv2_keras.cli import COMMANDS, build_parser, main
from gflv2_keras.utils.cli import EXIT_USER_ERROR


def _gflv2(*args):
    return subprocess.run(
        [sys.executable, "-c", "import sys; from gflv2_keras.cli import main; sys.exit(main())", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in __import__("os").environ.items() if not k.startswith("TF_CPP")},
    )


def test_help_lists_every_command_without_importing_tensorflow():
    probe = (
        "import sys; from gflv2_keras.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('LOADED', sorted(m for m in ('tensorflow', 'keras', 'torch') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert "LOADED []" in result.stdout
    for command in ("demo", "train", "evaluate", "predict", "export", "convert", "benchmark", "presets", "recipes"):
        assert f"    {command}" in result.stdout


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_builds_its_parser(command):
    """Each command's own options register without clashes (a duplicated flag only shows at run time)."""
    parser = build_parser(command)
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert subparsers.choices[command].format_help().startswith(f"usage: gflv2 {command}")


def test_no_command_s_help_imports_tensorflow():
    """``gflv2 CMD --help`` is instant and quiet: building any command's parser loads no TensorFlow."""
    probe = (
        "import sys; from gflv2_keras.cli import build_parser; build_parser(sys.argv[1]); "
        "print('LOADED', sorted(m for m in ('tensorflow', 'keras', 'torch') if m in sys.modules))"
    )
    for command in COMMANDS:
        result = subprocess.run([sys.executable, "-c", probe, command], capture_output=True, text=True, timeout=120)
        assert "LOADED []" in result.stdout, (command, result.stdout, result.stderr[-2000:])


def test_a_user_mistake_is_one_quiet_line_and_exit_code_2(tmp_path):
    result = _gflv2("train", "--recipe", "no_such_recipe", "--data-root", str(tmp_path))
    assert result.returncode == EXIT_USER_ERROR
    assert len(result.stderr.strip().splitlines()) == 1, f"more than one line on stderr:\n{result.stderr}"
    assert result.stderr.startswith("gflv2 train: error: Unknown recipe 'no_such_recipe'")
    assert "Traceback" not in result.stderr and "cuda" not in result.stderr.lower()


def test_verbose_shows_the_traceback(tmp_path):
    result = _gflv2("train", "--verbose", "--recipe", "no_such_recipe", "--data-root", str(tmp_path))
    assert result.returncode != 0 and "Traceback" in result.stderr


def test_an_os_error_is_reported_with_its_file(tmp_path, capsys, monkeypatch):
    import gflv2_keras.presets_cli as presets_cli

    def refuse(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "locked"))

    monkeypatch.setattr(presets_cli, "run", refuse)
    assert main(["presets"]) == EXIT_USER_ERROR
    assert capsys.readouterr().err.strip() == f"gflv2 presets: error: {tmp_path / 'locked'}: Permission denied"
