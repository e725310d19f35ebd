"""gfl_loss vs a float64 NumPy per-image / per-level re-implementation of GFocalHead.loss."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from gflv2_keras.ops import boxes
from gflv2_keras.assigners.atss import atss_assign
from gflv2_keras.losses.gfl_loss import gfl_loss, replica_mean, valid_point_mask
from gflv2_keras.ops.integral import integral_distances
from numpy_reference.atss import IMAGE_HW, NUM_CLASSES, atss_reference, numpy_valid_points, random_gt
from numpy_reference.losses import dfl_reference, giou_loss_reference, qfl_reference

REG_MAX = 16


def integral_reference(logits):
    rows = logits.reshape(-1, REG_MAX + 1)
    probs = np.exp(rows - rows.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    return (probs @ np.arange(REG_MAX + 1.0)).reshape(-1, 4)


def iou_reference(a, b):
    wh = np.clip(np.minimum(a[:, 2:], b[:, 2:]) - np.maximum(a[:, :2], b[:, :2]), 0, None)
    inter = wh[:, 0] * wh[:, 1]
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-6)


def gfl_loss_reference(scores, box_logits, points, strides, num_level, assignment, num_classes, weights=(1, 0.25, 2)):
    """``GFocalHead.loss`` in float64: images_to_levels, loss_single per level, then head.loss.

    Returns NaN for GIoU/DFL when no image has a positive (the official 0/0).
    """
    labels, targets, label_weights = assignment["labels"], assignment["target_boxes"], assignment["label_weights"]
    batch, _, num_columns = scores.shape
    num_total_samples = max(sum(max(int(n), 1) for n in assignment["positive"].sum(1)), 1.0)
    qfl = dfl = giou = weight_sum = 0.0
    start = 0
    for count in num_level:
        sl = slice(start, start + count)
        start += count
        s = scores[:, sl].reshape(-1, num_columns)
        lab = labels[:, sl].reshape(-1)
        tgt = targets[:, sl].reshape(-1, 4)
        pts = np.tile(points[sl], (batch, 1))
        stride = strides[sl][0]
        pos = (lab >= 0) & (lab < num_classes)
        quality = np.zeros(len(lab))
        if pos.any():
            w = s.max(1)[pos]
            centres = pts[pos] / stride
            d = integral_reference(box_logits[:, sl].reshape(-1, 4 * (REG_MAX + 1))[pos])
            pred = np.concatenate([centres - d[:, :2], centres + d[:, 2:]], 1)
            target = tgt[pos] / stride
            quality[pos] = iou_reference(pred, target)
            giou += weights[2] * np.sum(w * giou_loss_reference(pred, target))
            dist = np.clip(np.concatenate([centres - target[:, :2], target[:, 2:] - centres], 1), 0, REG_MAX - 0.1)
            rows = box_logits[:, sl].reshape(-1, 4, REG_MAX + 1)[pos].reshape(-1, REG_MAX + 1)
            dfl += weights[1] * np.sum(np.repeat(w, 4) * dfl_reference(rows, dist.reshape(-1))) / 4.0
            weight_sum += w.sum()
        qfl += weights[0] * np.sum(label_weights[:, sl].reshape(-1) * qfl_reference(s, lab, quality)) / num_total_samples
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"qfl": qfl, "dfl": np.float64(dfl) / weight_sum, "giou": np.float64(giou) / weight_sum}


def make_batch(seed, num_columns, counts=(0, 1, 20, 4), dtype="float64"):
    rng = np.random.default_rng(seed)
    sizes = boxes.level_sizes(*IMAGE_HW)
    points, strides = (np.asarray(t) for t in boxes.anchor_points(sizes, dtype="float64"))
    extents = np.array([IMAGE_HW, (200, 256), (64, 96), (129, 97)])[: len(counts)]
    gt, classes = random_gt(rng, extents, list(counts), max_boxes=max(max(counts), 1))
    n = len(points)
    batch = {
        "confidence": rng.uniform(1e-3, 0.6, (len(counts), n, num_columns)),
        "box_logits": rng.normal(0, 2, (len(counts), n, 4 * (REG_MAX + 1))),
        "points": points,
        "point_strides": strides,
        "num_level_points": [h * w for h, w in sizes],
        "gt_boxes": gt,
        "gt_labels": classes,
        "valid_points": numpy_valid_points(sizes, extents),
    }
    for key in ("confidence", "box_logits", "gt_boxes"):
        batch[key] = batch[key].astype(dtype)
    return batch


def reference_for(batch):
    anchors = np.asarray(boxes.anchor_boxes(batch["points"], batch["point_strides"]))
    assignment = atss_reference(
        anchors, batch["num_level_points"], batch["gt_boxes"].astype(np.float64), batch["gt_labels"],
        batch["valid_points"], NUM_CLASSES,
    )  # fmt: skip
    f64 = {k: batch[k].astype(np.float64) for k in ("confidence", "box_logits")}
    ref = gfl_loss_reference(
        f64["confidence"], f64["box_logits"], batch["points"], batch["point_strides"], batch["num_level_points"],
        assignment, NUM_CLASSES,
    )  # fmt: skip
    return ref, assignment


def run_gfl_loss(batch, **kwargs):
    return {k: float(v) for k, v in gfl_loss(**batch, num_classes=NUM_CLASSES, **kwargs).items()}


@pytest.mark.parametrize("num_columns", [NUM_CLASSES + 1, NUM_CLASSES])  # GFLv2 (extra column), GFLv1
@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-12), ("float32", 1e-5)])
def test_gfl_loss_matches_reference(num_columns, dtype, rtol):
    batch = make_batch(0, num_columns, dtype=dtype)
    ref, assignment = reference_for(batch)
    assert assignment["positive"].sum() > 20
    got = run_gfl_loss(batch)
    for name in ("qfl", "dfl", "giou"):
        assert got[name] == pytest.approx(ref[name], rel=rtol), name


def test_gfl_loss_gradients_match_finite_differences():
    """Weights and IoU targets are detached: d(qfl)/d(box_logits) = 0, d(dfl + giou)/d(scores) = 0;
    the rest matches central differences of the reference (whose assignment does not move)."""
    batch = make_batch(1, NUM_CLASSES + 1, counts=(3, 5))
    ref, assignment = reference_for(batch)
    scores, logits = tf.constant(batch["confidence"]), tf.constant(batch["box_logits"])
    rest = {k: v for k, v in batch.items() if k not in ("confidence", "box_logits")}
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([scores, logits])
        losses = gfl_loss(scores, logits, **rest, num_classes=NUM_CLASSES)
        box_loss = losses["dfl"] + losses["giou"]
    zero = tf.UnconnectedGradients.ZERO
    assert np.all(tape.gradient(losses["qfl"], logits, unconnected_gradients=zero).numpy() == 0)
    assert np.all(tape.gradient(box_loss, scores, unconnected_gradients=zero).numpy() == 0)
    g_logits = tape.gradient(box_loss, logits).numpy()
    g_scores = tape.gradient(losses["qfl"], scores).numpy()

    def reference(scores_, logits_):
        r = gfl_loss_reference(
            scores_, logits_, batch["points"], batch["point_strides"], batch["num_level_points"], assignment,
            NUM_CLASSES,
        )  # fmt: skip
        return r["qfl"], r["dfl"] + r["giou"]

    rng = np.random.default_rng(5)
    positives = np.argwhere(assignment["positive"])
    eps = 1e-6
    for b, n in positives[rng.choice(len(positives), 6, replace=False)]:
        c = rng.integers(4 * (REG_MAX + 1))
        plus, minus = batch["box_logits"].copy(), batch["box_logits"].copy()
        plus[b, n, c] += eps
        minus[b, n, c] -= eps
        fd = (reference(batch["confidence"], plus)[1] - reference(batch["confidence"], minus)[1]) / (2 * eps)
        assert g_logits[b, n, c] == pytest.approx(fd, rel=1e-5, abs=1e-9)
    for b, n, c in zip(rng.integers(2, size=6), rng.integers(len(batch["points"]), size=6), rng.integers(8, size=6)):
        plus, minus = batch["confidence"].copy(), batch["confidence"].copy()
        plus[b, n, c] += eps
        minus[b, n, c] -= eps
        fd = (reference(plus, batch["box_logits"])[0] - reference(minus, batch["box_logits"])[0]) / (2 * eps)
        assert g_scores[b, n, c] == pytest.approx(fd, rel=1e-5, abs=1e-9)


@pytest.mark.parametrize(
    "gt_boxes, gt_labels",
    [
        (np.zeros((2, 0, 4)), np.zeros((2, 0), np.int32)),  # no boxes at all
        (np.tile([[[0.0, 0, 50, 50]]], (2, 1, 1)), np.full((2, 1), -1, np.int32)),  # padding only
        (np.tile([[[3.0, 3, 5, 5]]], (2, 1, 1)), np.zeros((2, 1), np.int32)),  # boxes, no positive
    ],
)
def test_batches_without_positives_give_finite_losses_and_gradients(gt_boxes, gt_labels):
    batch = make_batch(2, NUM_CLASSES + 1, counts=(0, 0), dtype="float32")
    batch["gt_boxes"], batch["gt_labels"] = gt_boxes.astype("float32"), gt_labels
    ref, assignment = reference_for(batch)
    assert not assignment["positive"].any() and np.isnan(ref["giou"])  # the official 0/0
    scores, logits = tf.constant(batch["confidence"]), tf.constant(batch["box_logits"])
    rest = {k: v for k, v in batch.items() if k not in ("confidence", "box_logits")}
    with tf.GradientTape() as tape:
        tape.watch([scores, logits])
        losses = gfl_loss(scores, logits, **rest, num_classes=NUM_CLASSES)
        total = losses["qfl"] + losses["dfl"] + losses["giou"]
    grads = tape.gradient(total, [scores, logits])
    assert float(losses["dfl"]) == 0.0 and float(losses["giou"]) == 0.0
    assert float(losses["qfl"]) == pytest.approx(ref["qfl"], rel=1e-4)
    assert all(np.all(np.isfinite(g.numpy())) for g in grads)
    assert np.all(grads[1].numpy() == 0)


def test_xla_matches_eager():
    batch = make_batch(3, NUM_CLASSES + 1, counts=(2, 9, 0), dtype="float32")
    sizes = boxes.level_sizes(*IMAGE_HW)
    image_shapes = np.array([IMAGE_HW, (200, 256), (64, 96)], np.int32)
    static = {"points": batch["points"], "point_strides": batch["point_strides"]}

    def compute(scores, logits, gt_boxes, gt_labels, shapes):
        valid = valid_point_mask(sizes, boxes.STRIDES, shapes)
        anchors = boxes.anchor_boxes(tf.constant(static["points"]), tf.constant(static["point_strides"]))
        assignment = atss_assign(anchors, batch["num_level_points"], gt_boxes, gt_labels, valid, NUM_CLASSES)
        with tf.GradientTape() as tape:
            tape.watch([scores, logits])
            losses = gfl_loss(
                scores, logits, static["points"], static["point_strides"], batch["num_level_points"], gt_boxes,
                gt_labels, valid, NUM_CLASSES,
            )  # fmt: skip
            total = losses["qfl"] + losses["dfl"] + losses["giou"]
        return assignment, losses, tape.gradient(total, [scores, logits])

    args = [tf.constant(batch[k]) for k in ("confidence", "box_logits", "gt_boxes", "gt_labels")]
    args.append(tf.constant(image_shapes))
    eager = compute(*args)
    xla = tf.function(compute, jit_compile=True)(*args)
    for key in ("labels", "positive", "label_weights", "target_boxes"):
        np.testing.assert_array_equal(xla[0][key].numpy(), eager[0][key].numpy())
    assert eager[0]["positive"].numpy().sum() > 10
    for key in ("qfl", "dfl", "giou"):
        assert float(xla[1][key]) == pytest.approx(float(eager[1][key]), rel=1e-5)
    for g_xla, g_eager in zip(xla[2], eager[2]):
        np.testing.assert_allclose(g_xla.numpy(), g_eager.numpy(), rtol=1e-4, atol=1e-9)


def test_valid_point_mask_and_integral_match_numpy():
    sizes = boxes.level_sizes(*IMAGE_HW)
    shapes = np.array([IMAGE_HW, (200, 256), (1, 1), (129, 97), (255, 321)])
    np.testing.assert_array_equal(valid_point_mask(sizes, boxes.STRIDES, shapes).numpy(), numpy_valid_points(sizes, shapes))
    logits = np.random.default_rng(4).normal(0, 3, (2, 3, 4 * (REG_MAX + 1)))
    got = integral_distances(logits, REG_MAX).numpy()
    assert got.shape == (2, 3, 4)
    np.testing.assert_allclose(got.reshape(-1, 4), integral_reference(logits), rtol=1e-12)


def test_replica_mean_is_identity_without_replicas():
    x = tf.constant(3.0)
    assert replica_mean(x) is x
    assert float(tf.distribute.get_strategy().run(replica_mean, args=(x,))) == 3.0


def test_replica_mean_averages_across_replicas():
    """Two logical CPU replicas (needs a fresh process: devices are configured before TF starts)."""
    script = textwrap.dedent(
        """
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from gflv2_keras.losses.gfl_loss import replica_mean
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        values = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(float(ctx.replica_id_in_sync_group * 3 + 1)))  # 1 and 4
        result = strategy.run(replica_mean, args=(values,))
        print("RESULT", [float(v) for v in strategy.experimental_local_results(result)])
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert "RESULT [2.5, 2.5]" in out.stdout, out.stderr[-2000:]
