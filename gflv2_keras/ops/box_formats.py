"""The one box-format module: Keras' format names, validation and conversion.

Every part of the library that speaks a ``bounding_box_format`` (training targets, ``fit`` on raw
samples, ``predict``/``detect``, evaluation, the exports' ``--box-layout``) uses these names and
this conversion, so a format means the same everywhere. Internally boxes are ``xyxy`` pixels
(``x1, y1, x2, y2``, x to the right, y down, in pixels of the image they belong to); conversion
happens once, at the edge where boxes enter or leave.

The formats are those of ``keras.utils.bounding_boxes.convert_format``. ``rel_*`` formats are
relative to an image's ``(height, width)``: the caller says which image (the network-input batch
for training targets, the original image for predictions).
"""

import keras
from keras import ops

# The formats of ``keras.utils.bounding_boxes.convert_format`` (case-insensitive).
BOUNDING_BOX_FORMATS = (
    "xyxy",
    "yxyx",
    "xywh",
    "center_xywh",
    "center_yxhw",
    "rel_xyxy",
    "rel_yxyx",
    "rel_xywh",
    "rel_center_xywh",
)


def validate_bounding_box_format(bounding_box_format):
    """The lower-cased format name; a ``ValueError`` listing the valid ones if unknown."""
    fmt = str(bounding_box_format).lower()
    if fmt not in BOUNDING_BOX_FORMATS:
        raise ValueError(
            f"bounding_box_format: unknown format {bounding_box_format!r}; "
            f"valid formats are {', '.join(BOUNDING_BOX_FORMATS)}"
        )
    return fmt


def is_relative(bounding_box_format):
    """Whether boxes of this format are relative to the image size (``rel_*``)."""
    return validate_bounding_box_format(bounding_box_format).startswith("rel_")


def convert_boxes(boxes, source, target, height, width):
    """``[..., 4]`` boxes from format ``source`` to ``target``, float32.

    ``height``/``width`` (ints or scalar tensors) are those of the image the ``rel_*`` side is
    relative to; they are not used between absolute formats. Same format: returned as float32
    unchanged (no round trip).
    """
    boxes = ops.cast(boxes, "float32")
    if source == target:
        return boxes
    return keras.utils.bounding_boxes.convert_format(boxes, source, target, height=height, width=width)
