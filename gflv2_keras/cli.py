"""The ``gflv2`` command: ``demo | train | evaluate | predict | export | convert | benchmark | presets | recipes``.

Each command lives in its own module exposing ``register(subparsers)``, which adds a
sub-parser whose ``func(args) -> int`` runs it. Modules are imported lazily so a command's
heavy or optional dependencies (TensorFlow, PyTorch) load only when it runs.
"""

import argparse
import importlib
import os
import sys

# command name -> module that registers it
COMMANDS = {
    "demo": "gflv2_keras.training.demo",
    "train": "gflv2_keras.training.cli",
    "evaluate": "gflv2_keras.evaluation.cli",
    "predict": "gflv2_keras.inference.cli",
    "export": "gflv2_keras.export.cli",
    "convert": "gflv2_keras.convert.cli",
    "benchmark": "gflv2_keras.benchmarks.cli",
    "presets": "gflv2_keras.presets_cli",
    "recipes": "gflv2_keras.recipes.cli",
}


def build_parser(commands=None):
    parser = argparse.ArgumentParser(prog="gflv2", description="GFocalV2 (GFLv2) object detection with Keras 3.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in commands or COMMANDS:
        try:
            module = importlib.import_module(COMMANDS[name])
        except ModuleNotFoundError as error:
            if not error.name or not error.name.startswith("gflv2_keras"):
                raise
            continue  # a command not built in this version of the package
        module.register(subparsers)
    return parser


def main(argv=None):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    argv = sys.argv[1:] if argv is None else argv
    wanted = [argv[0]] if argv and argv[0] in COMMANDS else None
    parser = build_parser(wanted)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
