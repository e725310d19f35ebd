"""Normalisation layers with PyTorch numerics (epsilon 1e-5) and the official freezing rules."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="gflv2_keras")
class BatchNorm(keras.layers.BatchNormalization):
    """BatchNorm with PyTorch's epsilon (1e-5) whose statistics can be frozen (``norm_eval``).

    With ``frozen_stats=True`` the layer always normalises with its moving mean/variance and
    never updates them, even in training, while ``gamma``/``beta`` stay trainable unless the
    layer itself is frozen (``trainable=False``). This is the official ``norm_eval=True``.

    Args:
        frozen_stats: bool, use moving statistics in training too.
        epsilon: defaults to 1e-5 (PyTorch), not the Keras 1e-3.
    """

    def __init__(self, frozen_stats=True, epsilon=1e-5, momentum=0.9, **kwargs):
        super().__init__(epsilon=epsilon, momentum=momentum, **kwargs)
        self.frozen_stats = bool(frozen_stats)
        self.folded = False  # set by ``PaddedConv2D.fold_norm``: the conv applies this layer

    def folded_affine(self):
        """``(s, beta - mean * s)`` float32 ``[C]`` with ``s = gamma / sqrt(moving_var + eps)``."""
        f32 = lambda v: ops.cast(v, "float32")  # noqa: E731
        scale = f32(self.gamma) / ops.sqrt(f32(self.moving_variance) + self.epsilon)
        return scale, f32(self.beta) - f32(self.moving_mean) * scale

    def call(self, inputs, training=None, mask=None):
        if self.folded:
            return inputs
        if self.frozen_stats:
            training = False
        return super().call(inputs, training=training, mask=mask)

    def get_config(self):
        return {**super().get_config(), "frozen_stats": self.frozen_stats}


def group_norm(name, groups=32, dtype=None):
    """GroupNorm with PyTorch's epsilon (1e-5), as the official head's ``gn``; ``dtype``: its policy."""
    return keras.layers.GroupNormalization(groups=groups, epsilon=1e-5, name=name, dtype=dtype)
