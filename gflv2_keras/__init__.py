"""gflv2-keras: GFocalV2 (GFLv2) dense object detection for Keras 3 / TensorFlow."""

from gflv2_keras.models.detector import GFLV2Detector
from gflv2_keras.presets import list_presets

__version__ = "0.1.0"

__all__ = ["GFLV2Detector", "list_presets", "__version__"]
