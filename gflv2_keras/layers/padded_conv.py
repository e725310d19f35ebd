"""Convolution with PyTorch's explicit symmetric zero padding."""

import keras
from keras import ops


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
        # object.__setattr__: a plain reference, not a tracked sublayer (no duplicate weights).
        object.__setattr__(self, "_folded_norm", None)

    @property
    def folded_norm(self):
        """The ``BatchNorm`` folded into this conv by :meth:`fold_norm`, or None."""
        return self._folded_norm

    def fold_norm(self, norm):
        """Fold a following frozen ``BatchNorm`` into this conv (``None`` unfolds); inference only.

        While folded, ``call`` convolves with ``kernel * s`` and adds ``beta - mean * s``
        (``s = gamma / sqrt(var + eps)``, computed in float32 from the live variables, so weights
        are never changed and saving is unaffected) and ``norm`` passes its input through. Exact
        up to rounding for a BN with frozen statistics (the official ``norm_eval``).
        """
        if norm is not None and not norm.frozen_stats:
            raise ValueError(f"{self.name}: only a BatchNorm with frozen statistics can be folded ({norm.name})")
        if self._folded_norm is not None:
            self._folded_norm.folded = False
        object.__setattr__(self, "_folded_norm", norm)
        if norm is not None:
            norm.folded = True

    def convolution_op(self, inputs, kernel):
        """``Conv2D``'s convolution; on TensorFlow a strided 1x1 one (without a folded BatchNorm) is a
        strided slice ``inputs[:, ::s, ::s, :]`` then a stride-1 convolution.

        The same numbers (a 1x1 kernel with 'valid' padding reads exactly the pixels at multiples of
        the stride, after this layer's own padding), without TensorFlow 2.21's oneDNN
        ``Conv2DBackpropFilter`` for a strided 1x1 kernel, which corrupts the heap on some shapes
        (the nano preset's ``layer2.0.downsample``, 8 -> 16 channels on an even 80 x 104 map, aborts
        a training step with ``double free or corruption``). Other backends, other kernels and a
        conv with a folded BatchNorm (inference only: no gradient) keep the strided convolution.
        The variables are unchanged.
        """
        if self._slices_stride():
            rows, cols = self.strides
            inputs = inputs[:, ::rows, ::cols, :]
            return ops.conv(inputs, kernel, strides=1, padding=self.padding, dilation_rate=self.dilation_rate,
                            data_format=self.data_format)  # fmt: skip
        return super().convolution_op(inputs, kernel)

    def _slices_stride(self):
        return (
            keras.backend.backend() == "tensorflow"
            and self._folded_norm is None
            and tuple(self.kernel_size) == (1, 1)
            and tuple(self.strides) != (1, 1)
            and tuple(self.dilation_rate) == (1, 1)
            and self.data_format == "channels_last"
        )

    def call(self, inputs):
        if self.pad:
            p = self.pad
            inputs = ops.pad(inputs, [[0, 0], [p, p], [p, p], [0, 0]])
        norm = self._folded_norm
        if norm is None:
            return super().call(inputs)
        scale, offset = norm.folded_affine()
        kernel = ops.cast(ops.cast(self.kernel, "float32") * scale, self.compute_dtype)
        if self.use_bias:
            offset = offset + ops.cast(self.bias, "float32") * scale
        outputs = self.convolution_op(inputs, kernel)
        return outputs + ops.cast(offset, outputs.dtype)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        grow = 2 * self.pad
        return super().compute_output_shape((b, None if h is None else h + grow, None if w is None else w + grow, c))

    def get_config(self):
        return {**super().get_config(), "pad": self.pad}
