"""The ``gflv2`` command: ``demo | train | evaluate | predict | export | convert | benchmark | presets | recipes``.

Each command lives in its own module exposing ``register(subparsers)``, which adds a
sub-parser whose ``func(args) -> int`` runs it. Only the module of the command being run is
imported, so ``gflv2 --help`` starts without TensorFlow and a command's heavy or optional
dependencies (TensorFlow, PyTorch) load only when it runs.

A sub-parser may also set ``precheck(args)``: the checks that need no TensorFlow (values, paths,
output refusals), run before the body, so a mistake is reported at once. Start-up is quiet and a
user's mistake is one ``gflv2 COMMAND: error: ...`` line with exit code 2 (``utils.cli.run_command``,
argparse's own errors too: ``utils.cli.CommandLineParser``); ``--verbose`` shows TensorFlow's logs
and the traceback.
"""

import importlib
import sys

from gflv2_keras.utils.cli import EXIT_USER_ERROR, VERBOSE_FLAG, CommandLineParser, run_command, split_verbose

# command name -> (module that registers it, one-line summary for ``gflv2 --help``)
COMMANDS = {
    "demo": ("gflv2_keras.training.demo", "train a tiny detector on synthetic shapes (CPU) and evaluate it"),
    "train": ("gflv2_keras.training.cli", "train a detector with a recipe"),
    "evaluate": ("gflv2_keras.evaluation.cli", "COCO bbox AP of a preset on an annotation file"),
    "predict": ("gflv2_keras.inference.cli", "detect objects in images; writes drawn pictures and JSON"),
    "export": ("gflv2_keras.export.cli", "export a detector: TF Serving SavedModel, ONNX, LiteRT or OpenVINO"),
    "convert": ("gflv2_keras.convert.cli", "convert an official GFocalV2 PyTorch checkpoint (.pth) into a preset folder"),
    "benchmark": ("gflv2_keras.benchmarks.cli", "inference / training speed against the GEMM floors and PyTorch"),
    "presets": ("gflv2_keras.presets_cli", "list the built-in presets"),
    "recipes": ("gflv2_keras.recipes.cli", "list the named training recipes"),
    "show-data": ("gflv2_keras.data.show_cli", "draw the ground truth of a sample of images and labels.png (box statistics)"),
}


def build_parser(command=None):
    """The ``gflv2`` parser; only ``command``'s module is imported (``None``: none of them)."""
    parser = CommandLineParser(
        prog="gflv2",
        description="GFocalV2 (GFLv2) object detection with Keras 3.",
        epilog=f"Add {VERBOSE_FLAG} anywhere to see TensorFlow's start-up logs and full tracebacks.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, summary) in COMMANDS.items():
        if name == command:
            importlib.import_module(module_name).register(subparsers)
        else:
            subparsers.add_parser(name, help=summary, add_help=False)
    return parser


def main(argv=None):
    argv, verbose = split_verbose(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    precheck = getattr(args, "precheck", None)
    return run_command(command, lambda: args.func(args), verbose,
                       check=(lambda: precheck(args)) if precheck else None)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
