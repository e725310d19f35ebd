"""``GFLV2Backbone``: the image encoder (ResNet / ResNeXt / Res2Net) and the FPN, as a keras-hub ``Backbone``.

The split follows keras-hub's RetinaNet: the backbone ends with the feature pyramid, so
``keras_hub.models.Backbone.from_preset(DIR)`` gives a model that turns images into the five
pyramid levels any dense head can use, and the task (``GFLV2ObjectDetector``) adds the GFL head.
"""

import keras
import keras_hub
from keras import ops

from gflv2_keras.models.backbones import build_backbone
from gflv2_keras.models.fpn import FPN

# Side of the zero image that creates every weight at construction: keras-hub loads a backbone's
# weights right after building it from its config, so its variables must exist by then.
BUILD_SIZE = 64


@keras.saving.register_keras_serializable(package="gflv2_keras")
class GFLV2Backbone(keras_hub.models.Backbone):
    """Image encoder + FPN of the official GFLv2 models: ``[B, H, W, 3]`` → ``[P3, P4, P5, P6, P7]``.

    Args:
        encoder: the image encoder as plain data ``{"type": "resnet" | "resnext" | "res2net",
            **arguments}`` (``models.backbones``), e.g. ``{"type": "resnet", "depth": 50}``
            (frozen stem and stage 1, frozen BatchNorm statistics, as the official configs).
        fpn_channels: channels of every pyramid level (256 officially).
        dtype: Keras dtype policy of every layer (e.g. ``"mixed_bfloat16"``).

    Call:
        ``images``: float32 ``[B, H, W, 3]`` normalised RGB (``GFLV2ImageConverter``), ``H`` and
        ``W`` multiples of 32 for the exact official sizes. Returns the list of the five pyramid
        levels NHWC, strides 8, 16, 32, 64, 128, ``fpn_channels`` each.

    Layer names are the official module paths with "-" for "." (``backbone-layer1-0-bn1``,
    ``neck-...``; ``gflv2_keras.layers.naming``), so converted checkpoints map one to one.

    Example:
        >>> backbone = GFLV2Backbone({"type": "resnet", "depth": 18, "base_channels": 8}, fpn_channels=16)
        >>> [tuple(p.shape) for p in backbone(keras.ops.zeros((1, 64, 64, 3)))][:2]
        [(1, 8, 8, 16), (1, 4, 4, 16)]
    """

    def __init__(self, encoder, fpn_channels=256, dtype=None, **kwargs):
        super().__init__(dtype=dtype, **kwargs)
        self.encoder_config = dict(encoder)
        self.fpn_channels = int(fpn_channels)
        policy = self.dtype_policy
        self.image_encoder = build_backbone({**self.encoder_config, "dtype": policy})
        self.feature_pyramid = FPN(self.fpn_channels, num_inputs=3, name="neck", dtype=policy)
        self(ops.zeros((1, BUILD_SIZE, BUILD_SIZE, 3)))

    def call(self, images, training=None):
        return self.feature_pyramid(self.image_encoder(images, training=training))

    def conv_norm_pairs(self):
        """The encoder's ``(convolution, BatchNorm)`` pairs (``models.fast_inference`` folds them)."""
        return self.image_encoder.conv_norm_pairs()

    def get_config(self):
        return {**super().get_config(), "encoder": self.encoder_config, "fpn_channels": self.fpn_channels}
