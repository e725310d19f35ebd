"""``ops.nms.per_class_nms`` vs a float64 NumPy greedy per-class NMS and vs TensorFlow's NMS.

The reference is the official definition written out (mmcv ``batched_nms`` per class, then the
best ``max_detections`` over classes): no argmax loop, no chunks, float64 IoU. Scores are drawn
distinct so the order of equal scores never matters.
"""

import numpy as np
import pytest
from keras import ops

from gflv2_keras.ops.nms import per_class_nms


def ref_iou(box, boxes):
    """float64 IoU of one xyxy box with ``[N, 4]`` boxes, no "+1"; 0 when a box has no area."""
    box, boxes = np.float64(box), np.float64(boxes)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    iw = np.maximum(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0.0)
    ih = np.maximum(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0.0)
    inter = iw * ih
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where((area > 0) & (areas > 0), inter / (area + areas - inter), 0.0)


def ref_nms(boxes, scores, max_det, iou_thr, score_thr):
    """One image: ``[(score, point, class), ...]`` kept, by descending score."""
    kept = []
    for c in range(scores.shape[1]):
        cand = [i for i in np.argsort(-np.float64(scores[:, c]), kind="stable") if scores[i, c] > np.float32(score_thr)]
        chosen = []
        for i in cand:
            if not chosen or np.all(ref_iou(boxes[i], boxes[chosen]) <= iou_thr):
                chosen.append(i)
        kept += [(float(scores[i, c]), i, c) for i in chosen[:max_det]]
    return sorted(kept, key=lambda t: -t[0])[:max_det]


def clustered(rng, batch, points, classes, score_thr, degenerate=0):
    """Boxes jittered around a few centres (many overlaps within and across classes) and distinct
    scores spread around the threshold, a few exactly on it."""
    centres = rng.uniform(0, 200, (batch, 6, 2))
    which = rng.integers(0, 6, (batch, points))
    xy = np.take_along_axis(centres, which[..., None], axis=1) + rng.normal(0, 6, (batch, points, 2))
    wh = rng.uniform(20, 60, (batch, points, 2))
    boxes = np.concatenate([xy, xy + wh], -1)
    boxes[:, :degenerate, 2] = boxes[:, :degenerate, 0]  # zero width
    grid = score_thr - 0.04 + 0.001 * rng.permuted(np.tile(np.arange(points * classes), (batch, 1)), axis=1)
    scores = grid.reshape(batch, points, classes)
    scores[:, -3:, 0] = score_thr  # not > threshold: never a candidate
    return boxes.astype(np.float32), scores.astype(np.float32)


def check_against_reference(boxes, scores, out, max_det, iou_thr, score_thr):
    out_boxes, out_scores, out_labels, num = (ops.convert_to_numpy(v) for v in out)
    assert out_boxes.shape == (len(boxes), max_det, 4) and out_scores.shape == (len(boxes), max_det)
    for b in range(len(boxes)):
        ref = ref_nms(boxes[b], scores[b], max_det, iou_thr, score_thr)
        n = int(num[b])
        assert n == len(ref)
        np.testing.assert_array_equal(out_scores[b, :n], [s for s, _, _ in ref])
        np.testing.assert_array_equal(out_labels[b, :n], [c for _, _, c in ref])
        np.testing.assert_array_equal(out_boxes[b, :n], boxes[b, [i for _, i, _ in ref]])  # input rows, unchanged
        assert np.all(out_scores[b, n:] == 0) and np.all(out_labels[b, n:] == 0) and np.all(out_boxes[b, n:] == 0)
    return num


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("chunk_size", [4096, 16])
def test_matches_float64_reference(seed, chunk_size):
    rng = np.random.default_rng(seed)
    boxes, scores = clustered(rng, batch=3, points=60, classes=4, score_thr=0.05, degenerate=2)
    scores[2] = np.minimum(scores[2], 0.05)  # an image without any candidate
    out = per_class_nms(boxes, scores, 25, 0.5, 0.05, chunk_size=chunk_size)
    num = check_against_reference(boxes, scores, out, 25, 0.5, 0.05)
    assert num[2] == 0 and num[:2].min() > 5


def test_max_detections_cut_and_redo_over_all_pairs():
    """Fewer slots than kept pairs; with a chunk of 8 pairs every image needs all pairs."""
    rng = np.random.default_rng(3)
    boxes, scores = clustered(rng, batch=2, points=80, classes=3, score_thr=0.1)
    for chunk_size in (8, 4096):
        out = per_class_nms(boxes, scores, 12, 0.3, 0.1, chunk_size=chunk_size)
        assert list(check_against_reference(boxes, scores, out, 12, 0.3, 0.1)) == [12, 12]


def test_iou_and_score_thresholds_are_strict():
    # IoU([0,0,4,1], [0,0,2,1]) = 2 / 4 = 0.5 exactly; the third box (IoU 0.75) is suppressed.
    boxes = np.array([[[0, 0, 4, 1], [0, 0, 2, 1], [0, 0, 3, 1], [50, 50, 60, 60]]], np.float32)
    scores = np.array([[[0.9], [0.8], [0.7], [0.05]]], np.float32)
    out = per_class_nms(boxes, scores, 5, 0.5, 0.05)
    out_boxes, out_scores, out_labels, num = (ops.convert_to_numpy(v) for v in out)
    assert int(num[0]) == 2  # 0.05 is not > 0.05
    np.testing.assert_array_equal(out_scores[0, :2], np.float32([0.9, 0.8]))
    np.testing.assert_array_equal(out_boxes[0, :2], boxes[0, :2])


def test_classes_do_not_suppress_each_other():
    boxes = np.array([[[0, 0, 10, 10], [0, 0, 10, 10]]], np.float32)
    scores = np.array([[[0.9, 0.6], [0.8, 0.7]]], np.float32)  # same box, two classes per point
    _, out_scores, out_labels, num = (ops.convert_to_numpy(v) for v in per_class_nms(boxes, scores, 10, 0.5, 0.05))
    assert int(num[0]) == 2
    np.testing.assert_array_equal(out_labels[0, :2], [0, 1])
    np.testing.assert_array_equal(out_scores[0, :2], np.float32([0.9, 0.7]))


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_tensorflow_combined_nms(seed):
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(10 + seed)
    boxes, scores = clustered(rng, batch=2, points=300, classes=5, score_thr=0.05, degenerate=3)
    expected = tf.image.combined_non_max_suppression(
        boxes[:, :, None], scores, 40, 40, iou_threshold=0.6, score_threshold=0.05, clip_boxes=False
    )
    got = per_class_nms(boxes, scores, 40, 0.6, 0.05, chunk_size=64)
    for value, reference in zip(got, expected):
        value = ops.convert_to_numpy(value)
        np.testing.assert_array_equal(value, reference.numpy().astype(value.dtype))
    assert int(expected[3].numpy().min()) == 40
