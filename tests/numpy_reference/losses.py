"""Float64 NumPy references of the element-wise GFL losses (``mmdet/models/losses/gfocal_loss.py``,
``mmdet/models/losses/iou_loss.py giou_loss``), written from the formulas, independently of
``gflv2_keras.losses``."""

import numpy as np


def bce_reference(p, y):
    """torch.nn.functional.binary_cross_entropy: each log clamped at -100."""
    with np.errstate(divide="ignore"):
        return -(y * np.maximum(np.log(p), -100.0) + (1 - y) * np.maximum(np.log(1 - p), -100.0))


def qfl_reference(probs, labels, scores, beta=2.0):
    """The official use_sigmoid=False code: negative term everywhere, label column overridden."""
    loss = bce_reference(probs, 0.0) * probs**beta
    for row in zip(*np.nonzero((labels >= 0) & (labels < probs.shape[-1]))):
        p = probs[row + (labels[row],)]
        loss[row + (labels[row],)] = bce_reference(p, scores[row]) * abs(scores[row] - p) ** beta
    return loss.sum(-1)


def dfl_reference(logits, targets):
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    left = targets.astype(np.int64)
    ce_left = -np.take_along_axis(log_probs, left[..., None], -1)[..., 0]
    ce_right = -np.take_along_axis(log_probs, left[..., None] + 1, -1)[..., 0]
    return ce_left * (left + 1 - targets) + ce_right * (targets - left)


def giou_loss_reference(a, b):
    area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])  # noqa: E731
    wh = np.clip(np.minimum(a[..., 2:], b[..., 2:]) - np.maximum(a[..., :2], b[..., :2]), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = np.maximum(area(a) + area(b) - inter, 1e-6)
    hull_wh = np.clip(np.maximum(a[..., 2:], b[..., 2:]) - np.minimum(a[..., :2], b[..., :2]), 0, None)
    hull = np.maximum(hull_wh[..., 0] * hull_wh[..., 1], 1e-6)
    return 1 - (inter / union - (hull - union) / hull)
