"""gflv2-keras: GFocalV2 (GFLv2) dense object detection for Keras 3 / TensorFlow.

Public API (imported lazily, so NumPy-only tools such as the synthetic-data generator do not
load TensorFlow): ``GFLV2Detector``, ``DeformConv2D``, ``list_presets``, ``losses``.
"""

from gflv2_keras.utils.lazy import lazy_exports

__version__ = "0.1.0"

__getattr__, __all__ = lazy_exports(__name__, {
    "GFLV2Detector": "models.detector",
    "DeformConv2D": "layers.deform_conv2d",
    "list_presets": "presets",
    "losses": None,
})
__all__ += ["__version__"]
