"""ATSS target assignment (Adaptive Training Sample Selection), vectorised over a padded batch.

Follows ``mmdet/core/bbox/assigners/atss_assigner.py`` of the official GFLv2 code (topk = 9) with
its PseudoSampler and the unmapping of ``GFocalHead._get_target_single`` (``mmdet/models/dense_heads/gfocal_head.py``).
Everything is computed on ``[B, M, N]`` matrices (images x ground-truth slots x points) with
masks instead of data-dependent gathers and scatters: no shape depends on the data, so the
function compiles with XLA.
"""

from keras import ops

from gflv2_keras.ops.boxes import pairwise_iou

# A candidate's centre must lie strictly more than this many pixels inside its ground truth.
_CENTER_MARGIN = 0.01


def atss_assign(anchors, num_level_points, gt_boxes, gt_labels, valid_points, num_classes, topk=9):
    """Assign each anchor point of each image to one ground-truth box or to the background.

    Per image and ground truth, exactly as the official assigner run on the valid ("inside")
    anchors of that image:

    1. IoU of every anchor with the gt (no +1, union clamped to ≥ 1e-6).
    2. On each level, the ``min(topk, n_valid_level)`` valid anchors whose centres are closest to
       the gt centre are candidates (ties: lower point index first).
    3. ``thr = mean + std`` of the candidates' IoUs, ``std`` unbiased (N − 1). With fewer than two
       candidates ``torch.std`` is NaN and nothing passes, which is reproduced here.
    4. A candidate is positive iff ``IoU >= thr`` and its centre is inside the gt by more than
       0.01 px on all four sides.
    5. An anchor positive for several gts goes to the one with the highest IoU (first gt on
       ties).

    Centre distances are compared squared: same order as the official Euclidean distance,
    without the extra rounding of a float32 sqrt (torch leaves the order of ties unspecified).

    Args:
        anchors: ``[N, 4]`` xyxy anchor boxes in input pixels (``boxes.anchor_boxes``, the 8·s
            squares), shared by the batch, flattened level by level.
        num_level_points: python ints, number of points of each level (sums to ``N``).
        gt_boxes: ``[B, M, 4]`` xyxy ground truth in input pixels (padding rows are ignored).
            ``M`` may be unknown while tracing, and 0.
        gt_labels: ``[B, M]`` int class indices, ``-1`` (any negative) marks padding.
        valid_points: ``[B, N]`` bool, points inside each image's own padded extent. Invalid
            points are never candidates (nor counted in a level's ``n_valid_level``) and end
            as background with weight 0.
        num_classes: number of foreground classes; the background label.
        topk: candidates per level and gt.

    Returns:
        A dict of
        ``labels``: ``[B, N]`` int32, the class of positives, ``num_classes`` otherwise;
        ``target_boxes``: ``[B, N, 4]`` the assigned gt box (xyxy pixels), 0 for negatives;
        ``positive``: ``[B, N]`` bool;
        ``label_weights``: ``[B, N]`` 1 for valid points, 0 for invalid ones (dtype of gt_boxes).
    """
    dtype = ops.convert_to_tensor(gt_boxes).dtype
    anchors = ops.cast(anchors, dtype)
    valid_points = ops.cast(valid_points, "bool")
    # One extra padding slot: M >= 1 even when a batch has no boxes (M may be dynamic, so this
    # is simpler than a special case), and gathers below always have a row to read.
    gt_boxes = ops.pad(gt_boxes, [[0, 0], [0, 1], [0, 0]])
    gt_labels = ops.pad(ops.cast(gt_labels, "int32"), [[0, 0], [0, 1]], constant_values=-1)
    num_gts = ops.shape(gt_labels)[1]
    gt_valid = gt_labels >= 0  # [B, M]
    # Padding rows may hold anything: replace them by a harmless box before any arithmetic.
    gt_boxes = ops.where(ops.expand_dims(gt_valid, -1), gt_boxes, 0.0)

    ious = pairwise_iou(gt_boxes, anchors)  # [B, M, N]
    anchor_cx = (anchors[:, 0] + anchors[:, 2]) / 2.0
    anchor_cy = (anchors[:, 1] + anchors[:, 3]) / 2.0
    gt_cx = (gt_boxes[..., 0] + gt_boxes[..., 2]) / 2.0
    gt_cy = (gt_boxes[..., 1] + gt_boxes[..., 3]) / 2.0
    sq_dist = ops.square(anchor_cx - gt_cx[..., None]) + ops.square(anchor_cy - gt_cy[..., None])

    candidate = _level_topk_candidates(sq_dist, num_level_points, ops.expand_dims(valid_points, 1), topk)
    num_candidates = ops.sum(ops.cast(candidate, dtype), axis=-1)  # [B, M]
    candidate_ious = ops.where(candidate, ious, 0.0)
    mean = ops.sum(candidate_ious, axis=-1) / ops.maximum(num_candidates, 1.0)
    sq_dev = ops.where(candidate, ops.square(ious - mean[..., None]), 0.0)
    std = ops.sqrt(ops.sum(sq_dev, axis=-1) / ops.maximum(num_candidates - 1.0, 1.0))
    threshold = mean + std
    has_threshold = (num_candidates >= 2.0) & gt_valid  # torch.std of < 2 values is NaN

    inside = (
        (anchor_cx - gt_boxes[..., 0:1] > _CENTER_MARGIN)
        & (anchor_cy - gt_boxes[..., 1:2] > _CENTER_MARGIN)
        & (gt_boxes[..., 2:3] - anchor_cx > _CENTER_MARGIN)
        & (gt_boxes[..., 3:4] - anchor_cy > _CENTER_MARGIN)
    )
    positive_pair = candidate & inside & (ious >= threshold[..., None]) & has_threshold[..., None]

    # Conflicts: the gt of highest IoU, the first such gt on ties.
    pair_ious = ops.where(positive_pair, ious, -1.0)  # IoUs are ≥ 0, so -1 acts as -inf
    best_iou = ops.max(pair_ious, axis=1, keepdims=True)
    gt_index = ops.arange(num_gts, dtype="int32")[None, :, None]
    is_best = positive_pair & (pair_ious == best_iou)
    assigned = ops.min(ops.where(is_best, gt_index, num_gts), axis=1)  # [B, N], M = none
    positive = assigned < num_gts

    gather_index = ops.minimum(assigned, num_gts - 1)
    labels = ops.take_along_axis(gt_labels, gather_index, axis=1)
    labels = ops.where(positive, labels, num_classes)
    target_boxes = ops.take_along_axis(gt_boxes, ops.expand_dims(gather_index, -1), axis=1)
    target_boxes = ops.where(ops.expand_dims(positive, -1), target_boxes, 0.0)
    return {
        "labels": ops.cast(labels, "int32"),
        "target_boxes": target_boxes,
        "positive": positive,
        "label_weights": ops.cast(valid_points, dtype),
    }


def _level_topk_candidates(sq_dist, num_level_points, valid_points, topk):
    """``[B, M, N]`` bool: per level, the ``min(topk, n_valid)`` valid points nearest each gt.

    Ties in distance are broken towards the lower point index (deterministically, without
    relying on the tie order of ``top_k``): everything strictly closer than the k-th smallest
    distance, then the first points at exactly that distance until k are taken.

    Args:
        sq_dist: ``[B, M, N]`` squared centre distances; valid_points: ``[B, 1, N]`` bool.
    """
    inf = float("inf")
    sq_dist = ops.where(valid_points, sq_dist, inf)
    masks = []
    for level_dist, level_valid, size in zip(
        _split_levels(sq_dist, num_level_points), _split_levels(valid_points, num_level_points), num_level_points
    ):
        k = min(topk, size)
        if k == 0:
            masks.append(ops.zeros_like(level_valid & (level_dist < 0)))
            continue
        kth = -ops.top_k(-level_dist, k)[0][..., k - 1 :]  # [B, M, 1]; +inf if < k valid points
        closer = level_dist < kth
        at_kth = level_dist == kth
        num_closer = ops.sum(ops.cast(closer, "int32"), axis=-1, keepdims=True)
        tie_rank = ops.cumsum(ops.cast(at_kth, "int32"), axis=-1)
        masks.append(level_valid & (closer | (at_kth & (tie_rank <= k - num_closer))))
    return ops.concatenate(masks, axis=-1)


def _split_levels(x, num_level_points):
    """Split the last axis into the levels' consecutive slices."""
    if len(num_level_points) == 1:
        return [x]
    return ops.split(x, [sum(num_level_points[: i + 1]) for i in range(len(num_level_points) - 1)], axis=-1)


__all__ = ["atss_assign"]
