"""A learnable scalar multiplier (the per-level ``Scale`` of the official head)."""

import keras


@keras.saving.register_keras_serializable(package="gflv2_keras")
class Scale(keras.layers.Layer):
    """Multiplies its input by one trainable scalar ``scale`` (initialised to ``initial_value``).

    Args:
        initial_value: float, the starting value (1.0 in the official head).

    Example:
        >>> y = Scale(1.0)(keras.ops.ones((1, 4, 4, 68)))
    """

    def __init__(self, initial_value=1.0, **kwargs):
        super().__init__(**kwargs)
        self.initial_value = float(initial_value)

    def build(self, input_shape):
        self.scale = self.add_weight(
            name="scale", shape=(), initializer=keras.initializers.Constant(self.initial_value)
        )

    def call(self, inputs):
        return inputs * keras.ops.cast(self.scale, inputs.dtype)

    def get_config(self):
        return {**super().get_config(), "initial_value": self.initial_value}
