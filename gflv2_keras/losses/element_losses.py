"""Element-wise GFL losses: Quality Focal Loss, Distribution Focal Loss and the GIoU loss.

All functions return un-reduced losses; weighting and normalisation belong to ``gfl_loss``.
Written with ``keras.ops`` (one custom gradient, for PyTorch's probability-space BCE).
"""

from keras import ops

from gflv2_keras.ops.boxes import aligned_giou

# PyTorch's F.binary_cross_entropy clamps each log at -100 and, in its backward, divides by
# max(p * (1 - p), 1e-12).
_LOG_CLAMP = -100.0
_BCE_GRAD_EPS = 1e-12


def _clamped_log(x):
    """``max(log(x), -100)`` for ``x >= 0`` without evaluating ``log(0)``."""
    positive = x > 0
    return ops.where(positive, ops.maximum(ops.log(ops.where(positive, x, 1.0)), _LOG_CLAMP), _LOG_CLAMP)


def _clamped_log1m(x):
    """``max(log(1 - x), -100)`` for ``x <= 1``, as ``log1p(-x)`` (PyTorch's form) without evaluating ``log(0)``.

    ``log(1 - x)`` would round ``1 - x`` first: for the small probabilities of the negatives
    (most of QFL's terms) that costs a relative error of ``eps / x`` (1% at ``x = 1e-6`` in
    float32); ``log1p`` keeps full precision.
    """
    below_one = x < 1
    return ops.where(below_one, ops.maximum(ops.log1p(-ops.where(below_one, x, 0.0)), _LOG_CLAMP), _LOG_CLAMP)


@ops.custom_gradient
def binary_cross_entropy(probs, targets):
    """``torch.nn.functional.binary_cross_entropy`` on probabilities, element-wise, with its gradient.

    Value: ``-(y * max(log p, -100) + (1 - y) * max(log1p(-p), -100))`` (``log1p`` as PyTorch: full
    precision for small ``p``).
    Gradient w.r.t. ``p``: PyTorch's ``(p - y) / max(p * (1 - p), 1e-12)``, which stays finite at
    ``p = 0`` and ``p = 1`` (plain autodiff through the clamped logs would give 0 or NaN there).
    Gradient w.r.t. ``y``: ``max(log1p(-p), -100) - max(log p, -100)``.

    Args:
        probs: probabilities in ``[0, 1]``; targets: soft targets in ``[0, 1]``, same shape.
    """
    log_p = _clamped_log(probs)
    log_not_p = _clamped_log1m(probs)
    loss = -(targets * log_p + (1.0 - targets) * log_not_p)

    def grad(*args, upstream=None):
        # Keras' calling convention: TensorFlow and JAX pass ``upstream`` positionally, PyTorch by keyword.
        if upstream is None:
            (upstream,) = args
        d_probs = (probs - targets) / ops.maximum(probs * (1.0 - probs), _BCE_GRAD_EPS)
        return upstream * d_probs, upstream * (log_not_p - log_p)

    return loss, grad


def quality_focal_loss(probs, labels, scores, beta=2.0):
    """Quality Focal Loss on probabilities (the official ``use_sigmoid=False`` flavour).

    Every column ``c`` is ``BCE(p_c, y_c) * |y_c - p_c| ** beta`` with the soft target ``y_c =
    score`` at ``c == label`` and 0 elsewhere. That is the official negative term
    ``BCE(p, 0) * p ** beta`` on every column, replaced at the label column by
    ``BCE(p, score) * |score - p| ** beta``.

    Args:
        probs: ``[..., C]`` probabilities (for GFLv2 the joint ``sigmoid(cls) * quality`` of all
            ``C = num_classes + 1`` columns).
        labels: ``[...]`` int class index of each row; a label outside ``[0, C)`` (e.g.
            ``num_classes`` for GFLv1 heads with ``C = num_classes``) has no positive column.
            With ``C = num_classes + 1`` a background label ``num_classes`` selects the extra
            column with score 0, which equals the negative term (as in the official code).
        scores: ``[...]`` IoU quality targets in ``[0, 1]`` (0 for negatives).
        beta: focusing exponent.

    Returns:
        ``[...]`` loss of each row, summed over the ``C`` columns.
    """
    num_columns = ops.shape(probs)[-1]
    columns = ops.arange(num_columns, dtype=labels.dtype)
    is_label = ops.expand_dims(labels, -1) == columns
    targets = ops.where(is_label, ops.expand_dims(ops.cast(scores, probs.dtype), -1), 0.0)
    targets = ops.cast(targets, probs.dtype)
    focal = ops.power(ops.abs(targets - probs), beta)
    return ops.sum(binary_cross_entropy(probs, targets) * focal, axis=-1)


def distribution_focal_loss(logits, targets):
    """Distribution Focal Loss of one side distribution per row.

    ``DFL = CE(logits, l) * (l + 1 - t) + CE(logits, l + 1) * (t - l)`` with ``l = floor(t)`` and
    ``CE`` the softmax cross-entropy.

    Args:
        logits: ``[..., reg_max + 1]`` bin logits.
        targets: ``[...]`` continuous distances in grid units, in ``[0, reg_max - 0.1]`` (so
            ``l + 1 <= reg_max``; the official code clips with ``eps = 0.1``).

    Returns:
        ``[...]`` loss per row.
    """
    targets = ops.cast(targets, logits.dtype)
    left = ops.floor(targets)
    left_index = ops.expand_dims(ops.cast(left, "int32"), -1)
    neg_log_probs = -ops.log_softmax(logits, axis=-1)
    ce_left = ops.squeeze(ops.take_along_axis(neg_log_probs, left_index, axis=-1), -1)
    ce_right = ops.squeeze(ops.take_along_axis(neg_log_probs, left_index + 1, axis=-1), -1)
    return ce_left * (left + 1.0 - targets) + ce_right * (targets - left)


def giou_loss(pred, target):
    """``1 - GIoU`` of corresponding xyxy boxes ``[..., 4]`` → ``[...]`` (union, hull ≥ 1e-6)."""
    return 1.0 - aligned_giou(pred, target)


__all__ = ["binary_cross_entropy", "quality_focal_loss", "distribution_focal_loss", "giou_loss"]
