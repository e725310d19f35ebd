"""The module path of ``GFLV2Detector`` before keras-hub support; the class is ``GFLV2ObjectDetector``.

Kept so ``from gflv2_keras.models.detector import GFLV2Detector`` in users' code keeps working.
"""

from gflv2_keras.models.inputs import validate_batch, validate_image  # noqa: F401
from gflv2_keras.models.object_detector import GFLV2Detector, GFLV2ObjectDetector  # noqa: F401
