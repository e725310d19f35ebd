"""The General distribution ("Integral") box regression of GFL: bins per side → expected distance.

Box logits are laid out side-major, ``(left, top, right, bottom) x (reg_max + 1)`` bins, so channel
``side * (reg_max + 1) + bin`` (the official ``bbox_pred`` channel order). Distances are in grid
(stride) units; multiply by the stride of the level to get pixels.
"""

from keras import ops


def side_logits(box_logits, reg_max=16):
    """Split box logits per side: ``[..., 4 * (reg_max + 1)]`` → ``[..., 4, reg_max + 1]``."""
    shape = ops.shape(box_logits)
    return ops.reshape(box_logits, tuple(shape[:-1]) + (4, reg_max + 1))


def integral_distances(box_logits, reg_max=16):
    """Expected distance of each side under the softmax over its bins (the official ``Integral``).

    Args:
        box_logits: ``[..., 4 * (reg_max + 1)]`` side-major logits (already multiplied by the
            level's ``Scale``).
        reg_max: largest bin value; bins are ``0, 1, ..., reg_max``.

    Returns:
        ``[..., 4]`` ``(left, top, right, bottom)`` distances in grid units, in ``[0, reg_max]``.
    """
    probs = ops.softmax(side_logits(box_logits, reg_max), axis=-1)
    project = ops.arange(reg_max + 1, dtype=probs.dtype)
    return ops.sum(probs * project, axis=-1)


__all__ = ["side_logits", "integral_distances"]
