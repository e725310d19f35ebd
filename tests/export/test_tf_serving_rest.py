"""TF Serving REST: requests decoded as TF Serving's ``json_tensor.cc`` would, the stdlib client over
HTTP, and a bad image answered with InvalidArgument while the model keeps serving."""

import base64
import contextlib
import importlib.util
import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf


from serving_support import (
    CLASS_NAMES,
    EXPECTED_OUTPUTS,
    REPO,
    TFServingRestEmulator,
    as_numpy,
    load_client,
)


def test_rest_emulator_float_format_matches_tf_serving():
    decimal = TFServingRestEmulator._decimal
    assert decimal(0.2) == "0.2"  # %g round-trips in float32: no noise digits
    assert decimal(3.0) == "3.0"
    assert decimal(-1.0) == "-1.0"
    assert decimal(9e6) == "9e+06"
    assert decimal(np.float32(123.456787)) == "123.456787"  # needs %.9g
    assert np.float32(float(decimal(np.float32(1 / 3)))) == np.float32(1 / 3)


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
