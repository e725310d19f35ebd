"""Raw keras-hub style samples → the training batches of the library (``detector.fit(raw)``).

A raw sample is ``{"images": uint8 [H, W, 3] (any size), "bounding_boxes": {"boxes": [M, 4],
"labels": [M]}}`` with boxes in the detector's ``bounding_box_format`` of the original image
(``rel_*``: relative to its ``H``, ``W``), as keras-hub object detectors take them. The per-image
transform and the batching are the ones of ``data.pipeline`` (``transform_sample``,
``pad_batch``: keep-ratio resize, flip, normalise, pad to 32), then every batch is padded to the
fixed canvas of ``data.canvas`` (static shapes) and the boxes are put back in the detector's
format, relative to that canvas for ``rel_*`` formats.
"""

import tensorflow as tf

from gflv2_keras.data.canvas import pad_to_canvas, training_canvas
from gflv2_keras.data.pipeline import pad_batch, transform_sample
from gflv2_keras.models import preprocessing as preprocess
from gflv2_keras.ops.box_formats import convert_boxes


def is_raw_dataset(data):
    """Whether ``data`` is a ``tf.data.Dataset`` of raw samples (dicts with ``images`` and ``bounding_boxes``)."""
    if not isinstance(data, tf.data.Dataset):
        return False
    spec = data.element_spec
    return isinstance(spec, dict) and "images" in spec and "bounding_boxes" in spec


def prepare_raw_dataset(raw, batch_size, bounding_box_format="xyxy", scale=preprocess.DEFAULT_SCALE,
                        flip_prob=0.5, seed=0, shuffle_buffer=None, max_boxes=None):
    """The training batches of ``raw`` (see the module docstring).

    Args:
        raw: ``tf.data.Dataset`` of unbatched raw samples.
        batch_size: images per batch.
        bounding_box_format: format of the raw boxes and of the returned targets.
        scale: ``(long_max, short_max)`` keep-ratio resize target.
        flip_prob: probability of a horizontal flip; the flip of the ``i``-th sample is a
            function of ``(seed, i)``.
        seed: int seed of the flips (and of the shuffle).
        shuffle_buffer: shuffle the samples with this buffer (None: keep the order).
        max_boxes: boxes per image of a batch (None: the largest count of the batch).

    Returns:
        ``tf.data.Dataset`` of ``(images float32 [B, S, S, 3], {"boxes": [B, M, 4] in
        bounding_box_format of the canvas, "labels": int32 [B, M] (-1 padding), "image_shape":
        [B, 2]})`` with ``(S, S) = training_canvas(scale)``.

    Raises:
        ValueError: the samples are batched (images of rank 4).
    """
    images_spec = raw.element_spec["images"]
    if images_spec.shape.rank != 3:
        raise ValueError(
            f"prepare_dataset: raw samples must be unbatched uint8 [H, W, 3] images, got {images_spec.shape}; "
            "call .unbatch() (or .rebatch) on the dataset first"
        )
    canvas = training_canvas(scale)
    if shuffle_buffer:
        raw = raw.shuffle(shuffle_buffer, seed=seed)

    def transform(position, sample):
        image = tf.cast(sample["images"], tf.uint8)
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        boxes = tf.reshape(tf.cast(sample["bounding_boxes"]["boxes"], tf.float32), [-1, 4])
        boxes = convert_boxes(boxes, bounding_box_format, "xyxy", height, width)
        labels = tf.reshape(tf.cast(sample["bounding_boxes"]["labels"], tf.int32), [-1])
        keep = labels >= 0
        boxes, labels = tf.boolean_mask(boxes, keep), tf.boolean_mask(labels, keep)
        if max_boxes is not None:
            boxes, labels = boxes[:max_boxes], labels[:max_boxes]
        new_h, new_w = preprocess.rescale_size(height, width, scale)
        flip_seed = tf.stack([tf.constant(seed, tf.int64), position])
        flip = tf.random.stateless_uniform([], flip_seed) < flip_prob
        return transform_sample(image, boxes, labels, new_h, new_w, flip)

    ds = raw.enumerate().map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = pad_to_canvas(pad_batch(ds, batch_size, max_boxes), canvas)
    if bounding_box_format != "xyxy":
        def to_format(images, targets):
            boxes = convert_boxes(targets["boxes"], "xyxy", bounding_box_format, canvas[0], canvas[1])
            return images, {**targets, "boxes": boxes}

        ds = ds.map(to_format, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.prefetch(tf.data.AUTOTUNE)
