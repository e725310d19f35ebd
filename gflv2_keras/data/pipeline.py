"""tf.data input pipeline of the official train (and test) recipe
(``configs/gfocal/gfocal_r50_fpn_1x.py`` ``train_pipeline``).

Per image: decode with the library's one image reader (``data.image_io.read_image``, inside a
``tf.numpy_function``: JPEG / PNG / BMP / GIF, grayscale and RGBA become RGB, EXIF orientation
applied, so the pixels are those ``gflv2 predict`` and evaluation see) → keep-ratio resize
on the uint8 grid (``preprocess.resize_image``), to ``scale`` or, for the ms2x recipes, to a
short side drawn uniformly from ``multiscale_range`` with the long side capped at
``max(scale)`` → horizontal flip with probability ``flip_prob`` → ``(x - mean) / std`` → zero
padding at the bottom/right to a multiple of 32. Boxes (xyxy, absolute pixels) are scaled by
the same ``new / original`` factors, clipped to the resized image and mirrored with the image
(``x1' = W - x2``, ``x2' = W - x1``, ``W`` the resized unpadded width), as mmdet's ``Resize``
and ``RandomFlip``.

Order and randomness are a pure function of ``(shuffle_seed, epoch, position)``: epoch ``e``
visits the images in ``stateless_shuffle(seed=(shuffle_seed, e))`` order and the scale / flip
of the image at position ``p`` come from a stateless seed folded from ``(shuffle_seed, e, p)``.
Parallel decoding therefore never changes the data, and a resumed run reproduces it: see
``build_dataset`` (``epoch``, ``num_epochs``, ``skip_batches``).

Corrupt or missing image files never stop a run: ``check_image_files`` (cheap header /
truncation checks by default) removes them up front and reports each by image id and file
name; whatever still fails to decode inside the graph is dropped by ``ignore_errors`` with a
TensorFlow warning.

Decoding cost (measured on 2 shared CPU cores, 640x480 JPEGs): decoding alone in a parallel map
takes 7.3-7.6 ms per image with the Python reader (Pillow, accurate integer DCT, under
``tf.numpy_function``) where ``tf.io.decode_image`` (fast DCT) took 4.8-5.1 ms; the whole per-image
pipeline (decode, resize to 1333x800, flip, normalise, pad) costs 22.8-28.8 ms of CPU time per image
(median 25.6) where it cost 22.6-25.9 ms (median 24.8) with ``tf.io.decode_image``: about 3 %.
Pillow releases the GIL while it decodes.
"""

import logging
import math

import numpy as np
import tensorflow as tf

from gflv2_keras.data.coco import check_image_files
from gflv2_keras.data.image_io import decode_image_tf
from gflv2_keras.data.records import first_ids, report_boxes_over, require_readable_images
from gflv2_keras.models import preprocessing as preprocess

logger = logging.getLogger(__name__)

MS2X_RANGE = (480, 960)
BOX_PADDING = -1.0
LABEL_PADDING = -1
# Upper bound of the epoch counter when ``num_epochs=None`` (an endless stream).
_ENDLESS = 2**62


def build_dataset(
    dataset,
    batch_size,
    scale=preprocess.DEFAULT_SCALE,
    multiscale_range=None,
    flip_prob=0.5,
    training=True,
    shuffle_seed=None,
    max_boxes=None,
    epoch=0,
    num_epochs=1,
    skip_batches=0,
    drop_remainder=False,
    check_files="header",
):
    """Builds the batched input pipeline for a ``CocoDataset``.

    Args:
        dataset: a ``CocoDataset`` (``load_coco``).
        batch_size: images per batch.
        scale: ``(long_max, short_max)`` keep-ratio target, ``(1333, 800)`` officially.
        multiscale_range: ``(short_min, short_max)`` inclusive, e.g. ``MS2X_RANGE`` =
            ``(480, 960)`` for the ms2x recipes; the short side target is a uniform integer in
            it and the long side stays ``max(scale)``. Training only; ``None`` for a fixed scale.
        flip_prob: probability of a horizontal flip (training only).
        training: shuffle, flip and multi-scale; ``False`` gives the test pipeline in file order.
        shuffle_seed: int seed of order, scale and flip. ``None`` draws one and logs it
            (a run can only be reproduced with the seed).
        max_boxes: pad boxes to exactly this many per image (fixed shapes, e.g. for XLA);
            boxes beyond it (the last ones in annotation order) are dropped, and each image
            that loses some is named in ``dataset.problems`` (``records.report_boxes_over``).
            ``None`` pads to the largest count in the batch.
        epoch: index of the first epoch of the stream (selects its order).
        num_epochs: number of epochs in the stream; ``None`` for an endless one. Keras
            ``fit(epochs=N)`` re-iterates a finite dataset and would see the same order every
            time, so for multi-epoch training pass ``num_epochs=None`` with
            ``steps_per_epoch=steps_per_epoch(dataset, batch_size)``, or rebuild the dataset
            with ``epoch=e`` for each epoch.
        skip_batches: batches of this stream already consumed (resume). Images are
            ``batch_size * skip_batches`` positions into the stream of concatenated epochs;
            skipping happens on indices, before any file is read. To resume a run that started
            at ``epoch=0`` with an endless stream after ``k`` optimiser steps, pass the same
            seed and ``skip_batches=k``.
        drop_remainder: drop a last partial batch (finite streams only).
        check_files: ``"header"``, ``"decode"`` or ``None``: pre-check image files
            (``check_image_files``, about 0.15 ms per image for ``"header"``, 1.4 ms for
            ``"decode"`` on 256 px JPEGs) and leave out the unreadable ones, reported by id
            and file name. A file that passes the header check yet fails to decode is dropped
            in the graph with a TensorFlow warning that does not name it (and later positions
            shift by one); ``"decode"`` rules that out.

    Returns:
        A ``tf.data.Dataset`` of ``(images, targets)``:
            ``images`` float32 ``[B, H, W, 3]``, normalised RGB, zero padded (each image to a
            multiple of 32, then to the largest in the batch);
            ``targets["boxes"]`` float32 ``[B, M, 4]`` xyxy in network-input pixels, padded
            with -1;
            ``targets["labels"]`` int32 ``[B, M]`` contiguous class indices, padded with -1
            (validity is ``labels >= 0``);
            ``targets["image_shape"]`` int32 ``[B, 2]`` ``(h, w)`` of each image padded to a
            multiple of 32, before batch padding.
    """
    if batch_size < 1:
        raise ValueError(f"build_dataset: batch_size must be >= 1, got {batch_size}")
    if multiscale_range is not None and (len(multiscale_range) != 2 or multiscale_range[0] > multiscale_range[1]):
        raise ValueError(f"build_dataset: multiscale_range must be (short_min, short_max), got {multiscale_range}")
    records = usable_records(dataset, check_files, max_boxes)
    shuffle_seed = resolve_seed(shuffle_seed, training, "build_dataset")

    num = len(records)
    first_epoch = epoch + skip_batches * batch_size // num
    first_offset = skip_batches * batch_size % num
    end_epoch = _ENDLESS if num_epochs is None else epoch + num_epochs
    seed = tf.constant(shuffle_seed, tf.int64)

    def epoch_positions(e):
        start = tf.where(e == first_epoch, tf.constant(first_offset, tf.int64), 0)
        positions = tf.range(start, num, dtype=tf.int64)
        if training:
            order = tf.random.experimental.stateless_shuffle(tf.range(num, dtype=tf.int64), seed=tf.stack([seed, e]))
        else:
            order = tf.range(num, dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices((tf.gather(order, positions), tf.fill([num - start], e), positions))

    load = _make_loader(
        records, seed, scale, multiscale_range if training else None, flip_prob if training else 0.0, max_boxes
    )
    ds = tf.data.Dataset.range(first_epoch, end_epoch).flat_map(epoch_positions)
    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors(log_warning=True)
    ds = pad_batch(ds, batch_size, max_boxes, drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)


def pad_batch(ds, batch_size, max_boxes=None, drop_remainder=False):
    """Batches ``transform_sample`` elements: images zero-padded to the largest of the batch,
    boxes / labels padded with -1 to ``max_boxes`` (None: the largest count of the batch)."""
    return ds.padded_batch(
        batch_size,
        padded_shapes=([None, None, 3], {"boxes": [max_boxes, 4], "labels": [max_boxes], "image_shape": [2]}),
        padding_values=(0.0, {"boxes": BOX_PADDING, "labels": LABEL_PADDING, "image_shape": 0}),
        drop_remainder=drop_remainder,
    )


def usable_records(dataset, check_files="header", max_boxes=None):
    """The records a pipeline reads: unreadable files left out and reported, images over
    ``max_boxes`` named in ``dataset.problems`` (``records.report_boxes_over``).

    Raises:
        ValueError: no image file is readable (one line: count, first file, image folder).
    """
    if check_files:
        check_image_files(dataset, check_files)
    records = require_readable_images(dataset, "training")
    if dataset.unreadable:
        logger.warning(
            "%s: %d of %d images left out as unreadable (ids %s)",
            dataset.annotation_file,
            len(dataset.unreadable),
            len(dataset.records),
            first_ids(dataset.unreadable, 10),
        )
    if max_boxes is not None:
        report_boxes_over(dataset, max_boxes, records)
    return records


def resolve_seed(shuffle_seed, training, where):
    """``shuffle_seed``, or a fresh one (logged when training: a run is only reproducible with it)."""
    if shuffle_seed is None:
        shuffle_seed = int(np.random.SeedSequence().generate_state(1)[0])
        if training:
            logger.warning("%s: no shuffle_seed given, using shuffle_seed=%d", where, shuffle_seed)
    return shuffle_seed


def steps_per_epoch(dataset, batch_size, drop_remainder=False, check_files="header"):
    """Batches in one epoch of ``build_dataset`` over the usable images of ``dataset``."""
    num = len(check_image_files(dataset, check_files) if check_files else dataset.usable_records())
    return num // batch_size if drop_remainder else math.ceil(num / batch_size)


def scale_and_flip_boxes(boxes, original_size, resized_size, flip):
    """Boxes of the original image in the resized (and possibly mirrored) image.

    Args:
        boxes: float32 ``[K, 4]`` xyxy original pixels.
        original_size: ``(h, w)`` of the decoded image.
        resized_size: ``(new_h, new_w)`` after the keep-ratio resize (unpadded).
        flip: bool scalar tensor, mirror horizontally in the resized image.

    Returns:
        float32 ``[K, 4]`` xyxy resized pixels, clipped to ``[0, new_w] x [0, new_h]``.
    """
    h, w = (tf.cast(v, tf.float32) for v in original_size)
    new_h, new_w = (tf.cast(v, tf.float32) for v in resized_size)
    factors = tf.stack([new_w / w, new_h / h, new_w / w, new_h / h])
    limits = tf.stack([new_w, new_h, new_w, new_h])
    boxes = tf.clip_by_value(boxes * factors, 0.0, limits)
    flipped = tf.stack([new_w - boxes[:, 2], boxes[:, 1], new_w - boxes[:, 0], boxes[:, 3]], axis=1)
    return tf.where(flip, flipped, boxes)


def sample_size(height, width, seed, epoch, position, scale, multiscale_range, flip_prob):
    """Resized ``(new_h, new_w)`` and the flip of the image at ``position`` of epoch ``epoch``.

    A pure function of ``(seed, epoch, position)`` and the original ``(height, width)``: the
    grouped batch plan calls it on the annotation sizes, the loader on the decoded image, and
    both get the same answer (parallelism never changes the data).
    """
    sample_seed = tf.random.experimental.stateless_fold_in(tf.stack([seed, epoch]), position)
    scale_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(sample_seed, 2))
    if multiscale_range is None:
        new_h, new_w = preprocess.rescale_size(height, width, scale)
    else:
        short = tf.random.stateless_uniform(
            [], scale_seed, minval=multiscale_range[0], maxval=multiscale_range[1] + 1, dtype=tf.int32
        )
        new_h, new_w = preprocess.rescale_size(height, width, (max(scale), short))
    flip = tf.random.stateless_uniform([], flip_seed) < flip_prob
    return new_h, new_w, flip


def _make_loader(records, seed, scale, multiscale_range, flip_prob, max_boxes):
    """The per-image map function ``(record index, epoch, position) -> (image, targets)``."""
    file_names = tf.constant([r["file_name"] for r in records])
    # The annotation's size decides the frame an image is read in (``image_io.frame_orientation``).
    sizes = tf.constant([[r["height"], r["width"]] for r in records], tf.int32)
    counts = np.array([len(r["labels"]) for r in records], np.int64)
    splits = tf.constant(np.concatenate([[0], np.cumsum(counts)]), tf.int64)
    all_boxes = tf.constant(np.concatenate([r["boxes"] for r in records]).reshape(-1, 4), tf.float32)
    all_labels = tf.constant(np.concatenate([r["labels"] for r in records]), tf.int32)

    def load(index, epoch, position):
        image = decode_image_tf(file_names[index], sizes[index, 0], sizes[index, 1])
        height, width = tf.shape(image)[0], tf.shape(image)[1]
        new_h, new_w, flip = sample_size(height, width, seed, epoch, position, scale, multiscale_range, flip_prob)

        boxes = all_boxes[splits[index] : splits[index + 1]]
        labels = all_labels[splits[index] : splits[index + 1]]
        if max_boxes is not None:
            boxes, labels = boxes[:max_boxes], labels[:max_boxes]
        return transform_sample(image, boxes, labels, new_h, new_w, flip)

    return load


def transform_sample(image, boxes, labels, new_h, new_w, flip):
    """The per-image training transform: resize, flip, normalise, pad to a multiple of 32.

    Args:
        image: uint8 ``[H, W, 3]``.
        boxes: float32 ``[K, 4]`` xyxy pixels of ``image``.
        labels: int32 ``[K]``.
        new_h, new_w: the resized size (``preprocess.rescale_size``).
        flip: bool scalar tensor.

    Returns:
        ``(image float32 [h, w, 3], {"boxes", "labels", "image_shape": [2]})`` as one element of
        ``build_dataset`` before batching.
    """
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    image = preprocess.resize_image(image, new_h, new_w)
    image = tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)
    pad_h, pad_w = preprocess.padded_size(new_h), preprocess.padded_size(new_w)
    image = preprocess.pad_to_size(preprocess.normalize(image), pad_h, pad_w)
    boxes = scale_and_flip_boxes(boxes, (height, width), (new_h, new_w), flip)
    return image, {"boxes": boxes, "labels": labels, "image_shape": tf.stack([pad_h, pad_w])}
