"""gflv2-keras: GFocalV2 (GFLv2) dense object detection for Keras 3 / TensorFlow.

Public API (imported lazily, so NumPy-only tools such as the synthetic-data generator do not
load TensorFlow): the keras-hub classes ``GFLV2ObjectDetector`` (also named ``GFLV2Detector``),
``GFLV2Backbone``, ``GFLV2ObjectDetectorPreprocessor``, ``GFLV2ImageConverter``; ``DeformConv2D``,
``list_presets``, ``losses``. Using any of them registers the classes with Keras, so that
``keras_hub.models.ObjectDetector.from_preset(DIR)`` finds them.
"""

from gflv2_keras.utils.lazy import lazy_exports

__version__ = "0.1.0"

__getattr__, __all__ = lazy_exports(__name__, {
    "GFLV2Detector": "models.object_detector",
    "GFLV2ObjectDetector": "models.object_detector",
    "GFLV2Backbone": "models.backbone",
    "GFLV2ObjectDetectorPreprocessor": "models.preprocessor",
    "GFLV2ImageConverter": "models.preprocessor",
    "DeformConv2D": "layers.deform_conv2d",
    "list_presets": "presets",
    "losses": None,
})
__all__ += ["__version__"]
