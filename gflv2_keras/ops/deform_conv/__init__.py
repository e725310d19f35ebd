"""TensorFlow C++ custom op for mmcv-compatible deformable convolution (CPU).

TensorFlow only: the op is a ``tf.load_op_library`` kernel, so it serves the TensorFlow Keras
backend alone; on JAX and PyTorch ``DeformConv2D`` runs its portable keras-ops path and never
loads or builds this op.

Build with ``python -m gflv2_keras.ops.deform_conv.build`` (or
``gflv2_keras.ops.deform_conv.build.build_deform_conv_op()``); load with
``load_deform_conv_op()``. The Keras layer ``gflv2_keras.layers.deform_conv2d.DeformConv2D``
uses it through ``implementation="custom_op"`` or ``"auto"``.
"""

# `build` is deliberately not imported here so that `python -m ...deform_conv.build` runs cleanly.
from gflv2_keras.ops.deform_conv.loader import deform_conv_op_available, load_deform_conv_op

__all__ = ["deform_conv_op_available", "load_deform_conv_op"]
