"""Feature pyramid network of the official configs (``start_level=1``, ``add_extra_convs='on_output'``)."""

import keras
from keras import ops

from gflv2_keras.layers.naming import layer_name
from gflv2_keras.layers.padded_conv import PaddedConv2D


@keras.saving.register_keras_serializable(package="gflv2_keras")
class FPN(keras.layers.Layer):
    """C3..C5 → P3..P7 with ``out_channels`` each; no norm, no activation anywhere.

    * Laterals: 1x1 conv with bias on C3, C4, C5; top-down ``lat[i-1] += nearest_up2(lat[i])``.
    * Outputs: P3..P5 = 3x3 conv of each lateral; P6 = 3x3/2 conv of the **P5 output**;
      P7 = 3x3/2 conv of P6 (no ReLU in between). Strides 8, 16, 32, 64, 128.
    * Upsampling repeats pixels 2x and crops to the finer map: exact for inputs padded to /32,
      and equal to PyTorch's legacy ``nearest`` (``src = floor(dst / 2)``) for any size.

    Args:
        out_channels: channels of every output (256 officially).
        num_inputs: number of backbone levels consumed (3: C3, C4, C5).
        prefix: official module path (``"neck"``); layers are named from it by the rule of
            ``gflv2_keras.layers.naming`` (``neck-lateral_convs-0-conv``).

    Call:
        ``[C3, C4, C5]`` NHWC → ``[P3, P4, P5, P6, P7]`` NHWC.
    """

    def __init__(self, out_channels=256, num_inputs=3, prefix="neck", **kwargs):
        super().__init__(**kwargs)
        self.out_channels = out_channels
        self.num_inputs = num_inputs
        self.prefix = prefix
        self.lateral_convs = [
            PaddedConv2D(out_channels, 1, pad=0, name=layer_name(f"{prefix}.lateral_convs.{i}.conv"),
                         dtype=self.dtype_policy)
            for i in range(num_inputs)
        ]
        self.fpn_convs = [
            PaddedConv2D(
                out_channels,
                3,
                pad=1,
                strides=1 if i < num_inputs else 2,
                name=layer_name(f"{prefix}.fpn_convs.{i}.conv"),
                dtype=self.dtype_policy,
            )
            for i in range(num_inputs + 2)
        ]

    def call(self, features):
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, features)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + upsample_nearest_2x(laterals[i], ops.shape(laterals[i - 1]))
        outputs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]
        for conv in self.fpn_convs[len(laterals):]:
            outputs.append(conv(outputs[-1]))
        return outputs

    def get_config(self):
        return {
            **super().get_config(),
            "out_channels": self.out_channels,
            "num_inputs": self.num_inputs,
            "prefix": self.prefix,
        }


def upsample_nearest_2x(x, target_shape):
    """Repeat each pixel 2x2 and crop to ``target_shape[1:3]`` (``[B, h, w, C]`` → ``[B, H, W, C]``)."""
    up = ops.repeat(ops.repeat(x, 2, axis=1), 2, axis=2)
    return up[:, : target_shape[1], : target_shape[2], :]
