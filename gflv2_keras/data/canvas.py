"""Training canvases: every batch is zero-padded to one of a few static sizes, chosen per batch.

The official loader groups images by orientation (``mmdet/datasets/samplers/group_sampler.py
GroupSampler``: flag 1 when ``width / height > 1``) and pads each batch to its largest image
rounded up to 32 (``mmdet/datasets/pipelines/formating.py DefaultFormatBundle`` +
``mmcv/parallel/collate.py collate``): dynamic shapes. A compiled (XLA) step and ATSS want static
shapes, so here each batch (of one orientation, ``data.pipeline.build_grouped_dataset``) is padded
to the smallest canvas of a fixed set that holds it: one compiled training step per canvas. The
padded points are invalid for the loss either way (``losses.gfl_loss.valid_point_mask``), so the
targets are those of the official padding.

The canvas set (``training_canvases``), for ``scale = (long_max, short_max)``:

* short sides: ``short_max``, or for a multi-scale range ``(lo, hi)`` the three steps
  ``hi, hi - (hi - lo) / 3, hi - 2 (hi - lo) / 3`` (``960, 800, 640`` for ms2x);
* for each short side ``s``, long sides ``min(long_max, s * r)`` for the common photo aspect
  ratios ``r`` in ``1, 4/3, 3/2`` and the long-side cap ``long_max`` itself;
* all rounded up to 32; landscape canvases are ``(s, long)``, portrait ones ``(long, s)``.

1333x800 gives 4 + 4 canvases (800x800, 800x1088, 800x1216, 800x1344 and their transposes),
ms2x 11 + 11. ``padded_pixel_ratio`` measures the cost against the official dynamic padding.
"""

import math

import numpy as np
import tensorflow as tf

SIZE_DIVISOR = 32
# Width / height of common photos (square, 4:3, 3:2); the long-side cap is always added.
ASPECT_RATIOS = (1.0, 4.0 / 3.0, 3.0 / 2.0)
MULTISCALE_STEPS = 3


def _round_up(value, divisor=SIZE_DIVISOR):
    return int(math.ceil(value / divisor) * divisor)


def training_canvases(scale, multiscale_range=None, divisor=SIZE_DIVISOR):
    """The fixed set of ``(H, W)`` training canvases (see the module docstring for the rule).

    Every image the training pipeline can produce fits at least the largest canvas of its
    orientation (``(short, long_max)`` rounded up): the resized short side is at most
    ``short_max`` (or ``hi``) and the long side at most ``long_max``.

    Returns:
        Sorted list of distinct ``(H, W)`` int pairs, landscape (``W >= H``) and portrait.
    """
    long_max, short_max = max(scale), min(scale)
    if multiscale_range is None:
        shorts = [short_max]
    else:
        lo, hi = min(multiscale_range), max(multiscale_range)
        shorts = [hi - (hi - lo) * i / MULTISCALE_STEPS for i in range(MULTISCALE_STEPS)]
    landscape = set()
    for short in shorts:
        short = min(short, long_max)
        for ratio in (*ASPECT_RATIOS, long_max / short):
            landscape.add((_round_up(short, divisor), _round_up(min(long_max, short * ratio), divisor)))
    return sorted(landscape | {(w, h) for h, w in landscape})


def training_canvas(scale, multiscale_range=None, divisor=SIZE_DIVISOR):
    """``(H, W)`` of the single square canvas every image fits (the longest side, rounded up).

    What every batch was padded to before grouped canvases; kept for ``padded_pixel_ratio``'s
    comparison and for callers that want a single shape.
    """
    del multiscale_range
    side = _round_up(max(scale), divisor)
    return side, side


def choose_canvas(canvases, height, width):
    """Index of the smallest-area canvas holding ``height x width`` (graph-safe), -1 if none.

    Args:
        canvases: int ``[K, 2]`` ``(H, W)`` (list or tensor).
        height, width: int32 scalar tensors, the batch's largest padded image size.
    """
    canvases = tf.constant(np.asarray(canvases, np.int32).reshape(-1, 2))
    fits = (canvases[:, 0] >= height) & (canvases[:, 1] >= width)
    area = tf.where(fits, canvases[:, 0] * canvases[:, 1], tf.int32.max)
    return tf.where(tf.reduce_any(fits), tf.cast(tf.argmin(area), tf.int32), -1)


def pad_to_canvas(dataset, canvas):
    """Zero-pads every batch of a ``build_dataset`` stream to ``canvas`` (bottom / right).

    The padded points lie outside each image's ``image_shape`` and so are invalid for the loss,
    exactly like the official padding of a batch to its largest image
    (``mmdet/core/anchor/anchor_generator.py AnchorGenerator.valid_flags``). A batch whose images
    do not fit raises an ``InvalidArgumentError`` naming the sizes.
    """
    height, width = canvas

    def pad(images, targets):
        shape = tf.shape(images)
        tf.debugging.assert_less_equal(
            shape[1:3], tf.constant([height, width]), message=f"training batch larger than the canvas {canvas}"
        )
        images = tf.pad(images, [[0, 0], [0, height - shape[1]], [0, width - shape[2]], [0, 0]])
        return tf.ensure_shape(images, [None, height, width, 3]), targets

    return dataset.map(pad, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
