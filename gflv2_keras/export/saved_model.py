"""Export a ``GFLV2Detector`` as a SavedModel that TF Serving (and ``TFSMLayer``) can serve.

The whole inference path is inside the graph: image decoding, then the graph of
``detector.detect`` (``models.detection_graph.detect_batch``: the official test-time
preprocessing, the network with its frozen BatchNorms folded, integral box decoding and
per-class NMS). The SavedModel needs neither this package nor any custom op to load
(``export.archive``: deformable convolutions are traced with the portable keras-ops
implementation, a graph with a ``GflDeform*`` op is refused, each weight is stored once).

Signatures
----------
``serving_default``
    input ``image_bytes``: ``tf.string [N]``, encoded JPEG / PNG / BMP / GIF (GIF: first
    frame); images may differ in size. Each is decoded to RGB (``tf.io.decode_image``), turned
    to its displayed frame by a JPEG's EXIF orientation (``export.exif``: read in the graph, as
    the library's reader does; boxes are pixels of that frame) and run on its own (``tf.map_fn``).
``image_tensor``
    input ``image_tensor``: ``tf.uint8 [N, H, W, 3]`` RGB, one size per batch (as
    ``detector.predict``).
``tf_example``
    input ``inputs``: ``tf.string [N]``, serialized ``tf.train.Example`` protos whose feature
    ``image/encoded`` holds an encoded image (decoded as for ``serving_default``; other
    features are ignored). Signature and input names follow TF Model Garden's detection
    export (``official/vision/serving/export_base.py``, ``input_type="tf_example"``, input
    named after its ``inputs`` argument), so clients written for it can call this model.

All return, with ``K = detector.test_config["max_detections"]`` (100 by default):

=========================  =======  =========  =========================================
output                     dtype    shape      meaning
=========================  =======  =========  =========================================
``detection_boxes``        float32  [N, K, 4]  ``(x1, y1, x2, y2)``, original image pixels
``detection_scores``       float32  [N, K]     GFLv2 joint score, descending
``detection_classes``      int32    [N, K]     0-based class index
``num_detections``         int32    [N]        valid rows of each image
``detection_class_names``  string   [N, K]     only if ``detector.class_names`` is set
=========================  =======  =========  =========================================

Rows past ``num_detections`` are padding: -1 in boxes, scores and classes, ``""`` in names.

**Box distributions (opt-in).** Exported with ``box_distributions=True`` (CLI
``gflv2 export --box-distributions``), every signature also returns what the head knew about
each kept box (``GFLV2Detector.detect_batch(..., return_box_distributions=True)``; sides
ordered left, top, right, bottom; pixels of the image as sent; ``R = reg_max``;
``docs/box_uncertainty.md``):

==================================  =======  ==============  ======================================
output                              dtype    shape           meaning
==================================  =======  ==============  ======================================
``detection_classification``        float32  [N, K]          class probability ``sigmoid(cls)``
``detection_quality``               float32  [N, K]          DGQP quality (GFLv2 only);
                                                             score = classification x quality
``detection_side_offsets``          float32  [N, K, 4]       expected anchor-to-side distance
``detection_side_std``              float32  [N, K, 4]       its standard deviation
``detection_side_topk_mass``        float32  [N, K, 4]       mass of the top-``reg_topk`` bins
``detection_side_distributions``    float32  [N, K, 4, R+1]  bin probabilities
``detection_bin_widths``            float32  [N, K, 4]       one bin in pixels
``detection_anchor_points``         float32  [N, K, 2]       ``(x, y)`` of the anchor point
==================================  =======  ==============  ======================================

**Box order.** Boxes are ``xyxy = (x1, y1, x2, y2)`` in absolute pixels of the image as it
was sent (for encoded images: its displayed frame, EXIF orientation of a JPEG applied), the same
as ``detector.predict`` / ``detect``. This differs from the TF Object
Detection API, whose ``detection_boxes`` are normalised ``(ymin, xmin, ymax, xmax)``; convert
with ``boxes[..., [1, 0, 3, 2]] / [h, w, h, w]`` if a client expects that.

**Compatibility.** Serve with a TF Serving release at least as new as the TensorFlow that
wrote the SavedModel (ops are forward- but not backward-compatible).

**Metadata.** ``assets.extra/export.json`` (TF Serving ignores ``assets.extra`` except for its
warm-up file) records what ``gflv2 predict --model`` needs to run the version folder like
``--preset``: ``format`` (``saved_model``), ``class_names``, ``num_classes``, ``input_scale``,
``test_config``. The folder a write error leaves is none: a refused write (full disk) is one
``OSError`` naming the version (``export.archive.reported_write_errors``).

**Errors.** An image that cannot be decoded (corrupt, truncated, empty, unknown format) fails
the whole request with ``INVALID_ARGUMENT`` (REST: HTTP 400 ``{"error": ...}``; in Python
``tf.errors.InvalidArgumentError``); the loaded model keeps serving later requests.

Usage::

    from gflv2_keras import GFLV2Detector
    from gflv2_keras.export import export_saved_model

    detector = GFLV2Detector.from_preset("gflv2_r50_fpn_1x_coco")
    path = export_saved_model(detector, "models/gflv2", version=1)   # models/gflv2/1

    # Anywhere with TensorFlow (this package not needed):
    loaded = tf.saved_model.load(str(path))
    out = loaded.signatures["serving_default"](image_bytes=tf.constant([jpeg_bytes]))
    layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")
    out = layer(tf.constant([jpeg_bytes]))          # same dict of outputs
"""

import json
from pathlib import Path

import tensorflow as tf

from gflv2_keras.export.archive import graph_op_types, reported_write_errors, write_saved_model
from gflv2_keras.export.exif import decode_displayed
from gflv2_keras.models import detection_graph
from gflv2_keras.utils.files import publish_directory, refuse_existing

BYTES_SIGNATURE = "serving_default"
TENSOR_SIGNATURE = "image_tensor"
EXAMPLE_SIGNATURE = "tf_example"
KERAS_ENDPOINT = "serve"  # TFSMLayer's default call_endpoint
BYTES_INPUT = "image_bytes"
TENSOR_INPUT = "image_tensor"
EXAMPLE_INPUT = "inputs"  # Model Garden's name for the tf_example input
EXAMPLE_IMAGE_FEATURE = "image/encoded"
METADATA_PATH = ("assets.extra", "export.json")  # inside the version folder


def _distribution_shapes(detector):
    """Per-image shapes of the optional box-distribution outputs, by ``detect_batch`` key."""
    k, bins = int(detector.test_config["max_detections"]), detector.reg_max + 1
    shapes = {
        "classification": [k],
        "side_offsets": [k, 4],
        "side_std": [k, 4],
        "side_topk_mass": [k, 4],
        "side_distributions": [k, 4, bins],
        "bin_widths": [k, 4],
        "anchor_points": [k, 2],
    }
    if detector.head.use_dgqp:
        shapes["quality"] = [k]
    return shapes


def _distribution_options(box_distributions):
    """Keyword arguments asking for the box distributions; none by default, so the default export
    calls ``detect_batch`` (and ``serving_endpoints``) exactly as before the option existed."""
    return {"return_box_distributions": True} if box_distributions else {}


def _serving_outputs(detections, max_detections, class_names, extra_shapes=None):
    """Detector output dict → the documented signature outputs (fixed static shapes).

    ``extra_shapes``: per-image shapes of the box-distribution keys to add as
    ``detection_<key>`` (``_distribution_shapes``), or ``None``.
    """
    k = max_detections
    classes = tf.ensure_shape(tf.cast(detections["labels"], tf.int32), [None, k])
    outputs = {
        "detection_boxes": tf.ensure_shape(tf.cast(detections["boxes"], tf.float32), [None, k, 4]),
        "detection_scores": tf.ensure_shape(tf.cast(detections["confidence"], tf.float32), [None, k]),
        "detection_classes": classes,
        "num_detections": tf.ensure_shape(tf.cast(detections["num_detections"], tf.int32), [None]),
    }
    if class_names:
        names = tf.constant([str(name) for name in class_names] + [""])
        outputs["detection_class_names"] = tf.gather(names, tf.where(classes < 0, len(class_names), classes))
    for key, shape in (extra_shapes or {}).items():
        outputs[f"detection_{key}"] = tf.ensure_shape(tf.cast(detections[key], tf.float32), [None] + shape)
    return outputs


def _serving_functions(detector, box_distributions=False):
    """Endpoint bodies by name; their argument names become the signature input names.

    All call one shared ``tf.function`` around ``models.detection_graph.detect_batch`` (asked
    for xyxy boxes whatever the detector's ``bounding_box_format``: the signatures have their
    own layout), so the network is traced once per tracing context instead of once per endpoint.
    ``box_distributions`` adds the outputs of ``_distribution_shapes``.
    """
    k = int(detector.test_config["max_detections"])
    names = detector.class_names
    extra = _distribution_shapes(detector) if box_distributions else {}
    options = _distribution_options(box_distributions)
    detect_batch = tf.function(
        lambda images: detection_graph.detect_batch(detector, images, bounding_box_format="xyxy", **options),
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)],
        autograph=False,
    )
    per_image_spec = {
        "boxes": tf.TensorSpec([k, 4], tf.float32),
        "confidence": tf.TensorSpec([k], tf.float32),
        "labels": tf.TensorSpec([k], tf.int32),
        "num_detections": tf.TensorSpec([], tf.int32),
        **{key: tf.TensorSpec(shape, tf.float32) for key, shape in extra.items()},
    }

    def detect_one(encoded):
        image = decode_displayed(encoded)
        detections = detect_batch(image[None])
        return {key: detections[key][0] for key in per_image_spec}

    def image_bytes(image_bytes):
        # One image per iteration: each runs the full network at up to the preset's input
        # scale, so bounding peak memory matters more than overlapping iterations.
        detections = tf.map_fn(detect_one, image_bytes, fn_output_signature=per_image_spec, parallel_iterations=1)
        return _serving_outputs(detections, k, names, extra)

    def image_tensor(image_tensor):
        size = tf.shape(image_tensor)[1:3]
        check = tf.debugging.assert_positive(size, message="image_tensor: height and width must be positive")
        with tf.control_dependencies([check]):
            image_tensor = tf.identity(image_tensor)
        return _serving_outputs(detect_batch(image_tensor), k, names, extra)

    def tf_example(inputs):
        features = {EXAMPLE_IMAGE_FEATURE: tf.io.FixedLenFeature([], tf.string)}
        return image_bytes(tf.io.parse_example(inputs, features)[EXAMPLE_IMAGE_FEATURE])

    return {"bytes": image_bytes, "tensor": image_tensor, "example": tf_example}


def serving_endpoints(detector, keras_endpoint=False, return_box_distributions=False):
    """The endpoints of the module docstring, ``{name: (fn, input_signature)}`` (untraced).

    ``export.archive.write_saved_model`` traces and writes them.

    Args:
        detector: a ``GFLV2Detector`` (built here if needed; its current weights are exported).
        keras_endpoint: also add ``"serve"`` (uint8 images, like ``image_tensor``), the
            endpoint ``keras.layers.TFSMLayer`` calls by default.
        return_box_distributions: add the box-distribution outputs (module docstring).
    """
    if not detector.built or not detector.weights:
        detector.build_for_inference()
    bodies = _serving_functions(detector, return_box_distributions)
    tensor_spec = [tf.TensorSpec([None, None, None, 3], tf.uint8, name=TENSOR_INPUT)]
    endpoints = {
        BYTES_SIGNATURE: (bodies["bytes"], [tf.TensorSpec([None], tf.string, name=BYTES_INPUT)]),
        TENSOR_SIGNATURE: (bodies["tensor"], tensor_spec),
        EXAMPLE_SIGNATURE: (bodies["example"], [tf.TensorSpec([None], tf.string, name=EXAMPLE_INPUT)]),
    }
    if keras_endpoint:
        endpoints[KERAS_ENDPOINT] = (bodies["tensor"], tensor_spec)
    return endpoints


def export_saved_model(detector, output_dir, version=1, overwrite=False, warmup=True, box_distributions=False):
    """Write a TF Serving model version: ``output_dir/<version>/saved_model.pb`` + ``variables/``.

    ``output_dir`` is the model's base path (``/models/<name>`` inside the TF Serving
    container). The version is written to a hidden temporary folder next to it and renamed
    into place only when complete, so TF Serving (which polls for numeric folder names) never
    sees a partial model, and a crash leaves no ``<version>`` folder.

    Args:
        detector: the ``GFLV2Detector`` to export.
        output_dir: model base folder (created if missing).
        version: non-negative integer version number.
        overwrite: replace an existing ``<version>`` folder (otherwise ``FileExistsError``).
        warmup: also write ``assets.extra/tf_serving_warmup_requests`` (one request per
            signature, ``gflv2_keras.export.warmup``) so TF Serving runs each signature once
            at load time and the first client request is not the slow one.
        box_distributions: add the box-distribution outputs (module docstring); off by default.

    Returns:
        ``Path`` of the version folder.
    """
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise ValueError(f"version must be a non-negative integer, got {version!r}")
    target = Path(output_dir) / str(version)
    refuse_existing(target, overwrite, "model version")
    warmup_writer = _warmup_writer(Path(output_dir).resolve().name) if warmup else None
    endpoints = serving_endpoints(detector, **_distribution_options(box_distributions))
    metadata = serving_metadata(detector)

    def finish(directory):
        if warmup_writer is not None:
            warmup_writer(directory)
        write_metadata(directory, metadata)

    return _write_atomically(endpoints, target, overwrite, finish=finish)


def serving_metadata(detector):
    """The ``assets.extra/export.json`` of a version folder (module docstring, Metadata).

    Records what ``detector`` has of ``input_scale``, ``num_classes``, ``class_names`` and the
    thresholds of ``test_config`` (a stand-in model in tests may lack some).
    """
    metadata = {"format": "saved_model", "canvas": "per_image", "bounding_box_format": "xyxy",
                "signature": TENSOR_SIGNATURE}  # fmt: skip
    scale = getattr(detector, "input_scale", None)
    if scale is not None:
        metadata["input_scale"] = [int(v) for v in scale]
    for key in ("num_classes", "class_names"):
        if hasattr(detector, key):
            metadata[key] = getattr(detector, key)
    config = getattr(detector, "test_config", None) or {}
    metadata["test_config"] = {k: config[k] for k in ("score_threshold", "iou_threshold", "max_detections")
                               if k in config}  # fmt: skip
    return metadata


def write_metadata(directory, metadata):
    path = Path(directory).joinpath(*METADATA_PATH)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metadata, indent=1))


def signature_inputs():
    """``{signature: (input name, kind)}`` of the TF Serving signatures (kinds: see ``warmup``)."""
    return {
        BYTES_SIGNATURE: (BYTES_INPUT, "bytes"),
        TENSOR_SIGNATURE: (TENSOR_INPUT, "tensor"),
        EXAMPLE_SIGNATURE: (EXAMPLE_INPUT, "example"),
    }


def _warmup_writer(model_name):
    from gflv2_keras.export.warmup import write_warmup

    return lambda directory: write_warmup(directory, signature_inputs(), model_name=model_name)


def export_keras_archive(detector, path, overwrite=False, box_distributions=False):
    """Write an inference-only SavedModel at ``path`` for ``keras.layers.TFSMLayer`` users.

    Same graph and signatures as ``export_saved_model`` plus the ``"serve"`` endpoint
    (uint8 ``[N, H, W, 3]``, one size per batch), so both of these work::

        layer = keras.layers.TFSMLayer(path)                                   # uint8 images
        layer = keras.layers.TFSMLayer(path, call_endpoint="serving_default")  # encoded bytes

    Each returns the dict of outputs documented in this module. A TF Serving version folder
    written by ``export_saved_model`` also works with ``call_endpoint="serving_default"`` or
    ``"image_tensor"``. ``box_distributions`` adds the box-distribution outputs.

    Returns:
        ``Path`` of the written folder.
    """
    target = Path(path)
    refuse_existing(target, overwrite, "model version")
    endpoints = serving_endpoints(detector, keras_endpoint=True, **_distribution_options(box_distributions))
    return _write_atomically(endpoints, target, overwrite)


def saved_model_op_types(path):
    """Set of every op type in a SavedModel's signatures, the functions they call included.

    Loads the SavedModel (``tf.saved_model.load``); the export itself checks the graphs it
    traces before writing them (``export.archive.build_archive``).
    """
    loaded = tf.saved_model.load(str(path))
    return set().union(*(graph_op_types(function) for function in loaded.signatures.values()))


def directory_size(path):
    """Total size in bytes of the files under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _write_atomically(endpoints, target, overwrite, finish=None):
    """Write ``endpoints`` to a hidden sibling of ``target``, then rename it into place.

    ``write_saved_model`` refuses a graph with a custom op before writing anything;
    ``finish(staging_dir)``, if given, adds files (e.g. warm-up requests) before the rename.
    """
    def write(staging):
        write_saved_model(endpoints, staging)
        if finish is not None:
            finish(staging)

    with reported_write_errors(target, "model version"):
        return publish_directory(target, write, overwrite=overwrite, what="model version")
