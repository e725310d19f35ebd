"""Fixed training canvases: batches are zero-padded to a static size so ATSS and the compiled
training step see static shapes.

The official loader pads each batch to its largest image (``mmdet/datasets/pipelines/formating.py
DefaultFormatBundle`` + ``mmcv/parallel/collate.py collate``); the padded points are invalid for the
loss either way (``losses.gfl_loss.valid_point_mask``), so the targets are the same.
"""

import math

import tensorflow as tf


def training_canvas(scale, multiscale_range=None, divisor=32):
    """``(H, W)`` of the fixed training canvas: a square of the longest resized side.

    Every resized image fits in it whatever its orientation: its long side is at most
    ``max(scale)`` (also with a multi-scale range, whose long side stays capped at
    ``max(scale)``), rounded up to the size divisor.
    """
    del multiscale_range
    side = int(math.ceil(max(scale) / divisor) * divisor)
    return side, side


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
