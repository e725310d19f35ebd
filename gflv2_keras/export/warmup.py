"""TF Serving warm-up records: ``<version>/assets.extra/tf_serving_warmup_requests``.

TF Serving replays these requests when it loads a model version (before marking it
available; https://www.tensorflow.org/tfx/serving/saved_model_warmup), so the one-time costs
(graph optimisation, kernel selection, memory pools) are paid at load time instead of by the
first real client. The file is a TFRecord of ``tensorflow.serving.PredictionLog`` protos, one
``PredictLog`` per signature, each holding a ``PredictRequest`` with a small synthetic image.

The ``tensorflow-serving-api`` package (which defines ``PredictionLog``) is not a dependency of
this project, so the two wrapper messages are encoded here from the public ``.proto`` field
numbers; the tensors inside are TensorFlow's own ``TensorProto`` (``tf.make_tensor_proto``).
Field numbers (tensorflow/serving, ``tensorflow_serving/apis/``):

- ``prediction_log.proto``: ``PredictionLog { LogMetadata log_metadata = 1; oneof log_type
  { ...; PredictLog predict_log = 6; ... } }``, ``PredictLog { PredictRequest request = 1;
  PredictResponse response = 2; }``
- ``predict.proto``: ``PredictRequest { ModelSpec model_spec = 1; map<string, TensorProto>
  inputs = 2; repeated string output_filter = 3; ... }``
- ``model.proto``: ``ModelSpec { string name = 1; oneof version_choice { Int64Value version
  = 2; string version_label = 4; } string signature_name = 3; }``
"""

import io
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2

WARMUP_FOLDER = "assets.extra"
WARMUP_FILE = "tf_serving_warmup_requests"
WARMUP_IMAGE_SIZE = (64, 96)  # (H, W); the detector resizes it to its input scale anyway

# Protobuf wire types (https://protobuf.dev/programming-guides/encoding/).
_LENGTH_DELIMITED = 2

# Field numbers listed in the module docstring.
_PREDICTION_LOG_PREDICT_LOG = 6
_PREDICT_LOG_REQUEST = 1
_REQUEST_MODEL_SPEC = 1
_REQUEST_INPUTS = 2
_MODEL_SPEC_NAME = 1
_MODEL_SPEC_SIGNATURE_NAME = 3
_MAP_KEY = 1  # a map<K, V> field is a repeated message { K key = 1; V value = 2; }
_MAP_VALUE = 2


def _varint(value):
    """Base-128 varint: 7 bits per byte, least significant group first, high bit = more."""
    if value < 0:
        raise ValueError(f"varint of a negative number {value}")
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number, payload):
    """A length-delimited field (string, bytes or sub-message): tag, length, bytes.

    The tag is the varint of ``number << 3 | wire_type``. Empty payloads are still written;
    a proto3 parser reads them as the default value, which is what they are.
    """
    if isinstance(payload, str):
        payload = payload.encode("utf-8")
    return _varint(number << 3 | _LENGTH_DELIMITED) + _varint(len(payload)) + payload


def predict_request(signature_name, inputs, model_name=""):
    """Serialized ``PredictRequest`` for ``signature_name``.

    Args:
        signature_name: the SignatureDef key (``ModelSpec.signature_name``).
        inputs: ``{input name: array-like}``; each value is converted with
            ``tf.make_tensor_proto`` (pass a ``TensorProto`` to choose the dtype yourself).
        model_name: ``ModelSpec.name`` (optional; warm-up does not need it).
    """
    spec = (_field(_MODEL_SPEC_NAME, model_name) if model_name else b"") + _field(
        _MODEL_SPEC_SIGNATURE_NAME, signature_name
    )
    body = _field(_REQUEST_MODEL_SPEC, spec)
    for name in sorted(inputs):
        value = inputs[name]
        tensor = value if isinstance(value, tensor_pb2.TensorProto) else tf.make_tensor_proto(value)
        entry = _field(_MAP_KEY, name) + _field(_MAP_VALUE, tensor.SerializeToString())
        body += _field(_REQUEST_INPUTS, entry)
    return body


def prediction_log(request):
    """Serialized ``PredictionLog`` whose ``predict_log.request`` is the serialized ``request``."""
    return _field(_PREDICTION_LOG_PREDICT_LOG, _field(_PREDICT_LOG_REQUEST, request))


def synthetic_image(height=WARMUP_IMAGE_SIZE[0], width=WARMUP_IMAGE_SIZE[1], seed=0):
    """A deterministic uint8 RGB ``[height, width, 3]`` image (smooth gradient plus noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1)
    return np.clip(base + rng.integers(-20, 21, base.shape), 0, 255).astype(np.uint8)


def encode_png(image):
    """PNG bytes of a uint8 ``[H, W, 3]`` image (lossless, so a test can compare pixels)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def serialized_example(encoded_image):
    """A serialized ``tf.train.Example`` with the one feature ``image/encoded`` (bytes)."""
    feature = tf.train.Feature(bytes_list=tf.train.BytesList(value=[encoded_image]))
    return tf.train.Example(features=tf.train.Features(feature={"image/encoded": feature})).SerializeToString()


def warmup_requests(signature_inputs, model_name=""):
    """One serialized ``PredictionLog`` per signature, in the order given.

    Args:
        signature_inputs: ``{signature name: (input name, kind)}`` with kind ``"bytes"``
            (encoded image strings ``[1]``), ``"tensor"`` (uint8 ``[1, H, W, 3]``) or
            ``"example"`` (serialized ``tf.train.Example`` strings ``[1]``).
        model_name: optional ``ModelSpec.name``.
    """
    image = synthetic_image()
    encoded = encode_png(image)
    values = {
        "bytes": lambda: tf.make_tensor_proto([encoded], dtype=tf.string),
        "tensor": lambda: tf.make_tensor_proto(image[None], dtype=tf.uint8),
        "example": lambda: tf.make_tensor_proto([serialized_example(encoded)], dtype=tf.string),
    }
    logs = []
    for signature, (input_name, kind) in signature_inputs.items():
        request = predict_request(signature, {input_name: values[kind]()}, model_name=model_name)
        logs.append(prediction_log(request))
    return logs


def write_warmup(version_dir, signature_inputs, model_name=""):
    """Write ``version_dir/assets.extra/tf_serving_warmup_requests``; returns its ``Path``."""
    folder = Path(version_dir) / WARMUP_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / WARMUP_FILE
    with tf.io.TFRecordWriter(str(path)) as writer:
        for record in warmup_requests(signature_inputs, model_name=model_name):
            writer.write(record)
    return path
