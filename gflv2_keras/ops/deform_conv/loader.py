"""Loading the compiled deformable-convolution op and registering its gradient.

``load_deform_conv_op()`` returns the module made by ``tf.load_op_library`` (with
``gfl_deform_conv2d`` and ``gfl_deform_conv2d_grad``) or None, logging why once. The op is
CPU-only, float32/float64, has no XLA kernel and is not differentiable twice.
"""

import logging
import threading

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_module = None
_build_failure = None  # reason of a failed build/load, so it is not retried on every call
_logged = set()
_last_reason = None


def _log_once(reason):
    global _last_reason
    _last_reason = reason
    if reason not in _logged:
        _logged.add(reason)
        logger.warning("GflDeformConv2d custom op unavailable: %s", reason)


def _register_gradient(module):
    import tensorflow as tf

    def _gfl_deform_conv2d_grad(op, grad):
        grads = module.gfl_deform_conv2d_grad(
            grad, *op.inputs,
            strides=op.get_attr("strides"),
            padding=op.get_attr("padding"),
            dilations=op.get_attr("dilations"),
            groups=op.get_attr("groups"),
            deform_groups=op.get_attr("deform_groups"),
            modulated=op.get_attr("modulated"),
        )
        return list(grads)

    try:
        tf.RegisterGradient("GflDeformConv2d")(_gfl_deform_conv2d_grad)
    except KeyError:  # already registered in this process (e.g. the loader state was reset)
        pass


def load_deform_conv_op(build_if_missing=True):
    """Returns the loaded op module, or None (with a logged reason) if it cannot be had.

    Args:
        build_if_missing: compile the op (about a minute) when no library is cached for this
            TensorFlow version. With False, a missing library just returns None.
    """
    global _module, _build_failure
    with _lock:
        if _module is not None:
            return _module
        if _build_failure is not None:
            _log_once(_build_failure)
            return None
        try:
            import tensorflow as tf

            from gflv2_keras.ops.deform_conv import build
        except ImportError as e:
            _log_once(f"TensorFlow is not importable ({e})")
            return None
        path = build.library_path()
        if not path.exists():
            if not build_if_missing:
                _log_once(f"not built for TF {tf.__version__} (expected {path}); "
                          "run `python -m gflv2_keras.ops.deform_conv.build`")
                return None
            try:
                path = build.build_deform_conv_op(verbose=True)
            except (build.CompilerNotFoundError, build.BuildError, OSError) as e:
                _build_failure = f"build failed: {e}"
                _log_once(_build_failure)
                return None
        try:
            module = tf.load_op_library(str(path))
        except Exception as e:  # tf raises NotFoundError / OSError variants for bad libraries
            _build_failure = f"loading {path} failed: {e}"
            _log_once(_build_failure)
            return None
        _register_gradient(module)
        _module = module
        return _module


def unavailable_reason():
    """Why the last attempt to load the op returned None (a string), or None."""
    return _last_reason


def deform_conv_op_available(build_if_missing=False):
    """True if the custom op can be used (by default without compiling it)."""
    return load_deform_conv_op(build_if_missing=build_if_missing) is not None
