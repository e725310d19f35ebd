"""Normalisation layers with PyTorch numerics (epsilon 1e-5) and the official freezing rules."""

import keras


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

    def call(self, inputs, training=None, mask=None):
        if self.frozen_stats:
            training = False
        return super().call(inputs, training=training, mask=mask)

    def get_config(self):
        return {**super().get_config(), "frozen_stats": self.frozen_stats}


def group_norm(name, groups=32):
    """GroupNorm with PyTorch's epsilon (1e-5), as the official head's ``gn``."""
    return keras.layers.GroupNormalization(groups=groups, epsilon=1e-5, name=name)
