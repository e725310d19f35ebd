"""What GFLv2 knows about each kept box: its side distributions and its localisation quality.

GFL regresses each box side (left, top, right, bottom) as a discrete distribution over the
distances ``0, 1, ..., reg_max`` (grid units; one bin = the level's stride in network-input
pixels) and GFLv2's DGQP reads the top-``k`` probabilities of each side to predict the
localisation quality (``mmdet/models/dense_heads/gfocal_head.py GFocalHead.forward_single``).
The official code drops all of it after NMS; ``kept_box_distributions`` recovers it for the
detections NMS kept, and only for those, so it costs next to nothing and only when asked.

NMS returns no candidate indices (``tf.image.combined_non_max_suppression``, the TensorFlow
backend's NMS, has none). Both NMS paths of ``postprocess.class_nms`` (that one with
``clip_boxes=False``, and ``nms.per_class_nms`` on every other backend) output their input rows
gathered unchanged, so a kept detection is found again among its image's candidates as the
candidate with the same box and, for the detection's class, the same score
(``match_candidates``, plain ``keras.ops``; ``tests/ops/test_box_distributions.py`` finds the
kept points independently, from the raw head outputs, and checks the statistics of those).
Candidates indistinguishable on (box, class, score) would have to come from the same anchor
point with the same logits, so any of them carries the same statistics.
"""

from keras import ops

from gflv2_keras.ops.integral import integral_distances, side_logits

SIDES = ("left", "top", "right", "bottom")


def side_statistics(box_logits, reg_max=16, topk=4):
    """Statistics of each side's discrete distribution, in grid (bin) units.

    Args:
        box_logits: ``[..., 4 * (reg_max + 1)]`` side-major scaled logits (the ``"box_logits"``
            output of ``GFLV2Detector.call``).
        reg_max: largest bin value.
        topk: how many of the largest bin probabilities ``topk_mass`` sums (DGQP's ``reg_topk``).

    Returns:
        Dict of ``"expected"`` ``[..., 4]`` mean distance (``integral_distances``: what the box
        uses), ``"std"`` ``[..., 4]`` standard deviation, ``"topk_mass"`` ``[..., 4]`` sum of
        the ``topk`` largest probabilities, ``"probs"`` ``[..., 4, reg_max + 1]`` the
        distribution itself; sides ordered (left, top, right, bottom), distances in bins.
    """
    probs = ops.softmax(side_logits(box_logits, reg_max), axis=-1)
    expected = integral_distances(box_logits, reg_max)
    bins = ops.arange(reg_max + 1, dtype=probs.dtype)
    variance = ops.sum(probs * ops.square(bins - expected[..., None]), axis=-1)
    top, _ = ops.top_k(probs, topk, sorted=False)
    return {
        "expected": expected,
        "std": ops.sqrt(ops.maximum(variance, 0.0)),
        "topk_mass": ops.sum(top, axis=-1),
        "probs": probs,
    }


def match_candidates(boxes, confidence, labels, cand_boxes, cand_confidence):
    """Index of each detection among its image's NMS candidates.

    Args:
        boxes: ``[B, K, 4]`` detections' boxes, as NMS returned them (same pixels as ``cand_boxes``).
        confidence: ``[B, K]`` detections' scores; labels: ``[B, K]`` int class ids (-1 = padding).
        cand_boxes: ``[B, M, 4]`` and cand_confidence: ``[B, M, C']``: the NMS input.

    Returns:
        ``[B, K]`` int32 candidate index minimising ``max(|box - cand_box|, |score -
        cand_score[label]|)`` (0 for an exact match); arbitrary for padding rows.
    """
    classes = ops.maximum(ops.cast(labels, "int32"), 0)
    per_class = ops.transpose(ops.cast(cand_confidence, "float32"), (0, 2, 1))  # [B, C', M]
    shape = ops.shape(per_class)
    index = ops.broadcast_to(classes[..., None], (shape[0], ops.shape(classes)[1], shape[2]))
    cand_scores = ops.take_along_axis(per_class, index, axis=1)  # [B, K, M]: each candidate's score for the label
    gap = ops.abs(confidence[..., None] - cand_scores)
    for i in range(4):  # coordinate by coordinate: 3x faster than reducing a [B, K, M, 4] difference
        gap = ops.maximum(gap, ops.abs(boxes[:, :, i, None] - cand_boxes[:, None, :, i]))
    return ops.cast(ops.argmin(gap, axis=-1), "int32")


def kept_box_distributions(
    detections, cand_boxes, cand_confidence, cand_logits, cand_points, cand_strides, scale_factor,
    reg_max=16, topk=4, quality_fn=None,
):  # fmt: skip
    """Side distributions, classification probability and quality of the detections NMS kept.

    Args:
        detections: ``postprocess`` output (``"boxes"`` xyxy original pixels, ``"confidence"``,
            ``"labels"``; rows with label -1 are padding).
        cand_boxes: ``[B, M, 4]`` xyxy original pixels; cand_confidence: ``[B, M, C']``;
            cand_logits: ``[B, M, 4(R+1)]``; cand_points: ``[B, M, 2]`` network-input pixels;
            cand_strides: ``[B, M]`` — the candidates of ``decode_candidates``.
        scale_factor: ``[B, 2]`` ``(h, w)`` resized / original.
        reg_max, topk: as ``side_statistics``.
        quality_fn: maps kept box logits ``[B, K, 4(R+1)]`` to the DGQP quality ``[B, K]``;
            ``None`` for GFLv1 (no quality: ``"classification"`` is the confidence).

    Returns:
        Dict, rows past ``num_detections`` -1, sides (left, top, right, bottom), pixels of the
        ORIGINAL image (network-input pixels divided by the resize factor of the side's axis):

        * ``"classification"`` ``[B, K]``: the class probability ``sigmoid(cls)``.
        * ``"quality"`` ``[B, K]``: DGQP localisation quality (GFLv2 only);
          ``confidence = classification * quality``.
        * ``"side_offsets"`` ``[B, K, 4]``: expected distance from the anchor point to each side,
          the one the box uses: ``box = clip(anchor_points -/+ side_offsets)`` to the image.
        * ``"side_std"`` ``[B, K, 4]``: standard deviation of each side's distribution.
        * ``"side_topk_mass"`` ``[B, K, 4]``: probability mass of the ``topk`` largest bins
          (what DGQP reads; 1 = all mass in ``topk`` bins).
        * ``"side_distributions"`` ``[B, K, 4, reg_max + 1]``: bin probabilities; bin ``j``
          lies ``j * bin_widths`` from the anchor point.
        * ``"bin_widths"`` ``[B, K, 4]``: one bin in original pixels (stride / resize factor).
        * ``"anchor_points"`` ``[B, K, 2]``: ``(x, y)`` of the detection's anchor point.
    """
    index = match_candidates(
        detections["boxes"], detections["confidence"], detections["labels"], cand_boxes, cand_confidence
    )
    logits = ops.take_along_axis(cand_logits, index[..., None], axis=1)
    points = ops.take_along_axis(cand_points, index[..., None], axis=1)
    strides = ops.take_along_axis(cand_strides, index, axis=1)
    stats = side_statistics(logits, reg_max, topk)
    factor = ops.cast(scale_factor, "float32")
    per_side = ops.stack([factor[:, 1], factor[:, 0], factor[:, 1], factor[:, 0]], -1)[:, None, :]  # [B, 1, 4]
    bin_widths = strides[..., None] / per_side
    confidence = detections["confidence"]
    out = {
        "side_offsets": stats["expected"] * bin_widths,
        "side_std": stats["std"] * bin_widths,
        "side_topk_mass": stats["topk_mass"],
        "side_distributions": stats["probs"],
        "bin_widths": bin_widths,
        "anchor_points": points / ops.stack([factor[:, 1], factor[:, 0]], -1)[:, None, :],
    }
    if quality_fn is None:
        out["classification"] = confidence
    else:
        quality = ops.cast(quality_fn(logits), "float32")
        out["quality"] = quality
        out["classification"] = ops.minimum(confidence / ops.maximum(quality, 1e-12), 1.0)
    valid = detections["labels"] >= 0
    return {key: _mask_rows(value, valid) for key, value in out.items()}


def _mask_rows(value, valid):
    """Set rows ``[B, K, ...]`` where ``valid [B, K]`` is False to -1."""
    mask = ops.reshape(valid, tuple(ops.shape(valid)) + (1,) * (len(value.shape) - 2))
    return ops.where(mask, value, -1.0)


__all__ = ["SIDES", "side_statistics", "match_candidates", "kept_box_distributions"]
