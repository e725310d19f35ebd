"""The GFL losses: element-wise QFL, DFL and GIoU, and ``gfl_loss``, the batch loss that combines them
with ATSS targets (``mmdet/models/dense_heads/gfocal_head.py GFocalHead.loss`` of the official code)."""

from gflv2_keras.losses.element_losses import distribution_focal_loss, giou_loss, quality_focal_loss
from gflv2_keras.losses.gfl_loss import gfl_loss, scale_for_replicas, valid_point_mask

__all__ = ["distribution_focal_loss", "gfl_loss", "giou_loss", "quality_focal_loss", "scale_for_replicas", "valid_point_mask"]
