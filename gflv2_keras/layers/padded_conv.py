"""Convolution with PyTorch's explicit symmetric zero padding."""

import keras


@keras.saving.register_keras_serializable(package="gflv2_keras")
class PaddedConv2D(keras.layers.Conv2D):
    """``Conv2D`` that zero-pads ``pad`` pixels on every side, then convolves with 'valid'.

    TF's 'same' padding puts the extra pixel at the bottom/right for stride 2 on even
    inputs, which shifts every sample by one pixel relative to PyTorch; explicit symmetric
    padding reproduces ``nn.Conv2d(padding=pad)`` exactly. Kernel layout ``(kh, kw, in/groups, out)``.

    Args:
        pad: int, pixels of zero padding on each side (``kernel_size // 2`` by default).
        All other arguments are those of ``keras.layers.Conv2D`` (``padding`` is forced to 'valid').
    """

    def __init__(self, filters, kernel_size, pad=None, **kwargs):
        kwargs.pop("padding", None)
        super().__init__(filters, kernel_size, padding="valid", **kwargs)
        self.pad = int(self.kernel_size[0] // 2 if pad is None else pad)

    def call(self, inputs):
        if self.pad:
            p = self.pad
            inputs = keras.ops.pad(inputs, [[0, 0], [p, p], [p, p], [0, 0]])
        return super().call(inputs)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        grow = 2 * self.pad
        return super().compute_output_shape((b, None if h is None else h + grow, None if w is None else w + grow, c))

    def get_config(self):
        return {**super().get_config(), "pad": self.pad}
