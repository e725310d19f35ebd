"""Class-aware greedy NMS in ``keras.ops`` (static shapes, every backend).

The semantics are the official ones (mmcv ``batched_nms`` inside mmdet ``multiclass_nms``), also
those of ``tf.image.combined_non_max_suppression(boxes[:, :, None], scores, max_detections,
max_detections, iou_threshold, score_threshold, clip_boxes=False)``:

* every (point, class) pair with score strictly ``> score_threshold`` is a candidate;
* within a class, candidates are visited by descending score and one is suppressed when its IoU
  with an already kept box of that class is strictly ``> iou_threshold``;
* the best ``max_detections`` kept pairs over all classes are returned, by descending score.

Formulation: at most ``max_detections`` rounds of "keep the best remaining candidate pair over all
(point, class) pairs, then remove the pairs of its class whose box overlaps it", stopping once no
image has a candidate left. Restricted to one class the picks are that class's greedy NMS in
order, and the picks come out by descending score, so the first ``max_detections`` picks are
exactly the best ``max_detections`` of the per-class results (up to exact score ties, taken
lowest flat index ``point * C + class`` first). For speed the rounds first run over the
``chunk_size`` best pairs only (one ``top_k``); an image whose result needs pairs outside them is
redone over all pairs.

IoU is that of ``boxes.pairwise_iou``: pixel boxes without "+1", ``inter / (area_a + area_b -
inter)``, 0 when a box has no area (as TF's kernel).
"""

from keras import ops

from gflv2_keras.ops.boxes import pairwise_iou


def per_class_nms(boxes, scores, max_detections=100, iou_threshold=0.6, score_threshold=0.05, chunk_size=4096):
    """Class-aware greedy NMS of one box per point shared by all of the point's class scores.

    Args:
        boxes: float ``[B, K, 4]`` xyxy pixels (x right, y down; ``x1 <= x2``, ``y1 <= y2``),
            one box per point.
        scores: float ``[B, K, C]`` score of each (point, class) pair; ``K`` and ``C`` static.
        max_detections: python int, the static number of output rows.
        iou_threshold: suppress IoU ``> iou_threshold`` within a class.
        score_threshold: candidates have score ``> score_threshold``.
        chunk_size: python int, speed only (the result does not depend on it): the greedy first
            runs over the ``chunk_size`` best pairs; an image it cannot complete (fewer than
            ``max_detections`` kept while pairs above the threshold remain outside the chunk)
            is redone over all ``K * C`` pairs.

    Returns:
        ``(boxes, scores, labels, num_valid)`` as ``tf.image.combined_non_max_suppression``:
        float32 ``[B, M, 4]`` the kept pairs' input boxes (unchanged), float32 ``[B, M]`` their
        scores (descending), int32 ``[B, M]`` their class indices, int32 ``[B]`` the number of
        valid rows; ``M = max_detections``, rows past ``num_valid`` are 0.
    """
    boxes = ops.cast(boxes, "float32")
    scores = ops.cast(scores, "float32")
    batch, num_points, num_classes = ops.shape(scores)[0], scores.shape[1], scores.shape[2]
    flat_scores = ops.reshape(scores, (batch, num_points * num_classes))
    chunk = min(chunk_size, num_points * num_classes)
    chunk_scores, chunk_index = ops.top_k(flat_scores, chunk)
    chunk_index = ops.cast(chunk_index, "int32")
    chunk_boxes = ops.take_along_axis(boxes, ops.repeat((chunk_index // num_classes)[:, :, None], 4, axis=2), axis=1)
    kept = _greedy(chunk_scores, chunk_index % num_classes, chunk_scores > score_threshold, chunk_boxes, 1,
                   max_detections, iou_threshold)  # fmt: skip
    # Images the chunk cannot complete are redone over all pairs.
    # min, not [:, -1]: XLA on CPU runs a top_k whose last column is sliced as a full sort.
    redo = (kept[3] < max_detections) & (ops.min(chunk_scores, axis=1) > score_threshold)

    def redo_over_all_pairs():
        all_labels = ops.tile(ops.arange(num_classes, dtype="int32")[None], (1, num_points))
        alive = (flat_scores > score_threshold) & redo[:, None]
        new_scores, new_boxes, new_labels, new_valid = _greedy(
            flat_scores, all_labels, alive, boxes, num_classes, max_detections, iou_threshold
        )
        return (
            ops.where(redo[:, None], new_scores, kept[0]),
            ops.where(redo[:, None, None], new_boxes, kept[1]),
            ops.where(redo[:, None], new_labels, kept[2]),
            ops.where(redo, new_valid, kept[3]),
        )

    kept_scores, kept_boxes, kept_labels, num_valid = ops.cond(ops.any(redo), redo_over_all_pairs, lambda: kept)
    return kept_boxes, kept_scores, kept_labels, num_valid


def _greedy(cand_scores, cand_labels, alive, boxes, pairs_per_box, max_detections, iou_threshold):
    """Greedy per-class NMS over candidate pairs: the best alive pair is kept, then the alive
    pairs of its class overlapping it are removed, until none is alive or ``max_detections``.

    Args:
        cand_scores: float32 ``[B, P]``; cand_labels: int32 ``[B or 1, P]``; alive: bool
            ``[B, P]``, the candidates.
        boxes: float32 ``[B, P / pairs_per_box, 4]``: pair ``p`` has box ``p // pairs_per_box``.

    Returns:
        Kept ``(scores [B, M], boxes [B, M, 4], labels [B, M] int32, num_valid [B] int32)``,
        zero past ``num_valid``.
    """
    batch, num_cand, num_boxes = ops.shape(cand_scores)[0], cand_scores.shape[1], boxes.shape[1]
    slots = ops.arange(max_detections, dtype="int32")[None]
    cand_ids = ops.arange(num_cand, dtype="int32")[None]
    cand_labels = ops.broadcast_to(cand_labels, (batch, num_cand))

    def body(alive, kept_scores, kept_boxes, kept_labels, num_valid, _):
        best = ops.cast(ops.argmax(ops.where(alive, cand_scores, float("-inf")), axis=1), "int32")[:, None]
        found = ops.any(alive, axis=1)
        box = ops.take_along_axis(boxes, ops.repeat((best // pairs_per_box)[:, :, None], 4, axis=2), axis=1)
        label = ops.take_along_axis(cand_labels, best, axis=1)  # [B, 1]
        write = (slots == num_valid[:, None]) & found[:, None]
        num_valid = num_valid + ops.cast(found, "int32")
        overlaps = pairwise_iou(box, boxes)[:, 0] > iou_threshold  # [B, P / pairs_per_box]
        if pairs_per_box > 1:
            overlaps = ops.reshape(
                ops.broadcast_to(overlaps[:, :, None], (batch, num_boxes, pairs_per_box)), (batch, num_cand)
            )
        # The pair itself is removed explicitly: a box without area has IoU 0 with itself.
        suppressed = (overlaps & (cand_labels == label)) | (cand_ids == best)
        return (
            alive & ~suppressed & (num_valid < max_detections)[:, None],
            ops.where(write, ops.take_along_axis(cand_scores, best, axis=1), kept_scores),
            ops.where(write[..., None], box, kept_boxes),
            ops.where(write, label, kept_labels),
            num_valid,
            ops.any(found),  # one more round after the last pick, which finds nothing
        )

    _, *kept, _ = ops.while_loop(
        lambda *state: state[-1],
        body,
        (
            alive,
            ops.zeros((batch, max_detections), "float32"),
            ops.zeros((batch, max_detections, 4), "float32"),
            ops.zeros((batch, max_detections), "int32"),
            ops.zeros((batch,), "int32"),
            ops.any(alive),
        ),
    )
    return tuple(kept)


__all__ = ["per_class_nms"]
