#!/usr/bin/env python3
"""Small client for a GFLv2 detector served by TF Serving (a model written by ``gflv2 export``).

REST needs only the Python standard library; gRPC needs ``pip install tensorflow-serving-api``.

    python scripts/serving_client.py --model gflv2 a.jpg b.png                # REST, instances form
    python scripts/serving_client.py --model gflv2 --form inputs a.jpg        # REST, inputs form
    python scripts/serving_client.py --model gflv2 --grpc --port 8500 a.jpg   # gRPC

Signatures of the served model: ``serving_default`` takes ``image_bytes`` (encoded JPEG / PNG /
BMP / GIF, any sizes) and ``image_tensor`` takes ``image_tensor`` (uint8 ``[N, H, W, 3]``, one
size per request). Boxes come back as ``(x1, y1, x2, y2)`` in pixels of the original image (not
the TF Object Detection API's normalised ``ymin, xmin, ymax, xmax``).

As a library::

    body = build_rest_request([jpeg_bytes], form="instances")   # JSON-serialisable dict
    detections = parse_rest_response(reply_text)                 # one dict per image
"""

import argparse
import base64
import json
import sys
import urllib.error
import urllib.request

SIGNATURE_INPUTS = {"serving_default": "image_bytes", "image_tensor": "image_tensor"}
# served output name -> key in the parsed per-image dicts
OUTPUT_KEYS = {
    "detection_boxes": "boxes",
    "detection_scores": "confidence",
    "detection_classes": "labels",
    "detection_class_names": "class_names",
}
FORMS = ("instances", "inputs")


class ServingError(RuntimeError):
    """The server answered with an error (e.g. an undecodable image) or could not be reached."""


def build_rest_request(images, signature="serving_default", form="instances"):
    """The JSON body of ``POST /v1/models/NAME:predict``.

    Args:
        images: for ``"serving_default"``, encoded image files as ``bytes`` (sent as
            ``{"b64": ...}``); for ``"image_tensor"``, uint8 RGB images ``[H, W, 3]`` of one
            size, as nested lists or arrays with ``.tolist()``.
        signature: ``"serving_default"`` or ``"image_tensor"``.
        form: ``"instances"`` (row format: one bare value per image, allowed because each
            signature has a single input) or ``"inputs"`` (columnar: ``{input_name: [values]}``).

    Returns:
        A dict, e.g. ``{"signature_name": "serving_default", "instances": [{"b64": "..."}]}``.
    """
    if signature not in SIGNATURE_INPUTS:
        raise ValueError(f"signature must be one of {sorted(SIGNATURE_INPUTS)}, got {signature!r}")
    if form not in FORMS:
        raise ValueError(f"form must be one of {FORMS}, got {form!r}")
    values = [_request_value(image, signature, index) for index, image in enumerate(images)]
    if not values:
        raise ValueError("no images: TF Serving rejects an empty request")
    body = {"signature_name": signature}
    if form == "instances":
        body["instances"] = values
    else:
        body["inputs"] = {SIGNATURE_INPUTS[signature]: values}
    return body


def _request_value(image, signature, index):
    is_bytes = isinstance(image, (bytes, bytearray, memoryview))
    if signature == "serving_default":
        if not is_bytes:
            raise TypeError(f"image {index}: serving_default takes encoded image bytes, got {type(image).__name__}")
        return {"b64": base64.b64encode(bytes(image)).decode("ascii")}
    if is_bytes:
        raise TypeError(f"image {index}: image_tensor takes decoded uint8 pixels [H, W, 3], not encoded bytes")
    return image.tolist() if hasattr(image, "tolist") else image


def parse_rest_response(response):
    """A predict response (dict, or JSON ``str``/``bytes``) → one dict per image.

    Accepts both TF Serving reply forms: ``{"predictions": [per-image dicts]}`` (to an
    ``instances`` request) and ``{"outputs": {name: batched values}}`` (to ``inputs``).

    Returns:
        A list with, per image, ``{"boxes": [[x1, y1, x2, y2], ...] original pixels,
        "confidence": [...], "labels": [int, ...] 0-based, "class_names": [...] (only when the
        model was exported with class names)}``, padding rows removed.

    Raises:
        ServingError: the body is an ``{"error": ...}`` reply or has no detections.
    """
    if isinstance(response, (bytes, bytearray, str)):
        response = json.loads(response)
    if "error" in response:
        raise ServingError(response["error"])
    if "predictions" in response:
        rows = response["predictions"]
    elif "outputs" in response:
        rows = _columns_to_rows(response["outputs"])
    else:
        raise ServingError(f"reply has neither 'predictions' nor 'outputs': keys {sorted(response)}")
    return [_trim(row) for row in rows]


def _columns_to_rows(columns):
    count = len(columns["num_detections"])
    return [{name: values[i] for name, values in columns.items()} for i in range(count)]


def _trim(row):
    count = int(row["num_detections"])
    detections = {key: list(row[name][:count]) for name, key in OUTPUT_KEYS.items() if name in row}
    detections["labels"] = [int(c) for c in detections["labels"]]
    return detections


def predict_rest(images, model, host="localhost", port=8501, signature="serving_default", form="instances",
                 version=None, timeout=60.0):
    """POST the images to TF Serving's REST API and return ``parse_rest_response`` of the reply."""
    url = f"http://{host}:{port}/v1/models/{model}"
    if version is not None:
        url += f"/versions/{int(version)}"
    url += ":predict"
    data = json.dumps(build_rest_request(images, signature, form)).encode("utf-8")
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            body = reply.read()
    except urllib.error.HTTPError as error:
        body = error.read()
        try:
            message = json.loads(body).get("error", body)
        except ValueError:
            message = body[:300]
        raise ServingError(f"HTTP {error.code} from {url}: {message}") from error
    except urllib.error.URLError as error:
        raise ServingError(f"cannot reach {url}: {error.reason}") from error
    return parse_rest_response(body)


def predict_grpc(images, model, host="localhost", port=8500, signature="serving_default", version=None,
                 timeout=60.0):
    """The same request over gRPC (``PredictionService/Predict``); returns the same per-image dicts."""
    try:
        import grpc
        import tensorflow as tf
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    except ImportError as error:
        raise ImportError(
            f"gRPC needs the TF Serving API ({error}): pip install tensorflow-serving-api "
            "(or use the REST API, which needs nothing)"
        ) from error
    if signature not in SIGNATURE_INPUTS:
        raise ValueError(f"signature must be one of {sorted(SIGNATURE_INPUTS)}, got {signature!r}")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    if version is not None:
        request.model_spec.version.value = int(version)
    if signature == "serving_default":
        tensor = tf.make_tensor_proto([bytes(image) for image in images], dtype=tf.string)
    else:
        tensor = tf.make_tensor_proto(list(images), dtype=tf.uint8)
    request.inputs[SIGNATURE_INPUTS[signature]].CopyFrom(tensor)
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        try:
            response = stub.Predict(request, timeout=timeout)
        except grpc.RpcError as error:
            raise ServingError(f"{error.code().name}: {error.details()}") from error
    columns = {}
    for name, proto in response.outputs.items():
        values = tf.make_ndarray(proto).tolist()
        if name == "detection_class_names":
            values = [[v.decode("utf-8") for v in row] for row in values]
        columns[name] = values
    return [_trim(row) for row in _columns_to_rows(columns)]


def _read_pixels(path):
    try:
        from PIL import Image
    except ImportError as error:
        message = "--signature image_tensor decodes images locally and needs Pillow (pip install pillow)"
        raise SystemExit(message) from error
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    pixels = [list(p) for p in rgb.getdata()]
    return [pixels[y * rgb.width:(y + 1) * rgb.width] for y in range(rgb.height)]


def main(argv=None):
    parser = argparse.ArgumentParser(description="Query a GFLv2 detector served by TF Serving.")
    parser.add_argument("images", nargs="+", help="image files (JPEG, PNG, BMP, GIF)")
    parser.add_argument("--model", required=True, help="MODEL_NAME the server was started with")
    parser.add_argument("--host", default="localhost")
    parser.add_argument("--port", type=int, help="default 8501 (REST) or 8500 (gRPC)")
    parser.add_argument("--version", type=int, help="model version (default: the latest the server loaded)")
    parser.add_argument("--signature", choices=sorted(SIGNATURE_INPUTS), default="serving_default")
    parser.add_argument("--form", choices=FORMS, default="instances", help="REST request form")
    parser.add_argument("--grpc", action="store_true", help="use gRPC (needs tensorflow-serving-api)")
    parser.add_argument("--min-score", type=float, default=0.3, help="smallest score printed (default 0.3)")
    args = parser.parse_args(argv)

    if args.signature == "serving_default":
        batches = [[_read_bytes(path) for path in args.images]]
        names = [args.images]
    else:  # one size per request, so one image per request; JSON pixels are ~10x the JPEG size
        batches = [[_read_pixels(path)] for path in args.images]
        names = [[path] for path in args.images]
    try:
        for batch, paths in zip(batches, names):
            if args.grpc:
                results = predict_grpc(batch, args.model, args.host, args.port or 8500, args.signature, args.version)
            else:
                results = predict_rest(batch, args.model, args.host, args.port or 8501, args.signature, args.form,
                                       args.version)
            for path, detections in zip(paths, results):
                _print_detections(path, detections, args.min_score)
    except ServingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def _read_bytes(path):
    with open(path, "rb") as handle:
        return handle.read()


def _print_detections(path, detections, min_score):
    names = detections.get("class_names") or detections["labels"]
    kept = [i for i, score in enumerate(detections["confidence"]) if score >= min_score]
    print(f"{path}: {len(detections['confidence'])} detections, {len(kept)} with confidence >= {min_score}")
    for i in kept:
        box = ", ".join(f"{v:.1f}" for v in detections["boxes"][i])
        print(f"  {names[i]!s:>16}  {detections['confidence'][i]:.3f}  xyxy=({box})")


if __name__ == "__main__":
    sys.exit(main())
