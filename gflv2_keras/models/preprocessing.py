"""Image preprocessing of the official test pipeline, shared by ``predict``, tf.data and export.

Pipeline (``configs/gfocal/gfocal_r50_fpn_1x.py`` ``test_pipeline``;
``docs/parity.md``, Preprocessing): keep-ratio resize so the image fits in ``scale`` =
``(long_max, short_max)`` (1333 x 800 by default), RGB ``(x - mean) / std`` in float32,
zero padding at the bottom/right to a multiple of 32.

Images are RGB ``[H, W, 3]`` (or ``[B, H, W, 3]`` sharing one size). The official code resizes
uint8 with cv2 bilinear; here ``tf.image.resize`` (half-pixel bilinear, no antialias) is
rounded back to the uint8 grid, which agrees with cv2 to within one grey level.
"""

import numpy as np
import tensorflow as tf

MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)
SIZE_DIVISOR = 32
DEFAULT_SCALE = (1333, 800)


def rescale_size(height, width, scale=DEFAULT_SCALE):
    """Keep-ratio target size, as mmcv ``rescale_size``.

    ``factor = min(long_max / max(h, w), short_max / min(h, w))`` and the new size is
    ``int(side * factor + 0.5)``.

    Args:
        height, width: scalar tensors or ints (the original size).
        scale: ``(long_max, short_max)`` as numbers or scalar tensors (multi-scale training
            samples the short side); the order of the two values does not matter.

    Returns:
        ``(new_height, new_width)`` as int32 scalar tensors.
    """
    h = tf.cast(height, tf.float32)
    w = tf.cast(width, tf.float32)
    first, second = (tf.cast(v, tf.float32) for v in scale)
    long_max = tf.maximum(first, second)
    short_max = tf.minimum(first, second)
    factor = tf.minimum(long_max / tf.maximum(h, w), short_max / tf.minimum(h, w))
    new_h = tf.cast(tf.floor(h * factor + 0.5), tf.int32)
    new_w = tf.cast(tf.floor(w * factor + 0.5), tf.int32)
    return new_h, new_w


def static_rescale_size(height, width, scale=DEFAULT_SCALE):
    """``rescale_size`` for python ints on the host, in the same float32 arithmetic.

    Returns ``(new_height, new_width)`` python ints equal to ``rescale_size``'s (tested over
    a sweep of sizes), so the host can pick a static network canvas without a graph call.
    """
    h, w = np.float32(height), np.float32(width)
    first, second = np.float32(scale[0]), np.float32(scale[1])
    long_max, short_max = max(first, second), min(first, second)
    factor = min(np.float32(long_max / max(h, w)), np.float32(short_max / min(h, w)))
    return int(np.floor(np.float32(h * factor) + np.float32(0.5))), int(
        np.floor(np.float32(w * factor) + np.float32(0.5))
    )


def canvas_size(height, width, scale=DEFAULT_SCALE, divisor=SIZE_DIVISOR):
    """The padded network input ``(Hp, Wp)`` (python ints) of an ``height x width`` image.

    This is the inference padding policy: the keep-ratio size rounded up to ``divisor``,
    exactly the official ``Pad(size_divisor=32)``. Any padding beyond it would change the head's
    GroupNorm statistics, so there are no coarser buckets; the compiled inference functions are
    keyed by this canvas, whose number of distinct values is bounded (``max_canvases``).
    """
    new_h, new_w = static_rescale_size(height, width, scale)
    return -(-new_h // divisor) * divisor, -(-new_w // divisor) * divisor


def max_canvases(scale=DEFAULT_SCALE, divisor=SIZE_DIVISOR):
    """Upper bound on distinct ``canvas_size`` values over all image sizes (85 for 1333 x 800).

    Per orientation either the short side reaches ``short_max`` and the padded long side takes
    one of ``ceil(long_max / d) - ceil(short_max / d) + 1`` values, or the long side reaches
    ``long_max`` and the padded short side takes one of ``ceil(short_max / d) + 1`` values (0
    included: extreme aspect ratios round to an empty side); the families share one canvas,
    and the square canvas belongs to both orientations: ``2 * (ceil(long_max / d) + 1) - 1``.
    """
    return 2 * (-(-max(scale) // divisor) + 1) - 1


def resize_image(image, new_height, new_width):
    """Bilinear resize of an RGB image (``[H, W, 3]`` or ``[B, H, W, 3]``) to the uint8 grid.

    Returns float32 values in ``[0, 255]`` rounded to integers.
    """
    resized = tf.image.resize(tf.cast(image, tf.float32), tf.stack([new_height, new_width]), method="bilinear")
    return tf.round(tf.clip_by_value(resized, 0.0, 255.0))


def normalize(image):
    """``(rgb - MEAN) / STD`` in float32; accepts any leading shape ending in 3 channels."""
    return (tf.cast(image, tf.float32) - tf.constant(MEAN)) / tf.constant(STD)


def padded_size(size, divisor=SIZE_DIVISOR):
    """Smallest multiple of ``divisor`` that is ``>= size`` (int32 tensor)."""
    size = tf.cast(size, tf.int32)
    return (size + divisor - 1) // divisor * divisor


def pad_to_size(image, height, width):
    """Zero-pad ``[..., h, w, C]`` at the bottom/right to ``height x width``."""
    shape = tf.shape(image)
    rank = image.shape.rank
    paddings = [[0, 0]] * (rank - 3) + [
        [0, height - shape[rank - 3]],
        [0, width - shape[rank - 2]],
        [0, 0],
    ]
    return tf.pad(image, paddings)


def preprocess_images(images, scale=DEFAULT_SCALE, divisor=SIZE_DIVISOR, canvas=None):
    """The whole test-time preprocessing for a batch of equally sized images.

    Args:
        images: uint8 (or float in ``[0, 255]``) RGB ``[B, H, W, 3]``.
        scale: keep-ratio target ``(long_max, short_max)``.
        canvas: optional python ``(Hp, Wp)`` from ``canvas_size``: the padded size is then
            static (the network can be compiled for it). ``None``: computed in the graph.

    Returns:
        ``inputs``: float32 ``[B, Hp, Wp, 3]``, normalised and zero padded to ``divisor``.
        ``image_info``: dict of
            ``"image_shape"`` float32 ``[B, 2]`` ``(h, w)`` of the resized, unpadded image
            (detections are clipped to it) and
            ``"scale_factor"`` float32 ``[B, 2]`` ``(new_h / h, new_w / w)`` (detections are
            divided by it to return to original pixels).
    """
    images = tf.convert_to_tensor(images)
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    new_h, new_w = rescale_size(height, width, scale)
    resized = resize_image(images, new_h, new_w)
    if canvas is None:
        inputs = pad_to_size(normalize(resized), padded_size(new_h, divisor), padded_size(new_w, divisor))
    else:
        inputs = tf.ensure_shape(pad_to_size(normalize(resized), canvas[0], canvas[1]), [None, *canvas, 3])
    image_shape = tf.cast(tf.stack([new_h, new_w]), tf.float32)
    factor = image_shape / tf.cast(tf.stack([height, width]), tf.float32)
    image_info = {
        "image_shape": tf.tile(image_shape[None], [batch, 1]),
        "scale_factor": tf.tile(factor[None], [batch, 1]),
    }
    return inputs, image_info
