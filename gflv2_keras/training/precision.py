"""Mixed-precision training: the ``--precision`` names, the Keras dtype policy scope and loss scaling.

``float32`` (default) is the official recipe. ``bfloat16`` and ``float16`` build the detector under
Keras' ``mixed_bfloat16`` / ``mixed_float16`` policies: variables stay float32, convolutions and
norms compute in the 16-bit type, and the head's final score math (sigmoid, DGQP softmax/top-k),
ATSS and the losses run in float32 (``models/gfl_head.py``, ``GFLV2Detector.compute_loss``).
float16 has 5 exponent bits, so its gradients need loss scaling: the optimiser is wrapped in
``keras.optimizers.LossScaleOptimizer`` (dynamic scale, a step with non-finite gradients is
skipped and the scale halved). bfloat16 has float32's exponent range and needs none.
"""

import contextlib

import keras

from gflv2_keras.models.precision import PRECISIONS as POLICIES  # --precision name -> Keras dtype policy


def check_precision(precision):
    """The precision name, or ``ValueError`` listing the valid ones."""
    if precision not in POLICIES:
        raise ValueError(f"train: precision must be one of {tuple(POLICIES)}, got {precision!r}")
    return precision


@contextlib.contextmanager
def dtype_policy_scope(precision):
    """Sets the global Keras dtype policy of ``precision`` while the block runs, then restores the previous one.

    Layers take the global policy when they are *constructed*, so the detector built inside the
    block computes in the policy's type for good; nothing outside the block is affected.
    """
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(POLICIES[check_precision(precision)])
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def wrap_for_precision(optimizer, precision):
    """``LossScaleOptimizer(optimizer)`` for float16, else ``optimizer`` unchanged.

    The wrapper's ``variables`` are its ``step_counter`` and ``dynamic_scale`` followed by the
    inner optimiser's (``iterations``, momentum buffers), so checkpoints (``optimizer.variables``
    by position) save and restore the loss-scale state too; its ``iterations`` is the inner one's.
    """
    if check_precision(precision) == "float16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer
