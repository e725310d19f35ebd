"""TF Serving warm-up records and the ``tf_example`` signature.

The warm-up file is parsed back with message classes built here from the ``.proto`` text of
tensorflow/serving (``tensorflow_serving/apis/{prediction_log,predict,model}.proto``) through
``google.protobuf``'s descriptor pool — independent of the hand-written encoder in
``gflv2_keras.export.warmup`` — and each request is replayed through the loaded SavedModel.
"""

import contextlib
import io

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from tensorflow.core.framework import tensor_pb2

from gflv2_keras.cli import main
from gflv2_keras.export import warmup as warmup_module

from serving_support import as_numpy, assert_matches_detect, decode, encode, pattern

TYPE_STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
TYPE_MESSAGE = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
OPTIONAL = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
REPEATED = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED


def _serving_messages():
    """``PredictionLog`` (the parts warm-up uses) as dynamic protobuf classes, from the .proto text."""
    pool = descriptor_pool.DescriptorPool()
    tensor_file = descriptor_pb2.FileDescriptorProto()
    for module in _tensor_proto_files():
        module.DESCRIPTOR.CopyToProto(tensor_file)
        pool.Add(tensor_file)
        tensor_file = descriptor_pb2.FileDescriptorProto()
    proto = descriptor_pb2.FileDescriptorProto(
        name="warmup_test_serving.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=[tensor_pb2.DESCRIPTOR.name],
    )

    def message(name, fields, options=None):
        msg = proto.message_type.add(name=name)
        if options:
            msg.options.CopyFrom(options)
        for field_name, number, kind, label, type_name in fields:
            field = msg.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                field.type_name = type_name
        return msg

    message("ModelSpec", [("name", 1, TYPE_STRING, OPTIONAL, None), ("signature_name", 3, TYPE_STRING, OPTIONAL, None)])
    request = message(
        "PredictRequest",
        [
            ("model_spec", 1, TYPE_MESSAGE, OPTIONAL, ".tensorflow.serving.ModelSpec"),
            ("inputs", 2, TYPE_MESSAGE, REPEATED, ".tensorflow.serving.PredictRequest.InputsEntry"),
        ],
    )
    entry = request.nested_type.add(name="InputsEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=TYPE_STRING, label=OPTIONAL)
    entry.field.add(name="value", number=2, type=TYPE_MESSAGE, label=OPTIONAL, type_name=".tensorflow.TensorProto")
    message("PredictLog", [("request", 1, TYPE_MESSAGE, OPTIONAL, ".tensorflow.serving.PredictRequest")])
    message("PredictionLog", [("predict_log", 6, TYPE_MESSAGE, OPTIONAL, ".tensorflow.serving.PredictLog")])
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.PredictionLog"))


def _tensor_proto_files():
    """tensor.proto and its imports, dependencies first."""
    from tensorflow.core.framework import resource_handle_pb2, tensor_shape_pb2, types_pb2

    return [tensor_shape_pb2, types_pb2, resource_handle_pb2, tensor_pb2]


def _read_warmup(path):
    prediction_log = _serving_messages()
    logs = []
    for record in tf.data.TFRecordDataset(str(path)):
        log = prediction_log()
        log.ParseFromString(record.numpy())
        assert log.HasField("predict_log")
        logs.append(log)
    return logs


def test_warmup_file_replays_each_signature(exported, loaded):
    path = exported.path / "assets.extra" / "tf_serving_warmup_requests"
    assert path.is_file()
    logs = _read_warmup(path)
    assert [log.predict_log.request.model_spec.signature_name for log in logs] == [
        "serving_default",
        "image_tensor",
        "tf_example",
    ]
    for log in logs:
        request = log.predict_log.request
        assert request.model_spec.name == "gflv2_nano"
        inputs = {name: tf.make_ndarray(tensor) for name, tensor in request.inputs.items()}
        signature = loaded.signatures[request.model_spec.signature_name]
        assert set(inputs) == set(signature.structured_input_signature[1])
        replayed = as_numpy(signature(**{name: tf.constant(value) for name, value in inputs.items()}))
        image = _request_image(request.model_spec.signature_name, inputs)
        reference = exported.detector.detect(image)
        assert_matches_detect(replayed, 0, reference)


def _request_image(signature_name, inputs):
    """The uint8 image a warm-up request carries, unpacked without the export code."""
    if signature_name == "image_tensor":
        (batch,) = inputs.values()
        assert batch.dtype == np.uint8 and batch.shape[0] == 1 and batch.shape[-1] == 3
        return batch[0]
    (strings,) = inputs.values()
    assert strings.shape == (1,)
    data = strings[0]
    if signature_name == "tf_example":
        data = tf.train.Example.FromString(data).features.feature["image/encoded"].bytes_list.value[0]
    return decode(data)


def test_no_warmup_flag(exported, tmp_path):
    base = tmp_path / "models" / "nano"
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(["export", "--preset", str(exported.root / "preset"), "--output", str(base), "--no-warmup"])
    assert code == 0
    assert (base / "1" / "saved_model.pb").is_file()
    assert not (base / "1" / "assets.extra" / "tf_serving_warmup_requests").exists()


def test_tf_example_signature_equals_detect(exported, loaded):
    images = [pattern(52, 77, 7), pattern(40, 33, 8)]
    examples = []
    for index, image in enumerate(images):
        features = {
            "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[encode(image, "PNG")])),
            "image/source_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[str(index).encode()])),
        }
        examples.append(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString())
    served = as_numpy(loaded.signatures["tf_example"](inputs=tf.constant(examples)))
    for index, image in enumerate(images):
        assert_matches_detect(served, index, exported.detector.detect(image))


def test_tf_example_without_image_is_invalid_argument(loaded):
    example = tf.train.Example().SerializeToString()
    with pytest.raises(tf.errors.InvalidArgumentError):
        loaded.signatures["tf_example"](inputs=tf.constant([example]))


@pytest.mark.parametrize("value", [1, 127, 128, 300, 2**31, 2**63 - 1])
def test_varint_matches_protobuf(value):
    from tensorflow.core.framework import tensor_shape_pb2

    # protobuf's encoding of an int64 field 1 (Dim.size): tag byte 0x08, then the varint
    reference = tensor_shape_pb2.TensorShapeProto.Dim(size=value).SerializeToString()
    assert reference == b"\x08" + warmup_module._varint(value)
    assert warmup_module._varint(0) == b"\x00"
    with pytest.raises(ValueError):
        warmup_module._varint(-1)
