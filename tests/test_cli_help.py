"""Every command describes itself and every option says what it does (`gflv2 CMD --help`, recipe scripts)."""

import argparse
import importlib.util
from pathlib import Path

import pytest

from gflv2_keras.cli import COMMANDS, build_parser

RECIPE_SCRIPTS = sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.py"))


def _command_parser(command):
    parser = build_parser(command)
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices[command]


def _undocumented(parser):
    """Options and positionals of ``parser`` without a help text (``-h`` aside)."""
    missing = []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if not (action.help and action.help.strip()) or action.help == argparse.SUPPRESS:
            missing.append("/".join(action.option_strings) or action.dest)
    return missing


def test_there_are_recipe_scripts():
    assert len(RECIPE_SCRIPTS) >= 7


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_a_description_and_every_option_a_help(command):
    parser = _command_parser(command)
    assert parser.description and len(parser.description.strip()) > 20, f"gflv2 {command} has no description"
    assert _undocumented(parser) == [], f"gflv2 {command}: options without help"


@pytest.mark.parametrize("script", RECIPE_SCRIPTS, ids=lambda p: p.stem)
def test_every_recipe_script_option_has_a_help(script):
    from gflv2_keras.training.cli import recipe_parser

    spec = importlib.util.spec_from_file_location(f"recipe_script_{script.stem}", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # defines RECIPE; the command line runs only under __main__
    parser = recipe_parser(module.RECIPE)
    assert parser.prog == f"python recipes/{script.stem}.py"
    assert parser.description
    assert _undocumented(parser) == []


def test_the_size_convention_is_in_the_help_of_every_sized_command():
    """``--image-size H W`` everywhere a size exists, with the bounds; old spellings named as such."""
    for command, old in (("train", None), ("export", "--input-size"), ("benchmark", "--size")):
        text = " ".join(_command_parser(command).format_help().split())
        assert "--image-size H W" in text, command
        assert "32..8192" in text, command
        if old:
            assert f"{old} is the old spelling" in text, command
    train_help = " ".join(_command_parser("train").format_help().split())
    assert "800 1333 and 1333 800 are the same" in train_help
    assert "a multiple of 32" in " ".join(_command_parser("export").format_help().split())
