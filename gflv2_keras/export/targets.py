"""Where ``gflv2 export`` writes: the format names and the target folder, refused when it exists.

Nothing here imports TensorFlow: ``gflv2 export`` checks the target before TensorFlow loads (its
``precheck``), and again once it holds the target's lock (``utils.locks.hold_beside``): an export
that finished there in between is not replaced either.
"""

from pathlib import Path

from gflv2_keras.utils.cli import UserError

FORMATS = ("saved_model", "onnx", "litert", "openvino")


def export_target(output, fmt, version=1):
    """The folder an export of format ``fmt`` writes (``UserError`` for an unknown format or ``--output``).

    Args:
        output: ``--output``: for ``saved_model`` the model base folder ``DIR/MODEL_NAME``, else
            the export folder.
        fmt: a name of ``FORMATS``.
        version: ``saved_model``'s version folder number (an int >= 0).

    Returns:
        ``Path``: ``OUTPUT/VERSION`` (a TF Serving model version) for ``saved_model``, else ``OUTPUT``.
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown --format {fmt!r}; valid: {', '.join(FORMATS)}")
    output = Path(output)
    if fmt != "saved_model":
        return output
    if version < 0:
        raise UserError(f"--version must be >= 0, got {version}")
    if not output.resolve().name:
        raise UserError(f"--output must name the model folder (DIR/MODEL_NAME), got {str(output)!r}")
    return output / str(version)


def check_export_target(output, fmt, version=1, overwrite=False):
    """``export_target``, refused (``UserError``) when it exists and ``overwrite`` is false."""
    target = export_target(output, fmt, version)
    if target.exists() and not overwrite:
        other = "--version" if fmt == "saved_model" else "--output"
        raise UserError(f"{target} already exists; choose another {other} or pass --overwrite")
    return target
