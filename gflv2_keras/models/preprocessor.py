"""The keras-hub preprocessing of GFLv2: ``GFLV2ImageConverter`` and ``GFLV2ObjectDetectorPreprocessor``.

keras-hub's ``ImageConverter`` resizes to a fixed size (cropping or padding to an aspect ratio);
the official GFLv2 test pipeline instead resizes keeping the aspect ratio into
``(long_max, short_max)``, normalises with the ImageNet mean and std and zero-pads the bottom and
right to a multiple of 32 (``models.preprocessing``, which does the arithmetic). The converter is
that pipeline as a keras-hub layer, so a preset folder carries it (``preprocessor.json``) and
``keras_hub.models.ObjectDetectorPreprocessor.from_preset(DIR)`` gives it back.
"""

import keras
import keras_hub
from keras import ops

from gflv2_keras.models import preprocessing
from gflv2_keras.models.backbone import GFLV2Backbone
from gflv2_keras.ops.box_formats import convert_boxes, validate_bounding_box_format


@keras.saving.register_keras_serializable(package="gflv2_keras")
class GFLV2ImageConverter(keras_hub.layers.ImageConverter):
    """Official test preprocessing: keep-ratio resize, ``(x - mean) / std``, zero pad to /32.

    Args:
        image_scale: ``(long_max, short_max)`` keep-ratio target (``(1333, 800)`` officially);
            the order of the two values does not matter.
        bounding_box_format: format of boxes passed with the images (``{"images", "bounding_boxes"}``
            input), those of ``ops.box_formats``; they are returned in the same format of the
            padded network input.

    Call:
        ``images`` uint8 (or float in ``[0, 255]``) RGB ``[B, H, W, 3]`` of one size, or one
        ``[H, W, 3]`` image → float32 ``[B, Hp, Wp, 3]`` (``[Hp, Wp, 3]``) normalised, zero
        padded. A dict ``{"images": ..., "bounding_boxes": {"boxes": [B, M, 4], "labels": [B, M]}}``
        also rescales the boxes by the resize factor (labels unchanged).
    """

    backbone_cls = GFLV2Backbone

    def __init__(self, image_scale=preprocessing.DEFAULT_SCALE, bounding_box_format="xyxy", **kwargs):
        for fixed in ("image_size", "scale", "offset"):
            kwargs.pop(fixed, None)  # the keep-ratio pipeline decides them
        super().__init__(
            image_size=None,
            scale=[1.0 / s for s in preprocessing.STD],
            offset=[-m / s for m, s in zip(preprocessing.MEAN, preprocessing.STD)],
            bounding_box_format=validate_bounding_box_format(bounding_box_format),
            **kwargs,
        )
        self.image_scale = tuple(int(v) for v in image_scale)

    def call(self, inputs):
        if isinstance(inputs, dict):
            images = inputs["images"]
            targets = dict(inputs.get("bounding_boxes", {}))
        else:
            images, targets = inputs, None
        single = len(images.shape) == 3
        batch = images[None] if single else images
        network_input, info = preprocessing.preprocess_images(batch, self.image_scale)
        network_input = network_input[0] if single else network_input
        if targets is None:
            return network_input
        if "boxes" in targets:
            targets["boxes"] = self.rescale_boxes(targets["boxes"], batch, network_input, info, single)
        return {"images": network_input, "bounding_boxes": targets}

    def rescale_boxes(self, boxes, images, network_input, info, single):
        """Boxes of the original images → the same format of the padded network input."""
        fmt = self.bounding_box_format
        height, width = ops.shape(images)[1], ops.shape(images)[2]
        padded_h, padded_w = ops.shape(network_input)[-3], ops.shape(network_input)[-2]
        xyxy = convert_boxes(boxes, fmt, "xyxy", height, width)
        factor = info["scale_factor"][0]
        xyxy = xyxy * ops.stack([factor[1], factor[0], factor[1], factor[0]])
        return convert_boxes(xyxy, "xyxy", fmt, padded_h, padded_w)

    def get_config(self):
        config = super().get_config()
        for fixed in ("image_size", "scale", "offset"):
            config.pop(fixed, None)
        return {**config, "image_scale": list(self.image_scale)}


@keras.saving.register_keras_serializable(package="gflv2_keras")
class GFLV2ObjectDetectorPreprocessor(keras_hub.models.ObjectDetectorPreprocessor):
    """keras-hub preprocessor of ``GFLV2ObjectDetector``: its ``image_converter`` is a ``GFLV2ImageConverter``.

    ``GFLV2ObjectDetector.predict``/``detect`` run the same arithmetic inside their compiled
    function (and map the detections back to original pixels); the preprocessor is what a
    keras-hub pipeline calls on its own, and what a preset folder saves
    (``preprocessor.json``). ``fit`` takes network inputs or raw samples (see the detector).
    """

    backbone_cls = GFLV2Backbone

    def __init__(self, image_converter=None, **kwargs):
        if image_converter is None:
            image_converter = GFLV2ImageConverter()
        super().__init__(image_converter=image_converter, **kwargs)

    @property
    def image_scale(self):
        """``(long_max, short_max)`` of the image converter."""
        return self.image_converter.image_scale

