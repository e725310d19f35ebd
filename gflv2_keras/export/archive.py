"""The one way this package writes a SavedModel, and the Keras ``Model.export`` contract.

``write_saved_model(endpoints, directory)`` is what every SavedModel of the package goes
through: the TF Serving version (``export.saved_model``), the ``TFSMLayer`` archive and the
intermediate SavedModel the LiteRT converter reads (``export.formats``). It uses public APIs
only (``keras.export.ExportArchive``, ``tf.function`` graphs):

* the endpoints are traced inside ``force_portable()``, so deformable convolutions take their
  portable keras-ops path, and a graph that still holds a ``GflDeform*`` custom op (which TF
  Serving, ONNX, LiteRT and OpenVINO cannot load) is refused before anything is written;
* nothing is ``track()``-ed: the archive then stores exactly the variables its endpoints use,
  as the ``tf.Variable`` each ``keras.Variable`` holds, so each weight is written once
  (``archive.track(model)`` would also record the ``keras.Variable`` wrappers and write every
  weight twice, keras-team/keras#23553; the endpoints need no lookup table or other asset that
  only ``track`` would find).

``keras_export(detector, filepath)`` is ``keras.Model.export`` with an input signature that
accepts any image size (the default would lock it to the size the model was built at).

``reported_write_errors(target)`` turns a write the file system refuses (a full disk, a quota,
a read-only or forbidden folder), which TensorFlow and the converters report as their own
multi-line errors (``ResourceExhaustedError`` ...), into one ``OSError`` naming the export.
"""

import contextlib
import errno

import keras

try:
    from gflv2_keras.layers.deform_conv2d import force_portable
except ImportError:  # a build without deformable convolutions has nothing to force
    force_portable = contextlib.nullcontext

CUSTOM_OP_PREFIX = "GflDeform"
# The operating system's refusals to write, as errno values and as the words in an error text.
WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG, errno.EACCES, errno.EPERM}
WRITE_ERROR_WORDS = ("No space left on device", "Disk quota exceeded", "Read-only file system",
                     "File too large", "Permission denied")  # fmt: skip
# ``detector(x)``'s input: normalised, zero-padded float32 RGB images of any size.
KERAS_INPUT_SIGNATURE = (keras.InputSpec(shape=(None, None, None, 3), dtype="float32"),)


def graph_op_types(function):
    """Every op type of a traced function: its graph and the function library it calls."""
    graph_def = function.graph.as_graph_def()
    types = {node.op for node in graph_def.node}
    for library_function in graph_def.library.function:
        types.update(node.op for node in library_function.node_def)
    return types


def refuse_custom_ops(op_types):
    """``RuntimeError`` naming every ``GflDeform*`` op in ``op_types`` (none: returns)."""
    custom = sorted(op for op in op_types if op.startswith(CUSTOM_OP_PREFIX))
    if custom:
        raise RuntimeError(
            f"the exported graph contains custom op(s) {custom}, which TF Serving and the other runtimes "
            "cannot load; deformable convolutions must be traced with their portable implementation"
        )


def build_archive(endpoints):
    """A ``keras.export.ExportArchive`` with ``endpoints`` and their traced functions.

    Args:
        endpoints: ``{name: (fn, input_signature)}`` in order; the first is also exported as
            ``serving_default`` unless an endpoint has that name (Keras' rule).

    Returns:
        ``(archive, {name: concrete function})``, traced inside ``force_portable()`` and
        checked by ``refuse_custom_ops``.
    """
    if not endpoints:
        raise ValueError("a SavedModel needs at least one endpoint")
    archive = keras.export.ExportArchive()
    traced = {}
    with force_portable():
        for name, (fn, input_signature) in endpoints.items():
            function = archive.add_endpoint(name, fn, input_signature=list(input_signature))
            traced[name] = function.get_concrete_function()  # the trace write_out reuses
    refuse_custom_ops(set().union(*(graph_op_types(f) for f in traced.values())))
    return archive, traced


def write_saved_model(endpoints, directory):
    """Trace ``endpoints`` (``build_archive``) and write the SavedModel into ``directory``.

    ``directory`` may exist (empty: e.g. the staging folder of ``utils.files.publish_directory``).
    Returns the set of op types of the written graphs.
    """
    archive, traced = build_archive(endpoints)
    with force_portable():
        archive.write_out(str(directory), verbose=False)
    return set().union(*(graph_op_types(f) for f in traced.values()))


@contextlib.contextmanager
def reported_write_errors(target, what="export"):
    """Re-raise a refused write (full disk, quota, read-only, permission) as one-line ``OSError``.

    Wrap the call that publishes ``target`` (``utils.files.publish_directory``, which has by
    then removed its staging folder, so nothing partial is left). TensorFlow's
    ``ResourceExhaustedError``/``PermissionDeniedError`` (a SavedModel's variables) and errors of
    other writers whose text names such a refusal become ``OSError("TARGET: cannot write the
    export: REASON; nothing was written")``; every other error passes through unchanged.
    """
    import tensorflow as tf

    try:
        yield
    except (tf.errors.ResourceExhaustedError, tf.errors.PermissionDeniedError) as error:
        raise OSError(_write_error_message(target, what, error.message)) from None
    except FileExistsError:
        raise
    except (OSError, tf.errors.OpError, RuntimeError) as error:
        code = getattr(error, "errno", None)
        text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        if code in WRITE_ERRNOS or any(words in text for words in WRITE_ERROR_WORDS):
            raise OSError(_write_error_message(target, what, text)) from None
        raise


def _write_error_message(target, what, reason):
    lines = [line.strip() for line in str(reason).splitlines() if line.strip()]
    named = [line for line in lines if any(words in line for words in WRITE_ERROR_WORDS)]
    reason = (named or lines or [""])[0]
    return f"{target}: cannot write the {what}: {reason}; nothing was written"


def keras_export(detector, filepath, format="tf_saved_model", input_signature=None, **kwargs):
    """``keras.Model.export`` of ``detector(x)`` for images of any size (the Keras contract).

    Keras' own default signature is the shape the model was built with (e.g. ``[None, 64, 64,
    3]``); here it is ``[None, None, None, 3]`` float32, the normalised, zero-padded images
    ``detector(x)`` takes (``H``, ``W`` multiples of 32 for the exact official sizes). The
    endpoint (``"serve"`` in a SavedModel) returns ``detector(x)``'s dict: ``"confidence" [B, N,
    C']`` and ``"box_logits" [B, N, 4(R+1)]``. Traced with the frozen BatchNorms folded (exact
    up to rounding) and the portable deformable convolutions, as every other export.

    Args:
        detector: a ``GFLV2Detector`` (built here if needed).
        filepath: where Keras writes the artifact.
        format: any format of ``keras.Model.export`` (``"tf_saved_model"``, ``"onnx"``,
            ``"openvino"``, ``"litert"``).
        input_signature: Keras' argument; ``None``: ``KERAS_INPUT_SIGNATURE``.
        **kwargs: passed to ``keras.Model.export``.
    """
    from gflv2_keras.models.fast_inference import folded_norms

    if not detector.built:
        detector.build_for_inference()
    if input_signature is None:
        input_signature = list(KERAS_INPUT_SIGNATURE)
    with force_portable(), folded_norms(detector):
        return keras.Model.export(detector, filepath, format=format, input_signature=input_signature, **kwargs)

