"""Image preprocessing of the official test pipeline, shared by ``predict``, tf.data and export.

Pipeline (``configs/gfocal/gfocal_r50_fpn_1x.py`` ``test_pipeline``;
``docs/parity.md``, Preprocessing): keep-ratio resize so the image fits in ``scale`` =
``(long_max, short_max)`` (1333 x 800 by default), RGB ``(x - mean) / std`` in float32,
zero padding at the bottom/right to a multiple of 32.

Images are RGB ``[H, W, 3]`` (or ``[B, H, W, 3]`` sharing one size). The official code resizes
uint8 with cv2 bilinear; here half-pixel bilinear without antialias (``tf.image.resize``'s
``"bilinear"``) is rounded back to the uint8 grid, which agrees with cv2 to within one grey level.

``preprocess_images`` has two implementations, chosen at run time by whether ``H`` and ``W`` are
known python ints:

* static sizes (always on JAX and PyTorch, whose images are concrete arrays; on TensorFlow
  whenever the shape is known): ``keras.ops``, sizes and ``image_info`` computed on the host.
  The resize is ``bilinear_resize``, TensorFlow's float32 half-pixel arithmetic operation for
  operation, so its uint8-grid result equals ``tf.image.resize``'s bit for bit (the backends'
  own ``keras.ops.image.resize`` differs from it by ~1e-3 before rounding, enough to move a few
  pixels one grey level); on the TensorFlow backend ``keras.ops.image.resize`` is that very
  kernel and is used instead.
* dynamic sizes (TensorFlow graphs traced with unknown ``H``/``W``, such as the SavedModel's
  serving signature), and TF tensors under another backend (a tf.data map on JAX or PyTorch):
  TensorFlow ops, as are ``rescale_size``, ``resize_image``, ``normalize``, ``padded_size`` and
  ``pad_to_size``, the tf.data pipeline's building blocks. TensorFlow is imported only on these
  paths.
"""

import numbers
import sys

import keras
import numpy as np
from keras import ops

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
    import tensorflow as tf

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
    GroupNorm statistics, so there are no coarser buckets; XLA-compiled inference functions are
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
    import tensorflow as tf

    resized = tf.image.resize(tf.cast(image, tf.float32), tf.stack([new_height, new_width]), method="bilinear")
    return tf.round(tf.clip_by_value(resized, 0.0, 255.0))


def normalize(image):
    """``(rgb - MEAN) / STD`` in float32; accepts any leading shape ending in 3 channels."""
    import tensorflow as tf

    return (tf.cast(image, tf.float32) - tf.constant(MEAN)) / tf.constant(STD)


def padded_size(size, divisor=SIZE_DIVISOR):
    """Smallest multiple of ``divisor`` that is ``>= size`` (int32 tensor)."""
    import tensorflow as tf

    size = tf.cast(size, tf.int32)
    return (size + divisor - 1) // divisor * divisor


def pad_to_size(image, height, width):
    """Zero-pad ``[..., h, w, C]`` at the bottom/right to ``height x width``."""
    import tensorflow as tf

    shape = tf.shape(image)
    rank = image.shape.rank
    paddings = [[0, 0]] * (rank - 3) + [
        [0, height - shape[rank - 3]],
        [0, width - shape[rank - 2]],
        [0, 0],
    ]
    return tf.pad(image, paddings)


def bilinear_resize(images, new_height, new_width):
    """Half-pixel bilinear resize without antialias, in ``keras.ops``, for static sizes.

    TensorFlow's CPU kernel arithmetic (``resize_bilinear_op.cc``) operation for operation in
    float32: source coordinate ``(i + 0.5) * (in / out) - 0.5``, neighbours ``floor`` and
    ``ceil`` clamped to the image, ``top = tl + (tr - tl) * dx``, ``bottom`` alike, ``out = top
    + (bottom - top) * dy``. The interpolation tables are computed on the host (NumPy float32).
    Run op by op, the result equals ``tf.image.resize``'s bit for bit; under XLA (``jax.jit``)
    multiply-adds may be fused, moving values by ~1e-5, which changes the rounded uint8 level
    only for a value on a rounding boundary.

    Args:
        images: float32 ``[B, H, W, C]`` with static ``H``, ``W``.
        new_height, new_width: python ints ``>= 1``.

    Returns:
        float32 ``[B, new_height, new_width, C]``.
    """
    top_rows, bottom_rows, dy = _interpolation(images.shape[1], new_height)
    left_cols, right_cols, dx = _interpolation(images.shape[2], new_width)
    # Every source row interpolated along x once (TF's "top" and "bottom" are rows of it).
    left, right = ops.take(images, left_cols, axis=2), ops.take(images, right_cols, axis=2)
    rows = left + (right - left) * dx[:, None]
    top, bottom = ops.take(rows, top_rows, axis=1), ops.take(rows, bottom_rows, axis=1)
    return top + (bottom - top) * dy[:, None, None]


def _interpolation(size, new_size):
    """``(lower int32 [new], upper int32 [new], weight float32 [new])`` of TF's half-pixel scaler,
    as backend tensors."""
    scale = np.float32(size) / np.float32(max(new_size, 1))
    source = (np.arange(new_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(source)
    lower = np.maximum(floor, 0).astype(np.int32)
    upper = np.minimum(np.ceil(source), size - 1).astype(np.int32)
    return tuple(ops.convert_to_tensor(v) for v in (lower, upper, (source - floor).astype(np.float32)))


def preprocess_images(images, scale=DEFAULT_SCALE, divisor=SIZE_DIVISOR, canvas=None):
    """The whole test-time preprocessing for a batch of equally sized images.

    ``keras.ops`` when ``H``, ``W`` and ``scale`` are static python numbers (every backend),
    TensorFlow ops otherwise (graphs with unknown image size, and TF tensors under another
    backend: a tf.data map); both give the same values.

    Args:
        images: uint8 (or float in ``[0, 255]``) RGB ``[B, H, W, 3]`` (any backend's array,
            NumPy, or a TF tensor).
        scale: keep-ratio target ``(long_max, short_max)``.
        canvas: optional python ``(Hp, Wp)`` from ``canvas_size``: the padded size is then
            static (the network can be compiled for it). ``None``: the keep-ratio size padded up
            to ``divisor`` (computed in the graph when the image size is dynamic).

    Returns:
        ``inputs``: float32 ``[B, Hp, Wp, 3]``, normalised and zero padded to ``divisor``.
        ``image_info``: dict of
            ``"image_shape"`` float32 ``[B, 2]`` ``(h, w)`` of the resized, unpadded image
            (detections are clipped to it) and
            ``"scale_factor"`` float32 ``[B, 2]`` ``(new_h / h, new_w / w)`` (detections are
            divided by it to return to original pixels).
    """
    if not hasattr(images, "shape"):
        images = np.asarray(images)
    height, width = images.shape[1], images.shape[2]
    static = all(isinstance(v, numbers.Real) for v in (height, width, *scale))
    # TF tensors under another backend (a tf.data map on JAX or PyTorch) need TF ops.
    if static and (keras.config.backend() == "tensorflow" or not _is_tf_tensor(images)):
        return _preprocess_static(images, int(height), int(width), scale, divisor, canvas)
    return _preprocess_graph(images, scale, divisor, canvas)


def _is_tf_tensor(x):
    tf = sys.modules.get("tensorflow")  # not imported: x cannot be a TF tensor
    return tf is not None and tf.is_tensor(x)


def _preprocess_static(images, height, width, scale, divisor, canvas):
    """``preprocess_images`` in ``keras.ops`` for python-int image sizes."""
    new_h, new_w = static_rescale_size(height, width, scale)
    if canvas is None:
        canvas = (-(-new_h // divisor) * divisor, -(-new_w // divisor) * divisor)
    images = ops.cast(images, "float32")
    if keras.config.backend() == "tensorflow":  # the native kernel, equal to bilinear_resize
        resized = ops.image.resize(images, (new_h, new_w), interpolation="bilinear", antialias=False)
    else:
        resized = bilinear_resize(images, new_h, new_w)
    resized = ops.round(ops.clip(resized, 0.0, 255.0))
    normalized = (resized - ops.convert_to_tensor(np.float32(MEAN))) / ops.convert_to_tensor(np.float32(STD))
    inputs = ops.pad(normalized, [[0, 0], [0, canvas[0] - new_h], [0, canvas[1] - new_w], [0, 0]])
    image_shape = np.float32([new_h, new_w])
    factor = image_shape / np.float32([height, width])
    batch = ops.shape(images)[0]
    image_info = {
        "image_shape": ops.tile(ops.convert_to_tensor(image_shape[None]), (batch, 1)),
        "scale_factor": ops.tile(ops.convert_to_tensor(factor[None]), (batch, 1)),
    }
    return inputs, image_info


def _preprocess_graph(images, scale, divisor, canvas):
    """``preprocess_images`` in TensorFlow ops, for image sizes known only in the graph."""
    import tensorflow as tf

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
