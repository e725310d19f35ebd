"""QFL, DFL and GIoU loss vs float64 NumPy references of ``mmdet/models/losses/gfocal_loss.py`` and central differences."""

import numpy as np
import pytest
import tensorflow as tf

from gflv2_keras.losses.element_losses import distribution_focal_loss, giou_loss, quality_focal_loss
from numpy_reference.losses import dfl_reference, giou_loss_reference, qfl_reference


def value_and_grad(fn, *args):
    """Loss values and the gradient of ``Σ loss · w`` (fixed random ``w``) w.r.t. each float arg."""
    tensors = [tf.constant(a) for a in args]
    with tf.GradientTape() as tape:
        for t in tensors:
            if t.dtype.is_floating:
                tape.watch(t)
        loss = fn(*tensors)
        w = tf.constant(np.random.default_rng(99).uniform(0.5, 1.5, loss.shape), loss.dtype)
        total = tf.reduce_sum(loss * w)
    float_args = [t for t in tensors if t.dtype.is_floating]
    return loss.numpy(), [g.numpy() for g in tape.gradient(total, float_args)], w.numpy()


def central_difference(fn, args, index, w, eps=1e-6):
    """Numerical gradient of ``Σ fn(*args) · w`` w.r.t. ``args[index]`` in float64 NumPy."""
    x = args[index]
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        plus, minus = [list(args) for _ in range(2)]
        plus[index], minus[index] = x.copy(), x.copy()
        plus[index][i] += eps
        minus[index][i] -= eps
        grad[i] = np.sum((fn(*plus) - fn(*minus)) * w) / (2 * eps)  # untouched rows cancel exactly
    return grad


def test_qfl_matches_reference_and_finite_differences():
    rng = np.random.default_rng(0)
    num_columns = 6
    probs = rng.uniform(0.02, 0.98, (4, 5, num_columns))
    labels = rng.integers(0, num_columns + 2, (4, 5)).astype(np.int32)  # includes "no column" rows
    labels[0, 0] = -1
    scores = np.where(labels < num_columns, rng.uniform(0.0, 1.0, (4, 5)), 0.0)
    loss, (g_probs, g_scores), w = value_and_grad(quality_focal_loss, probs, labels, scores)
    ref = qfl_reference(probs, labels, scores)
    assert loss.shape == (4, 5)
    np.testing.assert_allclose(loss, ref, rtol=1e-12, atol=1e-14)
    fd_probs = central_difference(qfl_reference, [probs, labels, scores], 0, w)
    fd_scores = central_difference(qfl_reference, [probs, labels, scores], 2, w)
    np.testing.assert_allclose(g_probs, fd_probs, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(g_scores, fd_scores, rtol=1e-6, atol=1e-8)
    # float32 agrees with the float64 reference.
    loss32 = quality_focal_loss(probs.astype("float32"), labels, scores.astype("float32")).numpy()
    np.testing.assert_allclose(loss32, ref, rtol=2e-5, atol=1e-6)


def test_qfl_extra_background_column_equals_negative_term():
    """With C' = num_classes + 1, label num_classes (score 0) rewrites the extra column with the
    negative term: the same loss as a row without any positive column."""
    rng = np.random.default_rng(1)
    probs = rng.uniform(0.01, 0.99, (7, 4))
    background = np.full(7, 3, np.int32)
    zeros = np.zeros(7)
    np.testing.assert_allclose(
        quality_focal_loss(probs, background, zeros).numpy(), qfl_reference(probs, np.full(7, 4), zeros), rtol=1e-12
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_qfl_saturated_probabilities_are_clamped_and_gradients_finite(dtype):
    probs = np.array([[0.0, 1.0, 1e-45, 1.0 - 1e-9, 0.5]], dtype)
    labels = np.array([1], np.int32)  # the positive column has p = 1
    for score in (0.0, 0.3, 1.0):
        scores = np.array([score], dtype)
        loss, (g_probs, g_scores), _ = value_and_grad(quality_focal_loss, probs, labels, scores)
        ref = qfl_reference(probs.astype(np.float64), labels, scores.astype(np.float64))
        np.testing.assert_allclose(loss, ref, rtol=1e-5)
        assert np.all(np.isfinite(g_probs)) and np.all(np.isfinite(g_scores))
    # PyTorch's BCE backward: (p - y) / max(p (1 - p), 1e-12); at p = 1, y = 0 that is 1e12.
    _, (g_probs, _), w = value_and_grad(quality_focal_loss, probs, np.array([9], np.int32), np.zeros(1, dtype))
    np.testing.assert_allclose(g_probs[0, 1], w[0] * (1e12 * 1.0 + 100.0 * 2.0), rtol=1e-5)


def test_dfl_matches_reference_and_finite_differences():
    rng = np.random.default_rng(2)
    reg_max = 16
    logits = rng.normal(0, 2, (6, 4, reg_max + 1))
    targets = rng.uniform(0, reg_max - 0.1, (6, 4))
    targets[0] = [0.0, 3.0, reg_max - 0.1, 7.5]  # bin edges and the top of the clipped range
    loss, (g_logits, g_targets), w = value_and_grad(distribution_focal_loss, logits, targets)
    np.testing.assert_allclose(loss, dfl_reference(logits, targets), rtol=1e-12)
    np.testing.assert_allclose(g_logits, central_difference(dfl_reference, [logits, targets], 0, w), rtol=1e-6, atol=1e-8)
    inner = targets - np.floor(targets) > 1e-3  # away from the kinks at integers
    fd_targets = central_difference(dfl_reference, [logits, targets], 1, w)
    np.testing.assert_allclose(g_targets[inner], fd_targets[inner], rtol=1e-6, atol=1e-8)


def test_giou_loss_matches_reference_and_finite_differences():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 20, (64, 2))
    pred = np.concatenate([xy, xy + rng.uniform(0.5, 15, (64, 2))], -1)
    xy = rng.uniform(0, 20, (64, 2))
    target = np.concatenate([xy, xy + rng.uniform(0.5, 15, (64, 2))], -1)
    target[0] = pred[0] + [2, 2, -2, -2]  # nested
    target[1] = pred[1] + 100  # disjoint
    target[2] = pred[2]  # identical
    loss, (g_pred, _), w = value_and_grad(giou_loss, pred, target)
    np.testing.assert_allclose(loss, giou_loss_reference(pred, target), rtol=1e-12, atol=1e-12)
    assert loss[2] == pytest.approx(0.0, abs=1e-12) and loss[1] > 1.0
    fd = central_difference(giou_loss_reference, [pred, target], 0, w)
    generic = np.ones(64, bool)
    generic[2] = False  # identical boxes: min/max kinks
    np.testing.assert_allclose(g_pred[generic], fd[generic], rtol=1e-6, atol=1e-8)
    degenerate = np.zeros((2, 4))  # zero-area boxes: finite, 1 - (0 - 0) = 1
    np.testing.assert_allclose(giou_loss(degenerate, degenerate).numpy(), [1.0, 1.0])
