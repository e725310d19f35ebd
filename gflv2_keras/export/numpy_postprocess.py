"""NumPy completion of an export without NMS inside (LiteRT): candidates → detections.

Needs only NumPy; the export copies this file next to the model as ``postprocess.py`` so a
deployment does not need ``gflv2_keras``. It reproduces, per image,
``tf.image.combined_non_max_suppression(..., clip_boxes=False)`` followed by dropping the
official redundant background column (``gflv2_keras/ops/postprocess.py``; official
``mmdet/core/post_processing/bbox_nms.py multiclass_nms`` + ``bbox2result``):

* every (candidate, class) pair with ``score > score_threshold`` enters the NMS of its class;
* per class, pairs are visited by descending score (ties: lower candidate index first) and a
  pair is suppressed when its IoU with a kept pair of that class is ``> iou_threshold``;
  at most ``max_detections`` are kept per class;
* the kept pairs of all classes are sorted by descending score, the best ``max_detections``
  kept, and those of class ``num_classes`` (the background column) removed.

Boxes: the NMS compares ``candidate_boxes`` (xyxy pixels of the model input). An export whose
``export.json`` ``"bounding_box_format"`` is not ``xyxy`` also outputs ``candidate_output_boxes``
(the same candidates in that format, converted inside the model); pass them as
``output_boxes`` and the kept boxes are taken from them.

Usage::

    from postprocess import postprocess
    out = interpreter outputs ...   # candidate_boxes [B, M, 4], candidate_scores [B, M, C']
    dets = postprocess(out["candidate_boxes"], out["candidate_scores"], num_classes=80,
                       score_threshold=0.05, iou_threshold=0.6, max_detections=100,
                       output_boxes=out.get("candidate_output_boxes"))
"""

import numpy as np


def box_iou(box, boxes):
    """IoU of one xyxy box ``[4]`` with ``[N, 4]`` boxes (corner order-agnostic, as TF's NMS)."""
    def corners(b):
        return (np.minimum(b[..., 0], b[..., 2]), np.minimum(b[..., 1], b[..., 3]),
                np.maximum(b[..., 0], b[..., 2]), np.maximum(b[..., 1], b[..., 3]))  # fmt: skip

    ax1, ay1, ax2, ay2 = corners(box)
    bx1, by1, bx2, by2 = corners(boxes)
    area_a = (ax2 - ax1) * (ay2 - ay1)
    area_b = (bx2 - bx1) * (by2 - by1)
    inter = np.maximum(np.minimum(ax2, bx2) - np.maximum(ax1, bx1), 0) * np.maximum(
        np.minimum(ay2, by2) - np.maximum(ay1, by1), 0
    )
    union = area_a + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where((area_a > 0) & (area_b > 0) & (union > 0), inter / union, 0.0)
    return iou


def class_nms(boxes, scores, score_threshold, iou_threshold, max_output):
    """Indices of the kept rows of one class, in visiting (descending score) order."""
    candidates = np.flatnonzero(scores > score_threshold)
    order = candidates[np.lexsort((candidates, -scores[candidates]))]
    kept = []
    for index in order:
        if len(kept) >= max_output:
            break
        if not kept or np.all(box_iou(boxes[index], boxes[kept]) <= iou_threshold):
            kept.append(index)
    return np.asarray(kept, dtype=np.int64)


def postprocess_image(boxes, scores, num_classes, score_threshold=0.05, iou_threshold=0.6, max_detections=100,
                      output_boxes=None):  # fmt: skip
    """One image: ``boxes [M, 4]`` xyxy, ``scores [M, C']`` → unpadded detections.

    ``output_boxes [M, 4]``: the candidates in the export's box format, if not xyxy.

    Returns:
        ``{"boxes": [K, 4] float32 (xyxy, or rows of output_boxes), "confidence": [K] float32
        (descending), "labels": [K] int64}``.
    """
    boxes = np.asarray(boxes, np.float32)
    scores = np.asarray(scores, np.float32)
    kept_scores, kept_classes, kept_rows = [], [], []
    for cls in range(scores.shape[1]):
        rows = class_nms(boxes, scores[:, cls], score_threshold, iou_threshold, max_detections)
        kept_rows.append(rows)
        kept_scores.append(scores[rows, cls])
        kept_classes.append(np.full(len(rows), cls, np.int64))
    rows, all_scores, classes = (np.concatenate(parts) for parts in (kept_rows, kept_scores, kept_classes))
    order = np.argsort(-all_scores, kind="stable")[:max_detections]
    order = order[classes[order] < num_classes]
    source = boxes if output_boxes is None else np.asarray(output_boxes, np.float32)
    return {"boxes": source[rows[order]], "confidence": all_scores[order], "labels": classes[order]}


def postprocess(candidate_boxes, candidate_scores, num_classes, score_threshold=0.05, iou_threshold=0.6,
                max_detections=100, output_boxes=None):  # fmt: skip
    """A batch: ``[B, M, 4]`` and ``[B, M, C']`` → list of per-image detection dicts.

    ``output_boxes``: the model's ``candidate_output_boxes [B, M, 4]`` (exports whose box format
    is not xyxy); the returned boxes are then in that format.
    """
    if output_boxes is None:
        output_boxes = [None] * len(candidate_boxes)
    return [
        postprocess_image(boxes, scores, num_classes, score_threshold, iou_threshold, max_detections, out)
        for boxes, scores, out in zip(candidate_boxes, candidate_scores, output_boxes)
    ]
