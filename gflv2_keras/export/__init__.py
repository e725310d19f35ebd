"""Exports of ``GFLV2Detector``: SavedModel for TF Serving and ``keras.layers.TFSMLayer``, ONNX,
LiteRT, OpenVINO, and Keras' own ``Model.export`` for any input size.

See ``gflv2_keras.export.saved_model`` for the signatures (names, dtypes, shapes, box order),
``gflv2_keras.export.formats`` for the portable formats and ``gflv2_keras.export.archive`` for
how every SavedModel is written.
"""

from gflv2_keras.utils.lazy import lazy_exports

__getattr__, __all__ = lazy_exports(__name__, {
    "BYTES_SIGNATURE": "saved_model",
    "KERAS_ENDPOINT": "saved_model",
    "TENSOR_SIGNATURE": "saved_model",
    "directory_size": "saved_model",
    "export_keras_archive": "saved_model",
    "export_saved_model": "saved_model",
    "saved_model_op_types": "saved_model",
    "keras_export": "archive",
    "write_saved_model": "archive",
})
