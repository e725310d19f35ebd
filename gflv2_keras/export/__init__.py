"""SavedModel export of ``GFLV2Detector`` for TF Serving and ``keras.layers.TFSMLayer``.

See ``gflv2_keras.export.saved_model`` for the signatures (names, dtypes, shapes, box order).
"""

from gflv2_keras.export.saved_model import (
    BYTES_SIGNATURE,
    KERAS_ENDPOINT,
    TENSOR_SIGNATURE,
    directory_size,
    export_keras_archive,
    export_saved_model,
    saved_model_op_types,
)

__all__ = [
    "BYTES_SIGNATURE",
    "KERAS_ENDPOINT",
    "TENSOR_SIGNATURE",
    "directory_size",
    "export_keras_archive",
    "export_saved_model",
    "saved_model_op_types",
]
