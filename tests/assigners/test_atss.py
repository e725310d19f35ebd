"""ATSS assignment vs an independent float64 NumPy port of the official per-image assigner."""

import numpy as np
import pytest

from gflv2_keras.assigners.atss import atss_assign
from numpy_reference.atss import IMAGE_HW, NUM_CLASSES, atss_reference, make_grid, numpy_valid_points, random_gt


def assert_same_assignment(got, ref):
    got = {k: np.asarray(v) for k, v in got.items()}
    np.testing.assert_array_equal(got["positive"], ref["positive"])
    np.testing.assert_array_equal(got["labels"], ref["labels"])
    np.testing.assert_array_equal(got["label_weights"], ref["label_weights"])
    np.testing.assert_allclose(got["target_boxes"], ref["target_boxes"], rtol=0, atol=1e-4)
    assert got["labels"].dtype == np.int32 and got["positive"].dtype == bool


def assert_both_float_types_match(ref, anchors, num_level, gt, classes, valid):
    """``atss_assign`` in float64 and in float32 gives the reference assignment ``ref``."""
    for dtype in ("float64", "float32"):
        got = atss_assign(anchors.astype(dtype), num_level, gt.astype(dtype), classes, valid, NUM_CLASSES)
        assert_same_assignment(got, ref)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_padded_batches_match_reference(dtype, seed):
    rng = np.random.default_rng(seed)
    sizes, anchors, num_level = make_grid()
    extents = np.array([IMAGE_HW, (200, 256), (40, 40), (129, 97)])
    counts = [0, 1, 25, int(rng.integers(2, 8))]
    gt, classes = random_gt(rng, extents, counts, max_boxes=30)
    valid = numpy_valid_points(sizes, extents)
    ref = atss_reference(anchors, num_level, gt.astype(dtype), classes, valid, NUM_CLASSES)
    assert ref["positive"].sum() > 10 and ref["positive"][0].sum() == 0  # the test is not vacuous
    got = atss_assign(anchors.astype(dtype), num_level, gt.astype(dtype), classes, valid, NUM_CLASSES)
    assert_same_assignment(got, ref)
    assert not np.any(np.asarray(got["positive"]) & ~valid)


def test_random_float_boxes_and_smaller_topk():
    rng = np.random.default_rng(7)
    sizes, anchors, num_level = make_grid()
    extents = np.array([IMAGE_HW, (100, 300)])
    valid = numpy_valid_points(sizes, extents)
    xy = rng.uniform(0, 250, (2, 12, 2))
    gt = np.concatenate([xy, xy + rng.uniform(1, 200, (2, 12, 2))], -1)
    classes = rng.integers(0, NUM_CLASSES, (2, 12)).astype(np.int32)
    for topk in (1, 2, 5):
        ref = atss_reference(anchors, num_level, gt, classes, valid, NUM_CLASSES, topk=topk)
        got = atss_assign(anchors, num_level, gt, classes, valid, NUM_CLASSES, topk=topk)
        assert_same_assignment(got, ref)


def test_exact_distance_and_iou_ties():
    """Gt centres on grid midpoints (distance ties) and duplicated boxes (IoU ties → first gt)."""
    sizes, anchors, num_level = make_grid()
    gt = np.array([[[20, 20, 60, 60], [20, 20, 60, 60], [100, 36, 156, 92], [4, 4, 12, 12]]], np.float64)
    classes = np.array([[3, 5, 1, 2]], np.int32)
    valid = np.ones((1, anchors.shape[0]), bool)
    ref = atss_reference(anchors, num_level, gt, classes, valid, NUM_CLASSES)
    assert np.any(ref["labels"] == 3) and not np.any(ref["labels"] == 5)
    assert_both_float_types_match(ref, anchors, num_level, gt, classes, valid)


def test_no_ground_truth():
    sizes, anchors, num_level = make_grid()
    valid = numpy_valid_points(sizes, np.array([IMAGE_HW, (64, 64)]))
    for gt, classes in (
        (np.zeros((2, 0, 4), np.float32), np.zeros((2, 0), np.int32)),
        (np.ones((2, 3, 4), np.float32) * [0, 0, 100, 100], np.full((2, 3), -1, np.int32)),
    ):
        got = atss_assign(anchors.astype("float32"), num_level, gt, classes, valid, NUM_CLASSES)
        assert_same_assignment(got, atss_reference(anchors, num_level, gt, classes, valid, NUM_CLASSES))
        assert not np.any(np.asarray(got["positive"]))


@pytest.mark.parametrize(
    "anchors, num_level, gt_box, expected_positive",
    [
        # Two levels, one anchor each, equal IoUs: thr = mean + 0 and IoU >= thr holds exactly.
        ([[0, 0, 10, 10], [0, 0, 10, 10]], [1, 1], [2, 2, 12, 12], [True, True]),
        # A single candidate: torch.std is NaN, nothing is positive.
        ([[0, 0, 10, 10]], [1], [2, 2, 12, 12], [False]),
        # Centre inside by 0.005 px only (needs > 0.01), then by 0.02 px.
        ([[0, 0, 10, 10], [0, 0, 10, 10]], [1, 1], [4.995, 2, 12, 12], [False, False]),
        ([[0, 0, 10, 10], [0, 0, 10, 10]], [1, 1], [4.98, 2, 12, 12], [True, True]),
    ],
)
def test_threshold_and_margin_edge_cases(anchors, num_level, gt_box, expected_positive):
    anchors = np.array(anchors, np.float64)
    gt = np.array([[gt_box]], np.float64)
    classes = np.array([[4]], np.int32)
    valid = np.ones((1, len(anchors)), bool)
    ref = atss_reference(anchors, num_level, gt, classes, valid, NUM_CLASSES)
    np.testing.assert_array_equal(ref["positive"][0], expected_positive)
    assert_both_float_types_match(ref, anchors, num_level, gt, classes, valid)


def test_dynamic_number_of_boxes_in_a_traced_graph():
    """M unknown while tracing (tf.data padded_batch) and possibly 0 at run time."""
    import tensorflow as tf

    sizes, anchors, num_level = make_grid()
    valid = numpy_valid_points(sizes, np.array([IMAGE_HW, (100, 200)]))
    assign = tf.function(
        lambda gt, classes: atss_assign(anchors.astype("float32"), num_level, gt, classes, valid, NUM_CLASSES),
        input_signature=[tf.TensorSpec([2, None, 4], tf.float32), tf.TensorSpec([2, None], tf.int32)],
    )
    gt, classes = random_gt(np.random.default_rng(5), [IMAGE_HW, (100, 200)], [6, 3], max_boxes=6)
    for m in (6, 0):
        got = assign(gt[:, :m].astype("float32"), classes[:, :m])
        assert_same_assignment(got, atss_reference(anchors, num_level, gt[:, :m], classes[:, :m], valid, NUM_CLASSES))
