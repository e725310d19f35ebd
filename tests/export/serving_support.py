"""Shared pieces of the export tests: the documented serving contract written out independently,
sample images, comparisons with ``detector.detect`` and an emulator of TF Serving's REST JSON
(none of TF Serving's binaries is available here)."""

import base64
import importlib.util
import io
import json
import re
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image



REPO = Path(__file__).resolve().parents[2]
PRESET = "gflv2_test_r18_nano"


CLASS_NAMES = ["circle", "square", "triangle"]


K = 100  # max_detections of the test config


CUSTOM_OP_PREFIX = "GflDeform"


# Prelude of the scripts run in a fresh interpreter as a deployment would: the package may be
# installed (editable) here, but a serving process must not depend on it, so refuse it first.
WITHOUT_PROJECT_PRELUDE = r"""
import sys


class _NoProject:
    def find_spec(self, name, path=None, target=None):
        if name == "gflv2_keras" or name.startswith("gflv2_keras."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None


sys.meta_path.insert(0, _NoProject())
"""


# The documented contract, written out here independently of the export module.
EXPECTED_INPUTS = {
    "serving_default": {"image_bytes": ("DT_STRING", (-1,))},
    "image_tensor": {"image_tensor": ("DT_UINT8", (-1, -1, -1, 3))},
    "tf_example": {"inputs": ("DT_STRING", (-1,))},
}


EXPECTED_OUTPUTS = {
    "detection_boxes": ("DT_FLOAT", (-1, K, 4)),
    "detection_scores": ("DT_FLOAT", (-1, K)),
    "detection_classes": ("DT_INT32", (-1, K)),
    "num_detections": ("DT_INT32", (-1,)),
    "detection_class_names": ("DT_STRING", (-1, K)),
}


def graph_op_types(saved_model_dir):
    """Every op type in a SavedModel's graphs, function library included, read from the
    ``saved_model.pb`` on disk (independently of the export module's own checks)."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((Path(saved_model_dir) / "saved_model.pb").read_bytes())
    types = set()
    for meta_graph in saved_model.meta_graphs:
        types.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            types.update(node.op for node in function.node_def)
    return types


def assert_no_custom_op(saved_model_dir):
    custom = {op for op in graph_op_types(saved_model_dir) if op.startswith(CUSTOM_OP_PREFIX)}
    assert not custom, f"custom op(s) {custom} in {saved_model_dir}"


def stored_values(saved_model_dir):
    """Number of values in a SavedModel's variables checkpoint."""
    entries = tf.train.list_variables(str(Path(saved_model_dir) / "variables" / "variables"))
    return sum(int(np.prod(shape)) for name, shape in entries if name != "_CHECKPOINTABLE_OBJECT_GRAPH")


def weight_count(model):
    return sum(int(np.prod(w.shape)) for w in model.weights)


def load_client():
    spec = importlib.util.spec_from_file_location("serving_client", REPO / "scripts" / "serving_client.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def encode(pixels, fmt, **kwargs):
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def pattern(height, width, seed):
    """Gradients plus noise: varied features for the random network, non-trivial for JPEG."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:height, :width]
    base = np.stack([x * 255.0 / width, y * 255.0 / height, (x + y) % 64 * 4.0], -1)
    return np.clip(base + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)


def decode(data):
    """The stored frame of encoded bytes: JPEG by Pillow (the library's reader), the rest by TensorFlow."""
    if data[:2] == b"\xff\xd8":
        return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    return tf.io.decode_image(data, channels=3, expand_animations=False).numpy()


def sample_images():
    """Encoded images of four formats and sizes (the GIF is animated: its first frame counts)."""
    png_pixels, jpeg_pixels, bmp_pixels = pattern(61, 83, 0), pattern(47, 70, 1), pattern(90, 40, 2)
    frames = [Image.fromarray(pattern(33, 50, 3)), Image.fromarray(pattern(33, 50, 4))]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:])
    return {
        "png": (encode(png_pixels, "PNG"), png_pixels),
        "jpeg": (encode(jpeg_pixels, "JPEG", quality=90), None),
        "bmp": (encode(bmp_pixels, "BMP"), bmp_pixels),
        "gif": (gif.getvalue(), None),
    }


def assert_matches_detect(served, index, reference, class_names=CLASS_NAMES, box_atol=1e-3, score_atol=1e-5):
    """Image ``index`` of a signature output equals ``detector.detect`` (and is padded with -1)."""
    count = int(served["num_detections"][index])
    assert count == len(reference["boxes"])
    assert count > 0, "the test needs detections"
    classes = np.asarray(served["detection_classes"][index])
    np.testing.assert_array_equal(classes[:count], reference["labels"])
    np.testing.assert_allclose(served["detection_boxes"][index][:count], reference["boxes"], atol=box_atol, rtol=0)
    np.testing.assert_allclose(
        served["detection_scores"][index][:count], reference["confidence"], atol=score_atol, rtol=0
    )
    assert np.all(np.asarray(served["detection_boxes"][index])[count:] == -1)
    assert np.all(np.asarray(served["detection_scores"][index])[count:] == -1)
    assert np.all(classes[count:] == -1)
    if "detection_class_names" in served:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in served["detection_class_names"][index]]
        assert names[:count] == [class_names[c] for c in reference["labels"]]
        assert set(names[count:]) <= {""}


def as_numpy(outputs):
    return {key: value.numpy() for key, value in outputs.items()}


class TFServingRestEmulator:
    """TF Serving's JSON predict API (``tensorflow_serving/util/json_tensor.cc``) over a loaded model.

    Request: ``signature_name`` (default ``serving_default``), then exactly one of
    ``instances`` (row format: a list of per-example values, or of ``{input: value}`` objects;
    stacked into a batch) or ``inputs`` (columnar: a value for a single-input signature, or
    ``{input: batched value}``). ``{"b64": "..."}`` objects become the decoded bytes of string
    tensors. Response: ``{"predictions": [{output: value}, ...]}`` for ``instances``,
    ``{"outputs": {output: batched value}}`` for ``inputs``; floats written as ``WriteDecimal``
    does (``%g``, or ``%.9g`` when that does not round-trip); string outputs as JSON strings
    unless the output name ends in ``_bytes`` (then ``{"b64": ...}``); errors as HTTP 400
    ``{"error": message}``.
    """

    def __init__(self, loaded):
        self.loaded = loaded

    def predict(self, body):
        try:
            request = json.loads(body)
            signature = self.loaded.signatures[request.get("signature_name", "serving_default")]
            specs = signature.structured_input_signature[1]
            if ("instances" in request) == ("inputs" in request):
                raise ValueError("expecting exactly one of 'instances' or 'inputs'")
            row_format = "instances" in request
            values = (
                self._row_inputs(request["instances"], specs)
                if row_format
                else self._columnar_inputs(request["inputs"], specs)
            )
            tensors = {name: self._tensor(value, specs[name].dtype) for name, value in values.items()}
            outputs = {name: value.numpy() for name, value in signature(**tensors).items()}
        except (tf.errors.InvalidArgumentError, ValueError, KeyError) as error:
            message = error.message if isinstance(error, tf.errors.OpError) else str(error)
            return 400, json.dumps({"error": message})
        return 200, self._response(outputs, row_format)

    @staticmethod
    def _is_b64(value):
        return isinstance(value, dict) and list(value) == ["b64"] and isinstance(value["b64"], str)

    def _row_inputs(self, instances, specs):
        if not isinstance(instances, list) or not instances:
            raise ValueError("'instances' must be a non-empty list")
        if isinstance(instances[0], dict) and not self._is_b64(instances[0]):
            if any(set(row) != set(specs) for row in instances):
                raise ValueError(f"every instance must have exactly the keys {sorted(specs)}")
            return {name: [row[name] for row in instances] for name in specs}
        if len(specs) != 1:
            raise ValueError("instances is a plain list, but the signature has several inputs")
        return {next(iter(specs)): instances}

    def _columnar_inputs(self, inputs, specs):
        if not isinstance(inputs, dict) or self._is_b64(inputs):
            if len(specs) != 1:
                raise ValueError("inputs is a plain value, but the signature has several inputs")
            return {next(iter(specs)): inputs}
        return {name: inputs[name] for name in specs}

    def _tensor(self, value, dtype):
        def leaf(v):
            if self._is_b64(v):
                return base64.b64decode(v["b64"], validate=True)
            if isinstance(v, list):
                return [leaf(x) for x in v]
            return v.encode() if isinstance(v, str) else v

        value = leaf(value)
        if dtype == tf.string:
            return tf.constant(np.array(value, dtype=object))
        array = np.array(value)
        if array.dtype == object:
            raise ValueError("ragged or mixed JSON value")
        return tf.constant(array.astype(dtype.as_numpy_dtype))

    @staticmethod
    def _decimal(value):
        value = np.float32(value)
        if np.isnan(value):
            return "NaN"
        if np.isinf(value):
            return "-Infinity" if value < 0 else "Infinity"
        text = "%g" % value
        if np.float32(float(text)) != value:
            text = "%.9g" % value
        if "." not in text and "e" not in text:
            text += ".0"
        return text

    def _write(self, array, as_bytes):
        array = np.asarray(array)
        if array.ndim:
            return "[" + ",".join(self._write(item, as_bytes) for item in array) + "]"
        item = array[()]
        if array.dtype.kind == "f":
            return self._decimal(item)
        if array.dtype.kind in "iu":
            return str(int(item))
        if array.dtype.kind == "b":
            return "true" if item else "false"
        if as_bytes:
            return json.dumps({"b64": base64.b64encode(item).decode()})
        return json.dumps(item.decode("utf-8"))

    def _response(self, outputs, row_format):
        def entry(name, value):
            return json.dumps(name) + ":" + self._write(value, name.endswith("_bytes"))

        if row_format:
            batch = {len(value) for value in outputs.values()}
            assert len(batch) == 1, "row format needs one batch size"
            rows = [
                "{" + ",".join(entry(name, value[i]) for name, value in outputs.items()) + "}"
                for i in range(batch.pop())
            ]
            return '{"predictions":[' + ",".join(rows) + "]}"
        return '{"outputs":{' + ",".join(entry(name, value) for name, value in outputs.items()) + "}}"


def parse_signature_defs(text):
    """``{signature: {"inputs"|"outputs": {name: (dtype, shape)}}}`` from ``saved_model_cli show --all``."""
    signatures, current, tensor = {}, None, None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("Concrete Functions"):
            break
        if match := re.fullmatch(r"signature_def\['(.+)'\]:", line):
            current = signatures.setdefault(match[1], {"inputs": {}, "outputs": {}})
        elif match := re.fullmatch(r"(inputs|outputs)\['(.+)'\] tensor_info:", line):
            tensor = current[match[1]].setdefault(match[2], {})
        elif match := re.fullmatch(r"dtype: (\w+)", line):
            tensor["dtype"] = match[1]
        elif match := re.fullmatch(r"shape: \((.*)\)", line):
            tensor["shape"] = tuple(int(v) for v in match[1].split(",") if v.strip())
    return {
        name: {side: {k: (v["dtype"], v["shape"]) for k, v in tensors.items()} for side, tensors in sig.items()}
        for name, sig in signatures.items()
        if not name.startswith("__")
    }
