"""The ``gflv2`` command: ``demo | train | evaluate | predict | export | convert | benchmark | presets | recipes``.

Each command lives in its own module exposing ``register(subparsers)``, which adds a
sub-parser whose ``func(args) -> int`` runs it. Only the module of the command being run is
imported, so ``gflv2 --help`` starts without TensorFlow and a command's heavy or optional
dependencies (TensorFlow, PyTorch) load only when it runs.

Start-up is quiet: TensorFlow's C++ and absl logging (CUDA probing on CPU-only machines, oneDNN
notices) is silenced unless ``--verbose`` is given. A user's mistake (a missing file, a bad
value, a refused overwrite, a full disk) ends in one ``gflv2 COMMAND: error: ...`` message on
stderr and exit code 2; Ctrl-C ends with exit code 130. ``--verbose`` shows the traceback too.
"""

import argparse
import importlib
import os
import sys
import tempfile

# command name -> (module that registers it, one-line summary for ``gflv2 --help``)
COMMANDS = {
    "demo": ("gflv2_keras.training.demo", "train a tiny detector on synthetic shapes (CPU) and evaluate it"),
    "train": ("gflv2_keras.training.cli", "train a detector with a recipe"),
    "evaluate": ("gflv2_keras.evaluation.cli", "COCO bbox AP of a preset on an annotation file"),
    "predict": ("gflv2_keras.inference.cli", "detect objects in images; writes drawn pictures and JSON"),
    "export": ("gflv2_keras.export.cli", "export a detector for serving (TF Serving SavedModel)"),
    "convert": ("gflv2_keras.convert.cli", "convert an official GFocalV2 PyTorch checkpoint (.pth) into a preset folder"),
    "benchmark": ("gflv2_keras.benchmarks.cli", "time inference like the official tools/benchmark.py"),
    "presets": ("gflv2_keras.presets_cli", "list the built-in presets"),
    "recipes": ("gflv2_keras.recipes.cli", "list the named training recipes"),
}
NEEDS_TENSORFLOW = ("demo", "train", "evaluate", "predict", "export", "convert", "benchmark")
VERBOSE_FLAG = "--verbose"
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A mistake in what the user asked for; the CLI prints the message, without a traceback."""


# What the CLI reports as one line: mistakes in arguments, files and data, and the
# operating system refusing a write (permissions, full disk) — never a programming error.
USER_ERRORS = (UserError, ValueError, OSError)


def build_parser(command=None):
    """The ``gflv2`` parser; only ``command``'s module is imported (``None``: none of them)."""
    parser = argparse.ArgumentParser(
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


def quiet_tensorflow():
    """Import TensorFlow without its start-up noise (CUDA probing, oneDNN and CPU-feature notices).

    ``TF_CPP_MIN_LOG_LEVEL`` silences TensorFlow's logging once absl is initialised, but the lines
    written while TensorFlow loads come before that, straight to file descriptor 2: they are
    captured during the import and shown only if the import fails.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def split_verbose(argv):
    """``(argv without --verbose, whether it was given)``."""
    argv = list(argv)
    return [a for a in argv if a != VERBOSE_FLAG], VERBOSE_FLAG in argv


def main(argv=None):
    argv, verbose = split_verbose(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in COMMANDS else None
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_USER_ERROR
    return run_command(command, lambda: args.func(args), verbose)


def run_command(command, run, verbose=False):
    """Runs ``run()`` (a command's body) quietly; a user's mistake becomes one line and exit code 2."""
    try:
        if command in NEEDS_TENSORFLOW and not verbose:
            quiet_tensorflow()
        return int(run() or 0)
    except KeyboardInterrupt:
        print(f"gflv2 {command}: interrupted", file=sys.stderr)
        if verbose:
            raise
        return EXIT_INTERRUPTED
    except USER_ERRORS as error:
        if verbose:
            raise
        print(f"gflv2 {command}: error: {_message(error)}", file=sys.stderr)
        return EXIT_USER_ERROR


def _message(error):
    if isinstance(error, OSError) and error.filename and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error) or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
