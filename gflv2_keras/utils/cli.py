"""What every ``gflv2`` command shares: checks before TensorFlow, quiet start-up, one-line errors.

``run_command`` runs a command in three steps:

1. its ``check`` (argument values, input paths, output refusals that need no TensorFlow), so a
   mistake costs a fraction of a second instead of TensorFlow's 15-25 s start-up;
2. its body, with TensorFlow's start-up noise hidden: ``TF_CPP_MIN_LOG_LEVEL=3`` unless set
   (hides the C++ INFO / WARNING / ERROR lines, among them ``cuInit`` failures on machines without
   a GPU), and whatever TensorFlow's import writes to file descriptor 2 before its logging is
   set up (the oneDNN ``TF_ENABLE_ONEDNN_OPTS`` notice, CPU-feature notices) is captured and
   shown only if the import fails. TensorFlow is not imported up front: the capture wraps its
   first import, wherever the body does it (``quiet_imports``), so the checks at the start of a
   body also run before TensorFlow loads;
3. a user's mistake (``UserError``, ``ValueError``, ``OSError``: a missing file, a bad value, a
   refused overwrite, a full disk) ends in one ``gflv2 COMMAND: error: ...`` line on stderr and
   exit code 2, Ctrl-C in exit code 130. ``--verbose`` shows TensorFlow's logs and the traceback.

``CommandLineParser`` makes argparse's own errors (an unknown option, a bad ``--image-size``)
one line too. Nothing here imports TensorFlow.
"""

import argparse
import contextlib
import importlib.abc
import importlib.util
import os
import sys
import tempfile

VERBOSE_FLAG = "--verbose"
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
# Modules whose first import runs with file descriptor 2 captured (TensorFlow is imported by Keras too).
NOISY_MODULES = ("tensorflow",)


class UserError(Exception):
    """A mistake in what the user asked for; the CLI prints the message, without a traceback."""


# What the CLI reports as one line: mistakes in arguments, files and data, and the
# operating system refusing a write (permissions, full disk) — never a programming error.
USER_ERRORS = (UserError, ValueError, OSError)


class CommandLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line, ``PROG: error: MESSAGE (see PROG --help)``, exit code 2.

    Its sub-parsers (``add_subparsers().add_parser``) are of the same class.
    """

    def error(self, message):
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def stdout_is_terminal():
    """Whether stdout is an interactive terminal; when not (a file, a pipe), commands print no progress bars.

    Keras' ``Progbar`` redraws its line with ``\\b``, ``\\r`` and colour codes whenever it runs on a
    POSIX system, terminal or not, so a log file gets them unless ``fit`` runs with ``verbose=2``
    (one line per epoch) and other progress bars are off.
    """
    return bool(getattr(sys.stdout, "isatty", None) and sys.stdout.isatty())


def fit_verbosity():
    """``fit``'s ``verbose``: ``"auto"`` (the progress bar) on a terminal, else 2 (one line per epoch)."""
    return "auto" if stdout_is_terminal() else 2


@contextlib.contextmanager
def captured_stderr():
    """Captures what is written to file descriptor 2 (C++ included) in the block; replays it if the block raises."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def quiet_tensorflow():
    """Imports TensorFlow now, without its start-up noise (see the module docstring)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules:
        return
    with captured_stderr():
        import tensorflow  # noqa: F401


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader of a module with file descriptor 2 captured, then steps aside."""

    def __init__(self, loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = self.loader  # the module keeps its real loader
        module.__spec__.loader = self.loader
        with captured_stderr():
            self.loader.exec_module(module)


class _QuietImportFinder(importlib.abc.MetaPathFinder):
    """First in ``sys.meta_path``: finds the real spec of a ``NOISY_MODULES`` name and wraps its loader."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in NOISY_MODULES:
            return None
        uninstall_finder(self)  # once: the wrapped import is the one that loads it
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _QuietLoader(spec.loader)
        return spec


def uninstall_finder(finder):
    if finder in sys.meta_path:
        sys.meta_path.remove(finder)


@contextlib.contextmanager
def quiet_imports(enabled=True):
    """In the block, the first import of TensorFlow runs with its start-up noise hidden (module docstring)."""
    if not enabled:
        yield
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if all(name in sys.modules for name in NOISY_MODULES):
        yield
        return
    finder = _QuietImportFinder()
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        uninstall_finder(finder)


def split_verbose(argv):
    """``(argv without --verbose, whether it was given)``."""
    argv = list(argv)
    return [a for a in argv if a != VERBOSE_FLAG], VERBOSE_FLAG in argv


def run_command(command, run, verbose=False, prog=None, check=None):
    """Runs ``check()`` then ``run()`` (a command's body) quietly; a user's mistake becomes one line and exit code 2.

    Args:
        command: the command's name (``gflv2 COMMAND`` in messages).
        run: the body, ``() -> exit code`` (None: 0).
        verbose: show TensorFlow's logs and tracebacks.
        prog: names the program in the error line instead (scripts pass their own).
        check: ``() -> None``, the checks that need no TensorFlow; a ``USER_ERRORS`` it raises is
            reported like the body's, before anything is imported or written.
    """
    prog = prog or f"gflv2 {command}"
    try:
        if check is not None:
            check()
        with quiet_imports(enabled=not verbose):
            return int(run() or 0)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        if verbose:
            raise
        return EXIT_INTERRUPTED
    except USER_ERRORS as error:
        if verbose:
            raise
        print(f"{prog}: error: {_message(error)}", file=sys.stderr)
        return EXIT_USER_ERROR


def _message(error):
    if isinstance(error, OSError) and error.filename and error.strerror:
        return f"{error.filename}: {error.strerror}"
    return str(error) or type(error).__name__
