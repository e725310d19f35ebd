"""Orientation-grouped training batches, each padded to the smallest fitting static canvas.

The official sampler (``mmdet/datasets/samplers/group_sampler.py GroupSampler``; the distributed
``DistributedGroupSampler`` the same per GPU) splits the images by ``flag = width / height > 1``
(``mmdet/datasets/custom.py CustomDataset._set_group_flag``), shuffles each group, pads each
group to a multiple of ``samples_per_gpu`` with extra images drawn from the group itself, cuts
the groups into batches and shuffles the batches; ``collate`` then pads each batch to its
largest image. An epoch is therefore ``sum_g ceil(n_g / B)`` batches of ``B`` images of one
orientation.

``build_grouped_dataset`` does the same with stateless randomness, so the data are a pure
function of ``(seed, epoch, position)`` and a resumed run sees exactly the same batches:

* groups: landscape ``width >= height`` (square images included) and portrait (the official
  flag puts squares with the portraits; the canvases make the two choices cost the same);
* epoch ``e``: ``order = stateless_shuffle(range(n), (seed, e))``; each group keeps that order,
  is completed to a multiple of ``B`` with its own first images, and is cut into batches; the
  batches of both groups are shuffled with a seed folded from ``(seed, e)``;
* the image at slot ``i`` of batch ``j`` has position ``p = j * B + i`` (scale and flip from
  ``(seed, e, p)``, ``pipeline.sample_size``);
* before any file is read, the resized sizes of the batch (from the annotation sizes) choose
  its canvas (``canvas.choose_canvas``) and every image is padded straight to it.

A global batch has one orientation for all replicas (static shapes across replicas), where the
official sampler groups per GPU.
"""

import numpy as np
import tensorflow as tf

from gflv2_keras.data.canvas import choose_canvas, training_canvas, training_canvases
from gflv2_keras.data.pipeline import (
    _ENDLESS,
    _make_loader,
    pad_batch,
    resolve_seed,
    sample_size,
    usable_records,
)
from gflv2_keras.models import preprocessing as preprocess


def orientation_groups(records):
    """``(landscape, portrait)`` int64 arrays of record indices (landscape: ``width >= height``)."""
    landscape = np.array([r["width"] >= r["height"] for r in records], bool)
    return np.flatnonzero(landscape), np.flatnonzero(~landscape)


def grouped_steps_per_epoch(num_landscape, num_portrait, batch_size):
    """Batches of one grouped epoch: ``ceil(n_landscape / B) + ceil(n_portrait / B)`` (``GroupSampler.__len__ / B``)."""
    return -(-num_landscape // batch_size) + -(-num_portrait // batch_size)


def batch_plan(records, batch_size, scale, multiscale_range, flip_prob, seed, epoch=0, num_epochs=1, skip_batches=0,
               canvases=None):
    """The stream of grouped batches, as indices and sizes only (no file is read).

    Returns:
        ``(plan, canvases)``: ``plan`` is a ``tf.data.Dataset`` of dicts ``index [B]`` int64
        record indices, ``epoch`` int64, ``position [B]`` int64, ``size [B, 2]`` int32 resized
        ``(h, w)`` padded to 32, ``canvas [2]`` int32 ``(H, W)``, ``batch`` int64 global batch
        number; ``canvases`` the ``(H, W)`` list used.
    """
    canvases = canvases or training_canvases(scale, multiscale_range)
    landscape, portrait = orientation_groups(records)
    per_epoch = grouped_steps_per_epoch(len(landscape), len(portrait), batch_size)
    first_epoch = epoch + skip_batches // per_epoch
    first_batch = skip_batches % per_epoch
    end_epoch = _ENDLESS if num_epochs is None else epoch + num_epochs
    seed = tf.constant(seed, tf.int64)
    is_landscape = tf.constant([r["width"] >= r["height"] for r in records])
    sizes = tf.constant([[r["height"], r["width"]] for r in records], tf.int32)
    canvas_table = tf.constant(np.asarray(canvases, np.int32))

    def epoch_batches(e):
        key = tf.stack([seed, e])
        order = tf.random.experimental.stateless_shuffle(tf.range(len(records), dtype=tf.int64), seed=key)
        groups = []
        for flag in (True, False):
            members = tf.boolean_mask(order, tf.equal(tf.gather(is_landscape, order), flag))
            count = tf.size(members, out_type=tf.int64)
            padded_count = (count + batch_size - 1) // batch_size * batch_size
            groups.append(tf.reshape(tf.gather(members, tf.range(padded_count) % tf.maximum(count, 1)), [-1, batch_size]))
        batches = tf.concat(groups, axis=0)
        batch_key = tf.random.experimental.stateless_fold_in(key, 2**31 - 1)
        batches = tf.gather(batches, tf.random.experimental.stateless_shuffle(tf.range(per_epoch), seed=batch_key))
        start = tf.where(e == first_epoch, tf.constant(first_batch, tf.int64), tf.constant(0, tf.int64))
        numbers = tf.range(start, per_epoch, dtype=tf.int64)
        return tf.data.Dataset.from_tensor_slices((batches[start:], tf.fill([per_epoch - start], e), numbers))

    def plan_batch(index, e, number):
        position = number * batch_size + tf.range(batch_size, dtype=tf.int64)

        def padded(args):
            i, p = args
            new_h, new_w, _ = sample_size(sizes[i, 0], sizes[i, 1], seed, e, p, scale, multiscale_range, flip_prob)
            return tf.stack([preprocess.padded_size(new_h), preprocess.padded_size(new_w)])

        size = tf.map_fn(padded, (index, position), fn_output_signature=tf.int32)
        largest = tf.reduce_max(size, axis=0)
        choice = choose_canvas(canvases, largest[0], largest[1])
        tf.debugging.assert_non_negative(choice, message=f"a training batch fits none of the canvases {canvases}")
        return {
            "index": index,
            "epoch": e,
            "position": position,
            "size": size,
            "canvas": canvas_table[choice],
            "batch": e * per_epoch + number,
        }

    plan = tf.data.Dataset.range(first_epoch, end_epoch).flat_map(epoch_batches)
    return plan.map(plan_batch, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True), canvases


def build_grouped_dataset(
    dataset,
    batch_size,
    scale=preprocess.DEFAULT_SCALE,
    multiscale_range=None,
    flip_prob=0.5,
    shuffle_seed=None,
    max_boxes=None,
    epoch=0,
    num_epochs=None,
    skip_batches=0,
    check_files="header",
    canvases=None,
):
    """The training stream of orientation-grouped batches on static canvases (see the module docstring).

    Arguments as ``pipeline.build_dataset`` (training only); ``canvases`` defaults to
    ``canvas.training_canvases(scale, multiscale_range)``. Every batch has exactly
    ``batch_size`` images (a group's last batch is completed with its own first images, as
    ``GroupSampler``), so ``skip_batches=k`` resumes at global batch ``k``.

    An image that fails to decode (after the ``check_files`` pre-check) loses its whole batch,
    which is skipped with a TensorFlow warning; a file whose size differs from its annotation so
    that it no longer fits the planned canvas is dropped the same way.

    Returns:
        ``tf.data.Dataset`` of ``(images, targets)`` as ``build_dataset``'s, with ``images``
        ``[B, H, W, 3]`` for ``(H, W)`` one of the canvases (a concrete shape per batch; the
        dataset's spec has ``None`` for ``H`` and ``W``).
    """
    if batch_size < 1:
        raise ValueError(f"build_grouped_dataset: batch_size must be >= 1, got {batch_size}")
    records = usable_records(dataset, check_files, max_boxes)
    shuffle_seed = resolve_seed(shuffle_seed, True, "build_grouped_dataset")
    plan, canvases = batch_plan(records, batch_size, scale, multiscale_range, flip_prob, shuffle_seed, epoch,
                                num_epochs, skip_batches, canvases)
    load = _make_loader(records, tf.constant(shuffle_seed, tf.int64), scale, multiscale_range, flip_prob, max_boxes)

    def per_image(batch):
        count = tf.shape(batch["index"], out_type=tf.int64)[0]
        return tf.data.Dataset.from_tensor_slices(
            (batch["index"], tf.fill([count], batch["epoch"]), batch["position"],
             tf.tile(batch["canvas"][None], [count, 1]), tf.fill([count], batch["batch"]))
        )

    def load_to_canvas(index, epoch_, position, canvas, number):
        image, targets = load(index, epoch_, position)
        shape = tf.shape(image)
        tf.debugging.assert_less_equal(shape[:2], canvas, message="image larger than its batch's canvas")
        return number, preprocess.pad_to_size(image, canvas[0], canvas[1]), targets

    ds = plan.flat_map(per_image)
    ds = ds.map(load_to_canvas, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors(log_warning=True)
    ds = ds.group_by_window(
        key_func=lambda number, image, targets: number,
        reduce_func=lambda _, window: pad_batch(window.map(lambda n, image, targets: (image, targets)),
                                                batch_size, max_boxes, drop_remainder=True),
        window_size=batch_size,
    )
    return ds.prefetch(tf.data.AUTOTUNE)


def padded_pixel_ratio(records, batch_size, scale, multiscale_range=None, seed=0, epochs=1, canvases=None):
    """Canvas pixels of the grouped batches over the official per-batch padding.

    The official padding of a batch is its largest image, each side rounded up to 32
    (``mmcv/parallel/collate.py collate``); the ratio says how much more the static canvases
    compute. Reads no file: sizes come from the annotations (``record["height"]``, ``["width"]``).

    Returns:
        dict: ``ratio`` (canvas / official), ``square_ratio`` (the single square canvas of
        ``canvas.training_canvas`` / official), ``canvases`` (count), ``batches``.
    """
    plan, canvases = batch_plan(records, batch_size, scale, multiscale_range, 0.0, seed, num_epochs=epochs,
                                canvases=canvases)
    square = np.prod(training_canvas(scale, multiscale_range))
    canvas_pixels = official = batches = 0
    for batch in plan.as_numpy_iterator():
        canvas_pixels += int(np.prod(batch["canvas"]))
        official += int(np.prod(batch["size"].max(axis=0)))
        batches += 1
    return {
        "ratio": canvas_pixels / official,
        "square_ratio": batches * square / official,
        "canvases": len(canvases),
        "batches": batches,
    }


def grouped_epoch_steps(dataset, batch_size, check_files="header"):
    """Batches in one epoch of ``build_grouped_dataset`` over the usable images of ``dataset``."""
    landscape, portrait = orientation_groups(usable_records(dataset, check_files))
    return grouped_steps_per_epoch(len(landscape), len(portrait), batch_size)
