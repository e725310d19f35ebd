"""gflv2-keras: GFocalV2 (GFLv2) dense object detection for Keras 3 / TensorFlow.

Public API (imported lazily, so NumPy-only tools such as the synthetic-data generator do not
load TensorFlow): ``GFLV2Detector``, ``DeformConv2D``, ``list_presets``, ``losses``.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {
    "GFLV2Detector": ("gflv2_keras.models.detector", "GFLV2Detector"),
    "DeformConv2D": ("gflv2_keras.layers.deform_conv2d", "DeformConv2D"),
    "list_presets": ("gflv2_keras.presets", "list_presets"),
    "losses": ("gflv2_keras.losses", None),
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'gflv2_keras' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value
