"""Conversion of official GFocalV2 PyTorch checkpoints (``gflv2 convert``).

* :func:`read_official_checkpoint`: ``.pth`` → ``(state_dict of NumPy arrays, meta)``, read
  without executing pickled code (needs PyTorch: ``pip install 'gflv2-keras[convert]'``).
* :func:`convert_state_dict`: strict one-to-one copy into a ``GFLV2Detector``.
* :func:`convert_checkpoint`: file + preset → preset folder with provenance metadata.
* :func:`load_backbone_weights`: ImageNet classification weights (torchvision / open-mmlab
  layout) into a detector's backbone, the start of every official training recipe.
"""

from gflv2_keras.convert.checkpoint import CheckpointReadError, read_official_checkpoint
from gflv2_keras.convert.mapping import (
    CheckpointMismatchError,
    ConversionReport,
    DCNMismatchError,
    convert_checkpoint,
    convert_state_dict,
    load_backbone_weights,
)

__all__ = [
    "CheckpointMismatchError",
    "CheckpointReadError",
    "ConversionReport",
    "DCNMismatchError",
    "convert_checkpoint",
    "convert_state_dict",
    "load_backbone_weights",
    "read_official_checkpoint",
]
