"""What every ``gflv2`` command shares: quiet start-up and one-line errors.

``run_command`` runs a command's body: TensorFlow is imported without its start-up noise
(unless ``--verbose``), a user's mistake (``UserError``, ``ValueError``, ``OSError``: a missing
file, a bad value, a refused overwrite, a full disk) ends in one ``gflv2 COMMAND: error: ...``
line on stderr and exit code 2, and Ctrl-C in exit code 130. ``--verbose`` shows the traceback.
"""

import os
import sys
import tempfile

# Commands that import TensorFlow (quietly, before they run).
NEEDS_TENSORFLOW = ("demo", "train", "evaluate", "predict", "export", "convert", "benchmark")
VERBOSE_FLAG = "--verbose"
EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A mistake in what the user asked for; the CLI prints the message, without a traceback."""


# What the CLI reports as one line: mistakes in arguments, files and data, and the
# operating system refusing a write (permissions, full disk) — never a programming error.
USER_ERRORS = (UserError, ValueError, OSError)


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


def run_command(command, run, verbose=False, prog=None):
    """Runs ``run()`` (a command's body) quietly; a user's mistake becomes one line and exit code 2.

    ``prog`` names the program in that line (default ``gflv2 COMMAND``; scripts pass their own).
    """
    prog = prog or f"gflv2 {command}"
    try:
        if command in NEEDS_TENSORFLOW and not verbose:
            quiet_tensorflow()
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
