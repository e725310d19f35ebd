"""Inference post-processing of the official test path (``GFocalHead._get_bboxes_single`` +
``mmdet/core/post_processing/bbox_nms.py multiclass_nms``; ``docs/parity.md``, Post-processing).

Per image: per-level top-``nms_pre`` points by their best class score, integral decoding times
stride, boxes clipped to the resized (unpadded) image, rescaled to original pixels, every
(point, class) pair with score ``> score_threshold`` enters class-aware NMS that suppresses
``IoU > iou_threshold``, the best ``max_detections`` are kept, and detections of the redundant
background column (class index ``num_classes``) are dropped at the end, exactly as
``bbox2result`` drops them.

Everything is ``keras.ops`` and runs on every backend, except the NMS on the TensorFlow backend
(``class_nms``): there ``tf.image.combined_non_max_suppression`` (strict ``>`` on both thresholds,
like mmcv; TensorFlow imported only on that path) is kept because in a TF graph it is 5-40x
faster than the ``keras.ops`` loop of ``ops.nms.per_class_nms`` that JAX and PyTorch use (R-50
sized: 3350 points x 81 classes, 150-1750 candidates, 2 CPU cores: 2-8 ms against 33-87 ms).
Both give the same detections (up to exact score ties). On TensorFlow, image sizes may be
dynamic (export); on JAX and PyTorch the shapes are static.
"""

import keras
from keras import ops

from gflv2_keras.ops.box_distributions import kept_box_distributions
from gflv2_keras.ops.boxes import distance_to_boxes
from gflv2_keras.ops.integral import integral_distances
from gflv2_keras.ops.nms import per_class_nms


def select_level_candidates(confidence, box_logits, points, point_strides, level_sizes, nms_pre=1000):
    """Keep the ``nms_pre`` best points of each level (all of a smaller level).

    Args:
        confidence: ``[B, N, C']`` joint probabilities; box_logits: ``[B, N, 4(R+1)]``.
        points: ``[N, 2]``; point_strides: ``[N]``.
        level_sizes: ``[(h, w), ...]`` python ints or scalar tensors.

    Returns:
        ``(confidence [B, K, C'], box_logits [B, K, 4(R+1)], points [B, K, 2], strides [B, K])`` with
        ``K = sum_l min(nms_pre, h_l * w_l)``, level by level, best first within a level.
    """
    out = ([], [], [], [])
    start = 0
    for h, w in level_sizes:
        count = h * w
        stop = start + count
        lvl_scores = confidence[:, start:stop]
        k = ops.minimum(count, nms_pre) if not isinstance(count, int) else min(count, nms_pre)
        _, index = ops.top_k(ops.max(lvl_scores, axis=-1), k)
        out[0].append(ops.take_along_axis(lvl_scores, index[..., None], axis=1))
        out[1].append(ops.take_along_axis(box_logits[:, start:stop], index[..., None], axis=1))
        out[2].append(ops.take(points[start:stop], index, axis=0))
        out[3].append(ops.take(point_strides[start:stop], index, axis=0))
        start = stop
    return tuple(ops.concatenate(parts, axis=1) for parts in out)


def decode_boxes(box_logits, points, strides, image_shape, reg_max=16):
    """Integral decoding to pixel boxes clipped to the resized image.

    Args:
        box_logits: ``[B, K, 4(R+1)]``; points ``[B, K, 2]``; strides ``[B, K]``.
        image_shape: ``[B, 2]`` ``(h, w)`` of the resized, unpadded image.

    Returns:
        ``[B, K, 4]`` xyxy boxes in network-input pixels.
    """
    distances = integral_distances(box_logits, reg_max) * strides[..., None]
    height = image_shape[:, 0:1]
    width = image_shape[:, 1:2]
    return distance_to_boxes(points, distances, max_shape=(height, width))


def decode_candidates(
    confidence, box_logits, points, point_strides, level_sizes, image_info, reg_max=16, nms_pre=1000,
    return_candidates=False,
):  # fmt: skip
    """Everything of ``postprocess`` before NMS: per-level top-``nms_pre`` points, decoded.

    Args: as ``postprocess``; ``return_candidates`` also returns the candidates' raw data.

    Returns:
        ``(boxes [B, K, 4] xyxy original image pixels, confidence [B, K, C'] float32)`` with ``K``
        as in ``select_level_candidates``; NMS of these gives ``postprocess``'s detections
        (the export's NumPy NMS completes runtimes that cannot run it in the graph). With
        ``return_candidates``, followed by the candidates' ``box_logits [B, K, 4(R+1)]`` float32,
        ``points [B, K, 2]`` (network-input pixels) and ``strides [B, K]``.
    """
    confidence = ops.cast(confidence, "float32")
    box_logits = ops.cast(box_logits, "float32")
    cand_scores, cand_logits, cand_points, cand_strides = select_level_candidates(
        confidence, box_logits, points, point_strides, level_sizes, nms_pre
    )
    boxes = decode_boxes(cand_logits, cand_points, cand_strides, image_info["image_shape"], reg_max)
    factor = image_info["scale_factor"]
    boxes = boxes / ops.concatenate([factor[:, 1:2], factor[:, 0:1], factor[:, 1:2], factor[:, 0:1]], -1)[:, None]
    if return_candidates:
        return boxes, cand_scores, cand_logits, cand_points, cand_strides
    return boxes, cand_scores


def postprocess(
    confidence,
    box_logits,
    points,
    point_strides,
    level_sizes,
    image_info,
    num_classes,
    reg_max=16,
    nms_pre=1000,
    score_threshold=0.05,
    iou_threshold=0.6,
    max_detections=100,
    return_box_distributions=False,
    quality_fn=None,
    reg_topk=4,
):
    """Raw head outputs → final detections in original image pixels.

    Args:
        confidence: ``[B, N, C']`` per-class joint probabilities (``C' = num_classes + 1``
            for GFLv2), the ``"confidence"`` output of ``GFLV2Detector.call``.
        box_logits: ``[B, N, 4(R+1)]`` scaled logits.
        points, point_strides: see ``boxes.anchor_points``.
        level_sizes: feature sizes per level.
        image_info: ``{"image_shape": [B, 2] (h, w) resized unpadded,
            "scale_factor": [B, 2] (h, w) resized / original}``.
        return_box_distributions: also return what the head knew about each kept box (off by
            default: the default path is unchanged and pays nothing).
        quality_fn: GFLv2 only, kept box logits ``[B, K, 4(R+1)]`` → DGQP quality ``[B, K]``
            (``GFLV2Detector`` passes its head's); ``None``: no quality (GFLv1).
        reg_topk: DGQP's top-k, the bins ``side_topk_mass`` sums.

    Returns:
        Dict of ``"boxes"`` float32 ``[B, max_detections, 4]`` xyxy original pixels,
        ``"confidence"`` float32 ``[B, max_detections]``, ``"labels"`` int32
        ``[B, max_detections]`` (0-based), ``"num_detections"`` int32 ``[B]``; entries past
        ``num_detections`` are -1. With ``return_box_distributions=True`` also the entries of
        ``ops.box_distributions.kept_box_distributions`` (classification probability, DGQP
        quality when ``quality_fn`` is given, per-side distribution statistics), computed for
        the kept detections only; ``reg_topk`` is DGQP's top-k.
    """
    candidates = decode_candidates(
        confidence, box_logits, points, point_strides, level_sizes, image_info, reg_max=reg_max, nms_pre=nms_pre,
        return_candidates=return_box_distributions,
    )  # fmt: skip
    boxes, cand_scores = candidates[:2]
    nms_boxes, nms_scores, nms_labels, num_valid = class_nms(
        boxes, cand_scores, max_detections, iou_threshold, score_threshold
    )
    detections = _drop_background(nms_boxes, nms_scores, ops.cast(nms_labels, "int32"), num_valid, num_classes)
    if return_box_distributions:
        detections.update(
            kept_box_distributions(
                detections, *candidates, image_info["scale_factor"], reg_max=reg_max, topk=reg_topk,
                quality_fn=quality_fn,
            )  # fmt: skip
        )
    return detections


def class_nms(boxes, scores, max_detections, iou_threshold, score_threshold):
    """Class-aware NMS of ``postprocess``: the backend's fastest exact implementation.

    Args:
        boxes: float32 ``[B, K, 4]`` xyxy pixels (one box per point); scores: float32 ``[B, K, C']``.
        max_detections, iou_threshold, score_threshold: as ``postprocess``.

    Returns:
        ``(boxes [B, M, 4] float32, scores [B, M] float32 descending, labels [B, M] int,
        num_valid [B] int32)``, rows past ``num_valid`` 0: ``ops.nms.per_class_nms``, or on the
        TensorFlow backend ``tf.image.combined_non_max_suppression`` (same detections, up to
        exact score ties; dynamic ``K`` allowed).
    """
    if keras.config.backend() == "tensorflow":
        import tensorflow as tf

        return tf.image.combined_non_max_suppression(
            boxes[:, :, None, :],
            scores,
            max_output_size_per_class=max_detections,
            max_total_size=max_detections,
            iou_threshold=iou_threshold,
            score_threshold=score_threshold,
            clip_boxes=False,
        )
    return per_class_nms(boxes, scores, max_detections, iou_threshold, score_threshold)


def _drop_background(boxes, scores, labels, num_valid, num_classes):
    """Remove detections of class ``num_classes`` and pad everything after the valid ones with -1."""
    slots = ops.arange(ops.shape(scores)[1])[None, :]
    keep = (slots < num_valid[:, None]) & (labels < num_classes)
    # Stable compaction: kept entries keep their (score-descending) order and move to the front.
    order = ops.argsort(ops.where(keep, slots, slots + ops.shape(scores)[1]), axis=1)
    keep = ops.take_along_axis(keep, order, axis=1)
    boxes = ops.take_along_axis(boxes, order[..., None], axis=1)
    scores = ops.take_along_axis(scores, order, axis=1)
    labels = ops.take_along_axis(labels, order, axis=1)
    return {
        "boxes": ops.where(keep[..., None], boxes, -1.0),
        "confidence": ops.where(keep, scores, -1.0),
        "labels": ops.where(keep, labels, -1),
        "num_detections": ops.sum(ops.cast(keep, "int32"), axis=1),
    }
