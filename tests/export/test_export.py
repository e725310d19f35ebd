"""SavedModel / TF Serving export.

What TF Serving would see is checked without its binary (none is available here): the
signatures as ``saved_model_cli`` lists them, the model loaded in a fresh Python process that
cannot import this package, TF Serving's REST JSON (an emulator of ``json_tensor.cc``), bad
images, no ``GflDeform*`` custom op, the CLI, atomic publishing and ``TFSMLayer``.
"""

import base64
import contextlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from gflv2_keras import GFLV2Detector
from gflv2_keras.cli import main
from gflv2_keras.export import export_keras_archive, export_saved_model
from gflv2_keras.export import saved_model as export_module

REPO = Path(__file__).resolve().parents[2]
PRESET = "gflv2_test_r18_nano"
CLASS_NAMES = ["circle", "square", "triangle"]
K = 100  # max_detections of the test config
CUSTOM_OP_PREFIX = "GflDeform"

# The documented contract, written out here independently of the export module.
EXPECTED_INPUTS = {
    "serving_default": {"image_bytes": ("DT_STRING", (-1,))},
    "image_tensor": {"image_tensor": ("DT_UINT8", (-1, -1, -1, 3))},
}
EXPECTED_OUTPUTS = {
    "detection_boxes": ("DT_FLOAT", (-1, K, 4)),
    "detection_scores": ("DT_FLOAT", (-1, K)),
    "detection_classes": ("DT_INT32", (-1, K)),
    "num_detections": ("DT_INT32", (-1,)),
    "detection_class_names": ("DT_STRING", (-1, K)),
}


# ---------------------------------------------------------------------------------- helpers
graph_op_types = export_module.saved_model_op_types


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
    np.testing.assert_allclose(served["detection_scores"][index][:count], reference["confidence"], atol=score_atol,
                               rtol=0)
    assert np.all(np.asarray(served["detection_boxes"][index])[count:] == -1)
    assert np.all(np.asarray(served["detection_scores"][index])[count:] == -1)
    assert np.all(classes[count:] == -1)
    if "detection_class_names" in served:
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in served["detection_class_names"][index]]
        assert names[:count] == [class_names[c] for c in reference["labels"]]
        assert set(names[count:]) <= {""}


def as_numpy(outputs):
    return {key: value.numpy() for key, value in outputs.items()}


# ------------------------------------------------------------------- TF Serving REST emulator
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
            values = self._row_inputs(request["instances"], specs) if row_format else self._columnar_inputs(
                request["inputs"], specs)
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


def test_rest_emulator_float_format_matches_tf_serving():
    decimal = TFServingRestEmulator._decimal
    assert decimal(0.2) == "0.2"  # %g round-trips in float32: no noise digits
    assert decimal(3.0) == "3.0"
    assert decimal(-1.0) == "-1.0"
    assert decimal(9e6) == "9e+06"
    assert decimal(np.float32(123.456787)) == "123.456787"  # needs %.9g
    assert np.float32(float(decimal(np.float32(1 / 3)))) == np.float32(1 / 3)


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The nano preset (random weights, threshold 0 so there are detections) exported via the CLI."""
    keras.utils.set_random_seed(0)
    detector = GFLV2Detector.from_preset(
        PRESET, load_weights=False, test_config={"score_threshold": 0.0}, class_names=CLASS_NAMES
    )
    detector.build_for_inference()
    root = tmp_path_factory.mktemp("export")
    detector.save_to_preset(root / "preset")
    base = root / "models" / "gflv2_nano"
    stdout = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(stdout):
        code = main(["export", "--preset", str(root / "preset"), "--output", str(base), "--version", "3"])
    seconds = time.perf_counter() - start
    print(f"\nnano export via CLI: {seconds:.1f} s, {export_module.directory_size(base / '3') / 2**20:.2f} MiB")
    images = sample_images()
    return SimpleNamespace(
        detector=detector,
        root=root,
        base=base,
        path=base / "3",
        code=code,
        stdout=stdout.getvalue(),
        encoded=[data for data, _ in images.values()],
        original=[pixels for _, pixels in images.values()],
    )


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(str(exported.path))


@pytest.fixture(scope="module")
def references(exported):
    """``detector.detect`` on each image decoded in-process by the same decoder."""
    decoded = [decode(data) for data in exported.encoded]
    for pixels, original in zip(decoded, exported.original):
        if original is not None:  # lossless formats decode to the pixels that were encoded
            np.testing.assert_array_equal(pixels, original)
    return decoded, [exported.detector.detect(pixels) for pixels in decoded]


# ------------------------------------------------------------------------------------- tests
def test_cli_writes_tf_serving_layout_and_prints_docker_command(exported, capsys):
    assert exported.code == 0, exported.stdout
    assert sorted(os.listdir(exported.base)) == ["3"]  # no staging leftovers
    assert (exported.path / "saved_model.pb").is_file()
    assert (exported.path / "variables" / "variables.index").is_file()
    assert stored_values(exported.path) == weight_count(exported.detector)  # each weight once (keras#23553)
    assert (
        f'docker run -p 8501:8501 -p 8500:8500 -v "{exported.base}:/models/gflv2_nano" '
        "-e MODEL_NAME=gflv2_nano tensorflow/serving"
    ) in exported.stdout

    before = (exported.path / "saved_model.pb").stat().st_mtime_ns
    code = main(["export", "--preset", str(exported.root / "preset"), "--output", str(exported.base), "--version", "3"])
    assert code == 2
    assert "already exists" in capsys.readouterr().err
    assert (exported.path / "saved_model.pb").stat().st_mtime_ns == before


def test_cli_relative_output_mounts_from_pwd():
    from gflv2_keras.export.cli import _serving_instructions

    text = _serving_instructions(Path("models/my_detector"))
    assert '-v "$PWD/models/my_detector:/models/my_detector" -e MODEL_NAME=my_detector tensorflow/serving' in text


SUBPROCESS_SCRIPT = r"""
import json, sys, time


class _NoProject:
    # The package may be installed (editable) in this environment; a serving process must not
    # depend on it, so refuse it before anything is imported.
    def find_spec(self, name, path=None, target=None):
        if name == "gflv2_keras" or name.startswith("gflv2_keras."):
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None


sys.meta_path.insert(0, _NoProject())
try:
    import gflv2_keras
except ModuleNotFoundError:
    pass
else:
    raise SystemExit(f"gflv2_keras is importable in the serving process: {gflv2_keras.__file__}")
import numpy as np
import tensorflow as tf

model_dir, manifest_path, out_path = sys.argv[1:4]
manifest = json.loads(open(manifest_path).read())
start = time.perf_counter()
model = tf.saved_model.load(model_dir)
load_seconds = time.perf_counter() - start
results = {}

def keep(prefix, outputs):
    for key, value in outputs.items():
        value = value.numpy()
        results[f"{prefix}/{key}"] = value.astype(bytes).astype(str) if value.dtype == object else value

encoded = [open(path, "rb").read() for path in manifest["encoded"]]
keep("bytes", model.signatures["serving_default"](image_bytes=tf.constant(encoded)))
for i, path in enumerate(manifest["pixels"]):
    keep(f"tensor{i}", model.signatures["image_tensor"](image_tensor=tf.constant(np.load(path))))
np.savez(out_path, **results)
print(json.dumps({"load_seconds": load_seconds}))
"""


def test_fresh_process_without_the_package_matches_detect_and_predict(exported, references, tmp_path):
    decoded, reference = references
    manifest = {"encoded": [], "pixels": []}
    for i, data in enumerate(exported.encoded):
        manifest["encoded"].append(str(tmp_path / f"image{i}.bin"))
        Path(manifest["encoded"][-1]).write_bytes(data)
    tensor_inputs = [pixels[None] for pixels in decoded] + [np.stack([decoded[0], decoded[0][:, ::-1]])]
    for i, batch in enumerate(tensor_inputs):
        manifest["pixels"].append(str(tmp_path / f"pixels{i}.npy"))
        np.save(manifest["pixels"][-1], batch)
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "serve.py").write_text(SUBPROCESS_SCRIPT)
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    result = subprocess.run(
        [sys.executable, "-I", str(tmp_path / "serve.py"), str(exported.path), str(tmp_path / "manifest.json"),
         str(tmp_path / "out.npz")],
        cwd=workdir, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    print(f"\nreload in a fresh process: {json.loads(result.stdout.splitlines()[-1])['load_seconds']:.1f} s")
    out = np.load(tmp_path / "out.npz")

    def signature_output(prefix):
        return {key.split("/", 1)[1]: out[key] for key in out.files if key.startswith(prefix + "/")}

    served = signature_output("bytes")
    assert served["detection_boxes"].shape == (len(decoded), K, 4)
    for i, ref in enumerate(reference):
        assert_matches_detect(served, i, ref)
        assert_matches_detect(signature_output(f"tensor{i}"), 0, ref)

    batch = tensor_inputs[-1]
    predicted = exported.detector.predict(batch, verbose=0)
    served = signature_output(f"tensor{len(decoded)}")
    np.testing.assert_array_equal(served["num_detections"], predicted["num_detections"])
    np.testing.assert_array_equal(served["detection_classes"], predicted["labels"])
    np.testing.assert_allclose(served["detection_boxes"], predicted["boxes"], atol=1e-3, rtol=0)
    np.testing.assert_allclose(served["detection_scores"], predicted["confidence"], atol=1e-5, rtol=0)


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


def test_saved_model_cli_lists_the_documented_signatures(exported):
    binary = shutil.which("saved_model_cli")
    command = [binary] if binary else [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    result = subprocess.run(
        command + ["show", "--dir", str(exported.path), "--all"],
        capture_output=True, text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MetaGraphDef with tag-set: 'serve'" in result.stdout
    signatures = parse_signature_defs(result.stdout)
    assert set(signatures) == set(EXPECTED_INPUTS)
    for name, inputs in EXPECTED_INPUTS.items():
        assert signatures[name]["inputs"] == inputs, name
        assert signatures[name]["outputs"] == EXPECTED_OUTPUTS, name


def test_rest_requests_decode_as_tf_serving_would(exported, loaded):
    client = load_client()
    emulator = TFServingRestEmulator(loaded)
    direct = as_numpy(loaded.signatures["serving_default"](image_bytes=tf.constant(exported.encoded)))
    for form in ("instances", "inputs"):
        body = client.build_rest_request(exported.encoded, signature="serving_default", form=form)
        values = body["instances"] if form == "instances" else body["inputs"]["image_bytes"]
        assert body["signature_name"] == "serving_default"
        assert [base64.b64decode(v["b64"]) for v in values] == exported.encoded
        status, text = emulator.predict(json.dumps(body))
        assert status == 200, text
        reply = json.loads(text)
        if form == "instances":
            assert len(reply["predictions"]) == len(exported.encoded)
            assert set(reply["predictions"][0]) == set(EXPECTED_OUTPUTS)
        else:
            assert set(reply["outputs"]) == set(EXPECTED_OUTPUTS)
        parsed = client.parse_rest_response(text)
        assert len(parsed) == len(exported.encoded)
        for i, detections in enumerate(parsed):
            count = int(direct["num_detections"][i])
            assert count > 0
            # TF Serving writes floats that round-trip, so boxes and scores come back exactly.
            np.testing.assert_array_equal(np.float32(detections["boxes"]), direct["detection_boxes"][i, :count])
            np.testing.assert_array_equal(np.float32(detections["confidence"]), direct["detection_scores"][i, :count])
            assert detections["labels"] == direct["detection_classes"][i, :count].tolist()
            assert detections["class_names"] == [CLASS_NAMES[c] for c in detections["labels"]]


def test_rest_image_tensor_requests(exported, loaded, references):
    client = load_client()
    emulator = TFServingRestEmulator(loaded)
    decoded, reference = references
    for form in ("instances", "inputs"):
        body = client.build_rest_request([decoded[1]], signature="image_tensor", form=form)
        status, text = emulator.predict(json.dumps(body))
        assert status == 200, text
        (detections,) = client.parse_rest_response(text)
        assert detections["labels"] == reference[1]["labels"].tolist()
        np.testing.assert_allclose(detections["boxes"], reference[1]["boxes"], atol=1e-3, rtol=0)
    with pytest.raises(TypeError, match="encoded image bytes"):
        client.build_rest_request([decoded[0]], signature="serving_default")
    with pytest.raises(ValueError, match="form"):
        client.build_rest_request(exported.encoded, form="columns")


@contextlib.contextmanager
def rest_server(emulator, model):
    """A local HTTP server answering ``POST /v1/models/<model>:predict`` through the emulator."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == f"/v1/models/{model}:predict":
                status, text = emulator.predict(body)
            else:
                status, text = 404, json.dumps({"error": f"Servable not found for request: {self.path}"})
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(text.encode())

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def test_client_over_http(exported, loaded, tmp_path, capsys):
    client = load_client()
    direct = as_numpy(loaded.signatures["serving_default"](image_bytes=tf.constant(exported.encoded)))
    files = []
    for i, data in enumerate(exported.encoded[:2]):
        files.append(str(tmp_path / f"image{i}.bin"))
        Path(files[-1]).write_bytes(data)
    with rest_server(TFServingRestEmulator(loaded), "gflv2_nano") as port:
        for form in ("instances", "inputs"):
            results = client.predict_rest(exported.encoded, "gflv2_nano", port=port, form=form)
            assert [r["labels"] for r in results] == [
                direct["detection_classes"][i, :n].tolist() for i, n in enumerate(direct["num_detections"])
            ]
        with pytest.raises(client.ServingError, match="HTTP 400"):
            client.predict_rest([b"not an image"], "gflv2_nano", port=port)
        with pytest.raises(client.ServingError, match="HTTP 404"):
            client.predict_rest(exported.encoded[:1], "other_model", port=port)
        capsys.readouterr()
        assert client.main([*files, "--model", "gflv2_nano", "--port", str(port), "--min-score", "0"]) == 0
        printed = capsys.readouterr().out
        assert f"{files[0]}: {direct['num_detections'][0]} detections" in printed
        assert CLASS_NAMES[direct["detection_classes"][0, 0]] in printed
        bad = tmp_path / "bad.jpg"
        bad.write_bytes(b"\xff\xd8 truncated")
        assert client.main([str(bad), "--model", "gflv2_nano", "--port", str(port)]) == 1
        assert "error: HTTP 400" in capsys.readouterr().err


def test_client_needs_only_the_standard_library():
    import ast

    tree = ast.parse((REPO / "scripts" / "serving_client.py").read_text())
    top_level = {
        alias.name.split(".")[0]
        for node in tree.body
        if isinstance(node, (ast.Import, ast.ImportFrom))
        for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module)])
    }
    assert top_level <= set(sys.stdlib_module_names), top_level - set(sys.stdlib_module_names)
    if importlib.util.find_spec("tensorflow_serving") is None:  # gRPC says what to install
        with pytest.raises(ImportError, match="pip install tensorflow-serving-api"):
            load_client().predict_grpc([b""], "gflv2_nano")


def test_bad_image_is_an_invalid_argument_and_the_model_keeps_serving(exported, loaded):
    client = load_client()
    emulator = TFServingRestEmulator(loaded)
    serve = loaded.signatures["serving_default"]
    good = as_numpy(serve(image_bytes=tf.constant(exported.encoded[:1])))
    png = exported.encoded[0]
    for bad in (b"definitely not an image", png[: len(png) // 2], b""):
        with pytest.raises(tf.errors.InvalidArgumentError):
            serve(image_bytes=tf.constant([png, bad]))
        again = as_numpy(serve(image_bytes=tf.constant(exported.encoded[:1])))
        for key in good:
            np.testing.assert_array_equal(again[key], good[key])

    status, text = emulator.predict(json.dumps(client.build_rest_request([b"GIF89a garbage"])))
    assert status == 400
    with pytest.raises(client.ServingError):
        client.parse_rest_response(text)
    status, text = emulator.predict(json.dumps(client.build_rest_request(exported.encoded[:1])))
    assert status == 200
    count = good["num_detections"][0]
    assert client.parse_rest_response(text)[0]["labels"] == good["detection_classes"][0, :count].tolist()

    with pytest.raises(tf.errors.InvalidArgumentError, match="height and width must be positive"):
        loaded.signatures["image_tensor"](image_tensor=tf.zeros([1, 0, 5, 3], tf.uint8))


def test_no_custom_op_in_the_graph(exported):
    types = graph_op_types(exported.path)
    # the helper really reads the function library (where the network lives)
    assert {"DecodeImage", "CombinedNonMaxSuppression", "Conv2D"} <= types
    assert_no_custom_op(exported.path)


def test_custom_op_helper_finds_a_custom_op(tmp_path):
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    function = proto.meta_graphs.add().graph_def.library.function.add()
    function.node_def.add(name="dcn", op="GflDeformConv2d")
    (tmp_path / "saved_model.pb").write_bytes(proto.SerializeToString())
    with pytest.raises(AssertionError, match="GflDeformConv2d"):
        assert_no_custom_op(tmp_path)


def test_tfsm_layer_on_the_tf_serving_export(exported, loaded):
    layer = keras.layers.TFSMLayer(str(exported.path), call_endpoint="serving_default")
    out = as_numpy(layer(tf.constant(exported.encoded)))
    direct = as_numpy(loaded.signatures["serving_default"](image_bytes=tf.constant(exported.encoded)))
    assert set(out) == set(EXPECTED_OUTPUTS)
    for key in out:
        np.testing.assert_array_equal(out[key], direct[key])


class ProbeDetector(keras.Model):
    """A stand-in detector whose whole network is one layer: export plumbing in about a second."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer
        self.test_config = {"max_detections": K}
        self.class_names = None

    def call(self, images):
        return self.layer(images)

    def detect_batch(self, images, bounding_box_format=None):
        assert bounding_box_format == "xyxy"  # the export's own layout, whatever the detector's
        features = self(tf.cast(images, tf.float32) / 255.0)
        batch = tf.shape(images)[0]
        score = tf.reduce_mean(features, axis=[1, 2, 3])
        return {
            "boxes": tf.zeros([batch, K, 4]),
            "confidence": tf.tile(score[:, None], [1, K]),
            "labels": tf.zeros([batch, K], tf.int32),
            "num_detections": tf.fill([batch], K),
        }


def probe_detector(layer):
    probe = ProbeDetector(layer)
    probe(tf.zeros([1, 8, 8, 3]))
    return probe


def test_keras_archive_for_tfsm_layer(tmp_path):
    keras.utils.set_random_seed(3)
    probe = probe_detector(keras.layers.Conv2D(4, 3, padding="same"))
    path = export_keras_archive(probe, tmp_path / "archive")
    assert set(tf.saved_model.load(str(path)).signatures) == {"serve", "serving_default", "image_tensor"}
    assert stored_values(path) == weight_count(probe)
    images = np.stack([pattern(20, 27, 8), pattern(20, 27, 9)])
    expected = probe.detect_batch(tf.constant(images), "xyxy")["confidence"]
    layer = keras.layers.TFSMLayer(str(path))  # default endpoint "serve": uint8 [N, H, W, 3]
    np.testing.assert_allclose(layer(tf.constant(images))["detection_scores"], expected, rtol=1e-6, atol=1e-7)
    layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")  # encoded images
    served = layer(tf.constant([encode(image, "PNG") for image in images]))
    np.testing.assert_allclose(served["detection_scores"], expected, rtol=1e-6, atol=1e-7)
    with pytest.raises(FileExistsError):
        export_keras_archive(probe, path)


# ------------------------------------------------------------------ publishing (no tracing)
class FakeArchive:
    """Writes a minimal SavedModel proto (optionally holding ``op``), then optionally fails."""

    def __init__(self, fail=False, op="Identity"):
        self.fail, self.op = fail, op

    def write_out(self, path, verbose=True):
        from tensorflow.core.protobuf import saved_model_pb2

        proto = saved_model_pb2.SavedModel()
        proto.meta_graphs.add().graph_def.node.add(name="n", op=self.op)
        (Path(path) / "variables").mkdir()
        (Path(path) / "saved_model.pb").write_bytes(proto.SerializeToString())
        if self.fail:
            raise OSError("disk full")


def use_archive(monkeypatch, archive):
    monkeypatch.setattr(export_module, "_build_export_archive", lambda detector, keras_endpoint=False: archive)


def test_versions_are_published_atomically(monkeypatch, tmp_path):
    base = tmp_path / "model"
    use_archive(monkeypatch, FakeArchive())
    assert export_saved_model(None, base, version=1) == base / "1"
    (base / "1" / "marker").write_text("old")
    with pytest.raises(FileExistsError, match="overwrite"):
        export_saved_model(None, base, version=1)
    assert (base / "1" / "marker").exists()

    use_archive(monkeypatch, FakeArchive(fail=True))
    with pytest.raises(OSError, match="disk full"):
        export_saved_model(None, base, version=1, overwrite=True)
    assert (base / "1" / "marker").exists()  # the old version survives a failed overwrite
    with pytest.raises(OSError, match="disk full"):
        export_saved_model(None, base, version=2)
    assert sorted(os.listdir(base)) == ["1"]  # no half model, no staging folder

    use_archive(monkeypatch, FakeArchive(op="GflDeformConv2d"))
    with pytest.raises(RuntimeError, match="GflDeformConv2d"):
        export_saved_model(None, base, version=2)
    assert sorted(os.listdir(base)) == ["1"]

    use_archive(monkeypatch, FakeArchive())
    export_saved_model(None, base, version=1, overwrite=True)
    assert sorted(os.listdir(base)) == ["1"]
    assert not (base / "1" / "marker").exists()
    for bad in (-1, "2", True, 1.0):
        with pytest.raises(ValueError, match="version"):
            export_saved_model(None, base, version=bad)


# ---------------------------------------------------------------------------------- DCN
HAS_DEFORM = importlib.util.find_spec("gflv2_keras.layers.deform_conv2d") is not None
DCN_PRESET = "gflv2_r101_dcn_fpn_ms2x_coco"


def dcn_detector(reduced):
    from gflv2_keras.layers.deform_conv2d import DeformConv2D
    from gflv2_keras.presets import preset_info

    overrides = {"test_config": {"score_threshold": 0.0}}
    if reduced:  # the preset's DCN layout (DCNv1 in c3-c5) in a narrow ResNet-50 (DCN needs bottlenecks)
        nano = preset_info(PRESET)["config"]
        backbone = {**preset_info(DCN_PRESET)["config"]["backbone"], "depth": 50, "base_channels": 8}
        overrides.update(backbone=backbone, fpn_channels=nano["fpn_channels"], head=nano["head"],
                         input_scale=nano["input_scale"])  # fmt: skip
    keras.utils.set_random_seed(1)
    detector = GFLV2Detector.from_preset(DCN_PRESET, load_weights=False, **overrides)
    detector.build_for_inference()
    layers = [layer for layer in detector._flatten_layers() if isinstance(layer, DeformConv2D)]
    assert layers
    rng = np.random.default_rng(0)
    for layer in layers:  # non-zero offsets, so sampling positions really move
        layer.offset_kernel.assign(rng.normal(0, 0.05, layer.offset_kernel.shape).astype("float32"))
    return detector, layers


def _prefer_custom_op(model, layers):
    """Makes the layers use the custom op where it is loadable; True if they now do."""
    from gflv2_keras.ops.deform_conv.loader import load_deform_conv_op

    if load_deform_conv_op(build_if_missing=False) is None:
        return False
    for layer in layers:
        layer.implementation = "custom_op"
    graph = tf.function(layers[0]).get_concrete_function(tf.TensorSpec([1, 16, 16, layers[0].kernel.shape[2]])).graph
    assert any(op.type.startswith(CUSTOM_OP_PREFIX) for op in graph.get_operations())
    return True


@pytest.mark.skipif(not HAS_DEFORM, reason="gflv2_keras.layers.deform_conv2d is not in this build")
def test_deformable_convs_are_exported_with_the_portable_path(tmp_path):
    from gflv2_keras.layers.deform_conv2d import force_portable

    from gflv2_keras.layers.deform_conv2d import DeformConv2D

    keras.utils.set_random_seed(2)
    probe = probe_detector(DeformConv2D(4, 3, padding=1))
    probe.layer.offset_kernel.assign(np.random.default_rng(0).normal(0, 0.5, probe.layer.offset_kernel.shape))
    custom = _prefer_custom_op(probe, [probe.layer])  # without force_portable the graph would hold the op
    path = export_saved_model(probe, tmp_path / "probe")
    assert_no_custom_op(path)
    assert "GatherV2" in graph_op_types(path) or "GatherNd" in graph_op_types(path)  # the portable sampler
    image = pattern(20, 27, 7)
    served = tf.saved_model.load(str(path)).signatures["image_tensor"](image_tensor=tf.constant(image[None]))
    with force_portable():
        expected = probe.detect_batch(tf.constant(image[None]), "xyxy")["confidence"]
    np.testing.assert_allclose(served["detection_scores"], expected, rtol=1e-5, atol=1e-6)
    print(f"\nthe layer used the custom op outside export: {custom}")


@pytest.mark.slow
@pytest.mark.skipif(not HAS_DEFORM, reason="gflv2_keras.layers.deform_conv2d is not in this build")
def test_reduced_dcn_preset_export_matches_detect(tmp_path):
    from gflv2_keras.layers.deform_conv2d import force_portable

    detector, layers = dcn_detector(reduced=True)
    _prefer_custom_op(detector, layers)
    path = export_saved_model(detector, tmp_path / "dcn")
    assert_no_custom_op(path)
    image = pattern(57, 75, 5)
    served = as_numpy(tf.saved_model.load(str(path)).signatures["image_tensor"](image_tensor=tf.constant(image[None])))
    with force_portable():
        reference = detector.detect(image)
    assert_matches_detect(served, 0, reference, class_names=detector.class_names)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_DEFORM, reason="gflv2_keras.layers.deform_conv2d is not in this build")
def test_full_size_dcn_preset_export(tmp_path):
    detector, layers = dcn_detector(reduced=False)
    _prefer_custom_op(detector, layers)
    start = time.perf_counter()
    path = export_saved_model(detector, tmp_path / "dcn")
    print(f"\n{DCN_PRESET} export: {time.perf_counter() - start:.0f} s, "
          f"{export_module.directory_size(path) / 2**20:.0f} MiB")  # fmt: skip
    assert_no_custom_op(path)
    served = tf.saved_model.load(str(path)).signatures["serving_default"](
        image_bytes=tf.constant([encode(pattern(120, 160, 6), "JPEG")])
    )
    assert served["detection_boxes"].shape == (1, K, 4)
