"""Conversion of official GFocalV2 PyTorch checkpoints (``gflv2 convert``).

* :func:`read_official_checkpoint`: ``.pth`` → ``(state_dict of NumPy arrays, meta)``, read
  without executing pickled code (needs PyTorch: ``pip install 'gflv2-keras[convert]'``).
* :func:`convert_state_dict`: strict one-to-one copy into a ``GFLV2Detector``.
* :func:`convert_checkpoint`: file + preset → preset folder with provenance metadata.
* :func:`load_backbone_weights`: ImageNet classification weights (torchvision / open-mmlab
  layout) into a detector's backbone, the start of every official training recipe.
"""

from gflv2_keras.utils.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "CheckpointMismatchError": "mapping",
    "CheckpointReadError": "checkpoint",
    "ConversionReport": "mapping",
    "DCNMismatchError": "mapping",
    "convert_checkpoint": "mapping",
    "convert_state_dict": "mapping",
    "load_backbone_weights": "mapping",
    "read_official_checkpoint": "checkpoint",
})
