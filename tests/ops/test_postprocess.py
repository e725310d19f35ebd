"""Anchor points, integral decoding and the official post-processing vs float64 NumPy references."""

import numpy as np
import pytest

from gflv2_keras.ops import boxes as box_ops
from gflv2_keras.ops.integral import integral_distances
from gflv2_keras.ops.postprocess import postprocess

STRIDES = (8, 16, 32, 64, 128)


# ----------------------------------------------------------------------------- references
def ref_level_sizes(h, w):
    sizes = []
    for s in STRIDES:
        # Each halving is a symmetric-padded stride-2 op: out = floor((n + 2p - k) / 2) + 1 = ceil(n / 2).
        hh, ww = h, w
        for _ in range(int(np.log2(s))):
            hh, ww = (hh + 1) // 2, (ww + 1) // 2
        sizes.append((hh, ww))
    return sizes


def ref_points(sizes):
    pts, strides = [], []
    for (h, w), s in zip(sizes, STRIDES):
        for y in range(h):
            for x in range(w):
                pts.append((x * s, y * s))
                strides.append(s)
    return np.array(pts, np.float64), np.array(strides, np.float64)


def ref_integral(logits, reg_max):
    z = logits.reshape(logits.shape[:-1] + (4, reg_max + 1)).astype(np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p * np.arange(reg_max + 1)).sum(-1)


def ref_iou(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / max(union, 1e-6)


def ref_postprocess(scores, logits, sizes, image_shape, scale_factor, num_classes, reg_max,
                    nms_pre, score_thr, iou_thr, max_det):
    """Spec section 4, one image, written as the official code reads."""
    points, strides = ref_points(sizes)
    keep_boxes, keep_scores = [], []
    start = 0
    for h, w in sizes:
        sl = slice(start, start + h * w)
        s, lg, p, st = scores[sl], logits[sl], points[sl], strides[sl]
        if h * w > nms_pre:
            idx = np.argsort(-s.max(1), kind="stable")[:nms_pre]
            s, lg, p, st = s[idx], lg[idx], p[idx], st[idx]
        d = ref_integral(lg, reg_max) * st[:, None]
        b = np.stack([p[:, 0] - d[:, 0], p[:, 1] - d[:, 1], p[:, 0] + d[:, 2], p[:, 1] + d[:, 3]], 1)
        b[:, 0::2] = np.clip(b[:, 0::2], 0, image_shape[1])
        b[:, 1::2] = np.clip(b[:, 1::2], 0, image_shape[0])
        keep_boxes.append(b)
        keep_scores.append(s)
        start += h * w
    b = np.concatenate(keep_boxes) / np.array([scale_factor[1], scale_factor[0]] * 2)
    s = np.concatenate(keep_scores)
    cand = [(s[i, c], i, c) for i in range(len(s)) for c in range(s.shape[1]) if s[i, c] > score_thr]
    cand.sort(key=lambda t: -t[0])
    kept = []
    for score, i, c in cand:
        if all(kc != c or ref_iou(b[i], b[ki]) <= iou_thr for _, ki, kc in kept):
            kept.append((score, i, c))
    kept = kept[:max_det]
    return [(float(sc), int(c), b[i]) for sc, i, c in kept if c < num_classes]


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("hw", [(64, 64), (96, 160), (100, 70), (33, 17), (800, 1216)])
def test_level_sizes_match_ceil_halving(hw):
    assert box_ops.level_sizes(*hw) == ref_level_sizes(*hw)


def test_anchor_points_match_reference():
    sizes = ref_level_sizes(72, 100)
    points, strides = box_ops.anchor_points(sizes)
    ref_p, ref_s = ref_points(sizes)
    np.testing.assert_array_equal(np.asarray(points), ref_p)
    np.testing.assert_array_equal(np.asarray(strides), ref_s)
    assert tuple(np.asarray(points)[0]) == (0.0, 0.0)  # centre offset 0, not 0.5


def test_integral_and_distance_to_boxes_match_reference(rng):
    logits = rng.normal(0, 3, (50, 68)).astype(np.float32)
    d = np.asarray(integral_distances(logits, 16))
    np.testing.assert_allclose(d, ref_integral(logits, 16), atol=1e-5)
    pts = rng.uniform(0, 200, (50, 2))
    boxes = np.asarray(box_ops.distance_to_boxes(pts.astype(np.float32), d * 8, max_shape=(150.0, 180.0)))
    ref = np.stack([pts[:, 0] - d[:, 0] * 8, pts[:, 1] - d[:, 1] * 8, pts[:, 0] + d[:, 2] * 8, pts[:, 1] + d[:, 3] * 8], 1)
    ref[:, 0::2] = np.clip(ref[:, 0::2], 0, 180)
    ref[:, 1::2] = np.clip(ref[:, 1::2], 0, 150)
    np.testing.assert_allclose(boxes, ref, atol=1e-3)
    back = np.asarray(box_ops.boxes_to_distances(pts.astype(np.float32), boxes, max_distance=16 * 8.0))
    ref_back = np.clip(np.stack([pts[:, 0] - ref[:, 0], pts[:, 1] - ref[:, 1], ref[:, 2] - pts[:, 0], ref[:, 3] - pts[:, 1]], 1), 0, 16 * 8 - 0.1)
    np.testing.assert_allclose(back, ref_back, atol=1e-3)


def _run(scores, logits, sizes, image_shape, scale_factor, num_classes, **cfg):
    points, strides = box_ops.anchor_points(sizes)
    info = {
        "image_shape": np.array([image_shape] * len(scores), np.float32),
        "scale_factor": np.array([scale_factor] * len(scores), np.float32),
    }
    out = postprocess(scores, logits, points, strides, sizes, info, num_classes=num_classes, reg_max=16, **cfg)
    return {k: np.asarray(v) for k, v in out.items()}


def _as_sorted(dets):
    return sorted(dets, key=lambda t: (-round(t[0], 6), t[1], tuple(np.round(t[2], 2))))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_postprocess_matches_reference(seed):
    rng = np.random.default_rng(seed)
    sizes = ref_level_sizes(64, 96)
    n = sum(h * w for h, w in sizes)
    num_classes = 3
    scores = (rng.uniform(0, 1, (2, n, num_classes + 1)) ** 3).astype(np.float32)
    logits = rng.normal(0, 2, (2, n, 68)).astype(np.float32)
    cfg = dict(nms_pre=20, score_threshold=0.05, iou_threshold=0.6, max_detections=25)
    out = _run(scores, logits, sizes, (60.0, 90.0), (0.5, 0.6), num_classes, **cfg)
    for b in range(2):
        ref = ref_postprocess(scores[b], logits[b], sizes, (60.0, 90.0), (0.5, 0.6), num_classes, 16,
                              cfg["nms_pre"], cfg["score_threshold"], cfg["iou_threshold"], cfg["max_detections"])
        k = int(out["num_detections"][b])
        assert k == len(ref) and k > 0
        got = [(float(s), int(c), bx) for s, c, bx in zip(out["confidence"][b, :k], out["labels"][b, :k], out["boxes"][b, :k])]
        for (gs, gc, gb), (rs, rc, rb) in zip(_as_sorted(got), _as_sorted(ref)):
            assert gc == rc
            assert abs(gs - rs) < 1e-6
            np.testing.assert_allclose(gb, rb, atol=1e-3)
        assert np.all(np.diff(out["confidence"][b, :k]) <= 0)  # sorted by score
        assert np.all(out["labels"][b, k:] == -1) and np.all(out["boxes"][b, k:] == -1)


def test_postprocess_drops_background_column_after_nms():
    sizes = ref_level_sizes(32, 32)
    n = sum(h * w for h, w in sizes)
    scores = np.zeros((1, n, 3), np.float32)
    scores[0, 0, 2] = 0.9  # the redundant background column: must never be reported
    scores[0, 5, 1] = 0.7
    scores[0, 9, 0] = 0.6
    logits = np.zeros((1, n, 68), np.float32)
    out = _run(scores, logits, sizes, (32.0, 32.0), (1.0, 1.0), 2, nms_pre=1000, score_threshold=0.05,
               iou_threshold=0.6, max_detections=100)
    assert out["num_detections"][0] == 2
    assert list(out["labels"][0, :2]) == [1, 0]
    np.testing.assert_allclose(out["confidence"][0, :2], [0.7, 0.6])


def test_postprocess_ties_and_thresholds():
    sizes = ref_level_sizes(64, 64)
    n = sum(h * w for h, w in sizes)
    scores = np.zeros((1, n, 2), np.float32)
    # equal scores on far-apart points of one class: both survive NMS
    scores[0, [0, 7, 63], 0] = [0.5, 0.5, 0.05]  # 0.05 is not > 0.05: dropped
    logits = np.full((1, n, 68), -10.0, np.float32)
    logits[..., 2::17] = 10.0  # every side at distance 2 bins: 16 px boxes on P3
    out = _run(scores, logits, sizes, (64.0, 64.0), (1.0, 1.0), 1, nms_pre=1000, score_threshold=0.05,
               iou_threshold=0.6, max_detections=100)
    assert out["num_detections"][0] == 2
    xs = sorted(out["boxes"][0, :2, 0].tolist())
    np.testing.assert_allclose(xs, [0.0, 56 - 16.0], atol=1e-3)


def test_postprocess_empty_result():
    sizes = ref_level_sizes(32, 64)
    n = sum(h * w for h, w in sizes)
    scores = np.full((2, n, 5), 0.01, np.float32)
    out = _run(scores, np.zeros((2, n, 68), np.float32), sizes, (32.0, 64.0), (1.0, 1.0), 4,
               nms_pre=1000, score_threshold=0.05, iou_threshold=0.6, max_detections=100)
    np.testing.assert_array_equal(out["num_detections"], [0, 0])
    assert np.all(out["labels"] == -1) and np.all(out["confidence"] == -1) and out["boxes"].shape == (2, 100, 4)
