"""Float64 NumPy port of the official ATSS assigner and the helpers that make its test inputs.

``atss_reference`` follows ``ATSSAssigner.assign`` (``mmdet/core/bbox/assigners/atss_assigner.py``)
one image and one ground truth at a time, independently of ``gflv2_keras.assigners``.
"""

import warnings

import numpy as np

from gflv2_keras.ops import boxes  # only to build test inputs (level grid, anchors)

IMAGE_HW = (256, 320)


NUM_CLASSES = 7


def atss_reference(anchors, num_level_points, gt_boxes, gt_classes, valid_points, num_classes, topk=9):
    """``ATSSAssigner.assign`` (``mmdet/core/bbox/assigners/atss_assigner.py``), one image and one gt at a time, in float64.

    Only the valid anchors of an image enter the assigner (with their per-level counts); results
    are unmapped to all anchors. Ties: stable sorts and ``argmax`` give the first index.
    """
    anchors = np.asarray(anchors, np.float64)
    level_of = np.repeat(np.arange(len(num_level_points)), num_level_points)
    batch, n_all = valid_points.shape
    labels = np.full((batch, n_all), num_classes, np.int64)
    targets = np.zeros((batch, n_all, 4))
    for b in range(batch):
        inside = np.nonzero(valid_points[b])[0]
        counts = [int(np.sum(level_of[inside] == level)) for level in range(len(num_level_points))]
        keep = gt_classes[b] >= 0
        gts = np.asarray(gt_boxes[b][keep], np.float64)
        gt_inds = _assign_single(anchors[inside], counts, gts, topk)
        pos = gt_inds > 0
        labels[b, inside[pos]] = gt_classes[b][keep][gt_inds[pos] - 1]
        targets[b, inside[pos]] = gts[gt_inds[pos] - 1]
    return {
        "labels": labels,
        "target_boxes": targets,
        "positive": labels < num_classes,
        "label_weights": valid_points.astype(np.float64),
    }


def _assign_single(bboxes, num_level_bboxes, gt_bboxes, topk):
    num_gt, num_bboxes = len(gt_bboxes), len(bboxes)
    assigned = np.zeros(num_bboxes, np.int64)
    if num_gt == 0 or num_bboxes == 0:
        return assigned
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    overlaps = np.zeros((num_bboxes, num_gt))
    for j, g in enumerate(gt_bboxes):
        w = np.clip(np.minimum(bboxes[:, 2], g[2]) - np.maximum(bboxes[:, 0], g[0]), 0, None)
        h = np.clip(np.minimum(bboxes[:, 3], g[3]) - np.maximum(bboxes[:, 1], g[1]), 0, None)
        union = np.maximum(area(bboxes) + area(g[None])[0] - w * h, 1e-6)
        overlaps[:, j] = w * h / union
    gt_c = np.stack([(gt_bboxes[:, 0] + gt_bboxes[:, 2]) / 2, (gt_bboxes[:, 1] + gt_bboxes[:, 3]) / 2], 1)
    cx, cy = (bboxes[:, 0] + bboxes[:, 2]) / 2, (bboxes[:, 1] + bboxes[:, 3]) / 2
    distances = np.sqrt((cx[:, None] - gt_c[None, :, 0]) ** 2 + (cy[:, None] - gt_c[None, :, 1]) ** 2)
    candidate_idxs, start = [], 0
    for count in num_level_bboxes:
        end = start + count
        k = min(topk, count)
        candidate_idxs.append(np.argsort(distances[start:end], axis=0, kind="stable")[:k] + start)
        start = end
    candidate_idxs = np.concatenate(candidate_idxs, 0)  # [K, num_gt]
    overlaps_inf = np.full((num_bboxes, num_gt), -np.inf)
    for j in range(num_gt):
        cand = candidate_idxs[:, j]
        cand_ious = overlaps[cand, j]
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            thr = cand_ious.mean() + cand_ious.std(ddof=1)  # NaN for a single candidate, as torch
        g = gt_bboxes[j]
        margin = np.min(np.stack([cx[cand] - g[0], cy[cand] - g[1], g[2] - cx[cand], g[3] - cy[cand]]), 0)
        is_pos = (cand_ious >= thr) & (margin > 0.01)
        overlaps_inf[cand[is_pos], j] = overlaps[cand[is_pos], j]
    best = overlaps_inf.max(1)
    return np.where(best != -np.inf, overlaps_inf.argmax(1) + 1, 0)


def make_grid(hw=IMAGE_HW):
    sizes = boxes.level_sizes(*hw)
    points, strides = boxes.anchor_points(sizes, dtype="float64")
    return sizes, np.asarray(boxes.anchor_boxes(points, strides)), [h * w for h, w in sizes]


def numpy_valid_points(sizes, image_shapes):
    masks = []
    for (h, w), s in zip(sizes, boxes.STRIDES):
        vh = np.minimum(np.ceil(image_shapes[:, 0] / s), h)
        vw = np.minimum(np.ceil(image_shapes[:, 1] / s), w)
        rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
        masks.append((rows.ravel()[None] < vh[:, None]) & (cols.ravel()[None] < vw[:, None]))
    return np.concatenate(masks, 1)


def random_gt(rng, extents, counts, max_boxes):
    """Integer-pixel boxes (tiny, ordinary, huge, duplicated) padded to ``max_boxes`` with junk."""
    batch = len(counts)
    gt = rng.uniform(-1e3, 1e3, (batch, max_boxes, 4))  # junk in the padding rows
    classes = np.full((batch, max_boxes), -1, np.int32)
    for b, (count, (h, w)) in enumerate(zip(counts, extents)):
        for m in range(count):
            kind = rng.integers(4)
            if kind == 0:  # tiny, 1-4 px
                x1, y1 = rng.integers(0, w - 4), rng.integers(0, h - 4)
                box = [x1, y1, x1 + rng.integers(1, 5), y1 + rng.integers(1, 5)]
            elif kind == 1:  # huge, can extend past the image
                box = [rng.integers(-60, 20), rng.integers(-60, 20), rng.integers(w - 20, w + 80), rng.integers(h - 20, h + 80)]
            elif kind == 2 and m > 0:  # a duplicate of the previous box (IoU ties)
                box = list(gt[b, m - 1])
            else:
                x1, y1 = rng.integers(0, w - 8), rng.integers(0, h - 8)
                box = [x1, y1, rng.integers(x1 + 8, w + 1), rng.integers(y1 + 8, h + 1)]
            gt[b, m] = box
            classes[b, m] = rng.integers(NUM_CLASSES)
    return gt, classes
