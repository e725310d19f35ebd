"""The GFL training loss of a batch: ATSS targets, then QFL + DFL + GIoU.

Follows ``GFocalHead.loss`` and ``GFocalHead.loss_single`` (``mmdet/models/dense_heads/gfocal_head.py``);
the normalisers and their two deliberate differences are in ``docs/parity.md`` (Loss normalisation).

The official head computes the losses level by level and sums the levels; every per-level term
is a sum over points with a global normaliser, so summing over all points at once is the same.

Written with ``keras.ops``: the loss and ATSS run on the JAX, PyTorch and TensorFlow backends
with the same values (``tests/losses/test_backends.py``). Only the two replica helpers know about
``tf.distribute``, and only on the TensorFlow backend (elsewhere they return their input).
"""

import keras
import numpy as np
from keras import ops

from gflv2_keras.assigners.atss import atss_assign
from gflv2_keras.ops.boxes import aligned_iou, anchor_boxes, boxes_to_distances, distance_to_boxes
from gflv2_keras.ops.integral import integral_distances, side_logits
from gflv2_keras.losses.element_losses import distribution_focal_loss, giou_loss, quality_focal_loss

# Floor of the GIoU/DFL normaliser, so that a batch without positives gives 0 (numerators are 0).
_MIN_WEIGHT_SUM = float(np.finfo(np.float32).tiny)


def replica_mean(x):
    """Mean of ``x`` over the replicas of the current ``tf.distribute`` replica context (TensorFlow backend).

    All-reduces SUM and divides by ``num_replicas_in_sync`` (float division; the official
    ``reduce_mean`` of an int64 tensor floor-divided, ``docs/parity.md``). Outside a replica context,
    with a single replica, or on another backend (JAX, PyTorch: no ``tf.distribute``), returns
    ``x`` unchanged.
    """
    if keras.config.backend() != "tensorflow":
        return x
    import tensorflow as tf

    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return x
    return context.all_reduce(tf.distribute.ReduceOp.SUM, x) / context.num_replicas_in_sync


def scale_for_replicas(loss):
    """The loss a replica differentiates: ``loss / num_replicas_in_sync`` of the current ``tf.distribute`` strategy.

    Under a ``tf.distribute`` strategy with ``R`` replicas Keras' optimizer *sums* the replicas'
    gradients, and the loss of the global batch is the mean of the replicas' losses (their
    normalisers are already replica means, ``replica_mean``), so each replica returns ``loss /
    R`` (Keras' own ``compute_loss`` does the same). ``loss`` is unchanged with one replica and
    on the JAX and PyTorch backends (no ``tf.distribute``). ``loss * num_replicas_in_sync``
    (``replicas_in_sync()``) undoes it for logging.
    """
    replicas = replicas_in_sync()
    return loss if replicas == 1 else loss * (1.0 / replicas)


def replicas_in_sync():
    """``num_replicas_in_sync`` of the current ``tf.distribute`` strategy (TensorFlow backend), else 1."""
    if keras.config.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return int(tf.distribute.get_strategy().num_replicas_in_sync)


def valid_point_mask(sizes, strides, image_shapes):
    """Which points of a padded batch lie inside each image's own padded extent (``AnchorGenerator.valid_flags``).

    Per level of stride ``s`` and size ``(feat_h, feat_w)``, the valid grid of an image with
    padded shape ``(pad_h, pad_w)`` is ``min(ceil(pad_h / s), feat_h)`` rows by
    ``min(ceil(pad_w / s), feat_w)`` columns (mmdet ``valid_flags``).

    Args:
        sizes: ``[(feat_h, feat_w), ...]`` python ints per level (``boxes.level_sizes``).
        strides: stride of each level.
        image_shapes: ``[B, 2]`` int ``(pad_h, pad_w)`` of each image inside the batch.

    Returns:
        ``[B, N]`` bool in the flattened point order of ``boxes.anchor_points``.
    """
    image_shapes = ops.cast(image_shapes, "int32")
    masks = []
    for (feat_h, feat_w), s in zip(sizes, strides):
        valid_hw = ops.minimum((image_shapes + (s - 1)) // s, ops.convert_to_tensor([feat_h, feat_w], "int32"))
        rows = ops.arange(feat_h, dtype="int32")[None, :, None] < valid_hw[:, 0, None, None]
        cols = ops.arange(feat_w, dtype="int32")[None, None, :] < valid_hw[:, 1, None, None]
        masks.append(ops.reshape(rows & cols, (-1, feat_h * feat_w)))
    return ops.concatenate(masks, axis=1)


def gfl_loss(
    confidence,
    box_logits,
    points,
    point_strides,
    num_level_points,
    gt_boxes,
    gt_labels,
    valid_points,
    num_classes,
    reg_max=16,
    loss_weights=(1.0, 0.25, 2.0),
    topk=9,
):
    """QFL, DFL and GIoU losses of a batch, normalised as the official ``GFocalHead.loss``.

    * Targets: ATSS on the 8·s square anchors (``atss_assign``).
    * Positives are decoded in grid units: centre ``point / stride``, distances
      ``integral_distances(box_logits)``; targets are ``target_box / stride``.
    * QFL: IoU quality target ``IoU(pred.detach(), target)`` at the label column; per point sum
      over all ``C'`` columns times ``label_weight``, divided by ``num_total_samples =
      max(replica_mean(Σ_img max(#pos_img, 1)), 1)``.
    * GIoU and DFL of positives are weighted by the detached max joint score over all ``C'``
      columns; DFL sums the 4 sides and divides by 4. Both are divided by
      ``replica_mean(Σ weights)``.

    Deviations from the official code, on purpose: normalisers are averaged over replicas with
    float division (the official int64 ``reduce_mean`` floor-divided, ``docs/parity.md``), and the
    weight normaliser is clamped to ≥ float32 ``tiny`` so a batch with no positives at all gives
    GIoU = DFL = 0 instead of the official 0/0 = NaN.

    Args:
        confidence: ``[B, N, C']`` per-class joint probabilities of the head (``C' = num_classes + 1`` for
            GFLv2's redundant extra column, ``num_classes`` for GFLv1).
        box_logits: ``[B, N, 4 * (reg_max + 1)]`` side-major regression logits, already
            multiplied by the level's Scale.
        points: ``[N, 2]`` ``(x, y)`` pixels; point_strides: ``[N]`` (``boxes.anchor_points``).
        num_level_points: python ints, points per level.
        gt_boxes: ``[B, M, 4]`` xyxy input pixels; gt_labels: ``[B, M]`` int, ``-1`` = padding.
        valid_points: ``[B, N]`` bool (``valid_point_mask``).
        num_classes: number of foreground classes.
        reg_max: largest distance bin.
        loss_weights: ``(qfl, dfl, giou)`` weights.
        topk: ATSS candidates per level.

    Returns:
        ``{"qfl", "dfl", "giou"}`` scalar losses (dtype of ``box_logits``).
    """
    qfl_weight, dfl_weight, giou_weight = loss_weights
    confidence, box_logits = ops.convert_to_tensor(confidence), ops.convert_to_tensor(box_logits)
    dtype = box_logits.dtype
    points = ops.cast(points, dtype)
    point_strides = ops.cast(point_strides, dtype)
    targets = atss_assign(
        anchor_boxes(points, point_strides),
        num_level_points,
        ops.cast(gt_boxes, dtype),
        gt_labels,
        valid_points,
        num_classes,
        topk=topk,
    )
    positive = targets["positive"]
    pos_float = ops.cast(positive, dtype)

    strides = point_strides[:, None]
    centres = points / strides
    pred_boxes = distance_to_boxes(centres, integral_distances(box_logits, reg_max))  # [B, N, 4]
    target_boxes = targets["target_boxes"] / strides
    quality = pos_float * aligned_iou(ops.stop_gradient(pred_boxes), target_boxes)
    weights = pos_float * ops.max(ops.stop_gradient(confidence), axis=-1)

    per_point_qfl = quality_focal_loss(confidence, targets["labels"], quality)
    num_pos = ops.sum(pos_float, axis=1)
    num_total_samples = ops.maximum(replica_mean(ops.sum(ops.maximum(num_pos, 1.0))), 1.0)
    qfl = ops.sum(targets["label_weights"] * per_point_qfl) / num_total_samples

    weight_sum = ops.maximum(replica_mean(ops.sum(weights)), _MIN_WEIGHT_SUM)
    giou = ops.sum(weights * giou_loss(pred_boxes, target_boxes)) / weight_sum
    distance_targets = boxes_to_distances(centres, target_boxes, max_distance=reg_max)
    per_side_dfl = distribution_focal_loss(side_logits(box_logits, reg_max), distance_targets)
    dfl = ops.sum(weights * ops.mean(per_side_dfl, axis=-1)) / weight_sum
    return {"qfl": qfl_weight * qfl, "dfl": dfl_weight * dfl, "giou": giou_weight * giou}


__all__ = ["gfl_loss", "replica_mean", "replicas_in_sync", "scale_for_replicas", "valid_point_mask"]
