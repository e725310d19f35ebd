"""ONNX, LiteRT (TFLite) and OpenVINO exports of the fixed-size graph of ``export.graph``.

Each export is a folder: the model file, ``export.json`` (what a runner needs: format, input
size, batch, box layout, classes, thresholds, whether NMS is inside) and, where NMS is not
inside, ``postprocess.py`` (``export/numpy_postprocess.py``, NumPy only).

=========  ===================  ==========  ==================================================
format     file                 NMS inside  why
=========  ===================  ==========  ==================================================
onnx       model.onnx           yes         tf2onnx maps CombinedNonMaxSuppression to ONNX
                                            ``NonMaxSuppression`` (opset 17)
openvino   model.xml/model.bin  yes         converted from that ONNX graph (OpenVINO's TF
                                            frontend has no CombinedNonMaxSuppression)
litert     model.tflite         no          CombinedNonMaxSuppression is no TFLite builtin
                                            (only as a Flex op, which drags in the TF runtime);
                                            the graph ends at decoded candidates and
                                            ``postprocess.py`` runs the NMS in NumPy
=========  ===================  ==========  ==================================================

Every format takes uint8 RGB ``[batch, H, W, 3]`` of the fixed ``H x W`` (default: the
preset's ``input_scale`` as a landscape image) and traces ``models.detection_graph`` (the graph
of ``detector.detect``, frozen BatchNorms folded): ``detect_batch`` where NMS is inside,
``pre_nms_candidates`` for LiteRT. Deformable convolutions are traced with the portable
implementation; no custom op is in any artifact. Boxes are in the export's
``bounding_box_format`` (``--box-layout``, a name of ``ops.box_formats``; ``export.json``
records it as ``"bounding_box_format"``).
"""

import json
import shutil
from pathlib import Path

import tensorflow as tf

from gflv2_keras.export.graph import default_input_size, inference_function
from gflv2_keras.ops.box_formats import validate_bounding_box_format
from gflv2_keras.utils.cli import UserError
from gflv2_keras.utils.files import publish_directory, refuse_existing

FORMATS = ("saved_model", "onnx", "litert", "openvino")
METADATA_FILE = "export.json"
MODEL_FILES = {"onnx": "model.onnx", "litert": "model.tflite", "openvino": "model.xml"}
ONNX_OPSET = 17
WEIGHT_TYPES = {"onnx": ("fp32", "int8"), "litert": ("fp32", "fp16", "int8"), "openvino": ("fp32",)}


class MissingRuntimeError(UserError):
    """A converter or runtime of an optional extra is not installed; the message names the extra.

    A ``UserError``: every command (export, ``predict --model``, benchmark) reports it in one line."""


def require(module, fmt):
    """Import ``module`` or raise ``MissingRuntimeError`` naming the pip extra to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingRuntimeError(
            f"{fmt} needs the {module.split('.')[0]!r} package ({error}); install it with "
            f"pip install 'gflv2-keras[{fmt}]'"
        ) from None


def export_portable(detector, fmt, output, input_size=None, batch_size=1, box_layout="xyxy", weights="fp32",
                    overwrite=False, preset=None):  # fmt: skip
    """Write ``fmt`` (``onnx`` | ``litert`` | ``openvino``) of ``detector`` to the folder ``output``.

    Args:
        input_size: ``(H, W)``; default ``default_input_size(detector)``.
        batch_size: fixed batch of the input.
        box_layout: format of the returned boxes, a name of ``ops.box_formats`` (``"xyxy"``
            pixels by default; ``"rel_yxyx"`` is the TF Object Detection API's normalised
            layout; see ``export.graph``).
        weights: ``fp32``, or ``int8`` (ONNX, LiteRT: dynamic-range quantised weights),
            or ``fp16`` (LiteRT: float16 weights).

    Returns:
        ``Path`` of the folder.
    """
    if fmt not in MODEL_FILES:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    if weights not in WEIGHT_TYPES[fmt]:
        raise ValueError(f"{fmt} supports weights {', '.join(WEIGHT_TYPES[fmt])}, not {weights!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be a positive integer, got {batch_size!r}")
    box_format = validate_bounding_box_format(box_layout)
    target = Path(output)
    refuse_existing(target, overwrite, "export")
    for module in {"onnx": ["tf2onnx", "onnx"], "litert": [], "openvino": ["tf2onnx", "onnx", "openvino"]}[fmt]:
        require(module, fmt)
    if not detector.built or not detector.weights:
        detector.build_for_inference()
    size = tuple(int(v) for v in (input_size or default_input_size(detector)))
    nms_inside = fmt != "litert"
    function = inference_function(detector, size, batch_size, with_nms=nms_inside, box_layout=box_format)
    metadata = {
        "format": fmt,
        "model_file": MODEL_FILES[fmt],
        "input_name": "images",
        "input_size": list(size),
        "batch_size": batch_size,
        "bounding_box_format": box_format,
        "weights": weights,
        "nms_inside": nms_inside,
        "num_classes": detector.num_classes,
        "class_names": detector.class_names,
        "test_config": {k: detector.test_config[k] for k in ("score_threshold", "iou_threshold", "max_detections")},
        "preset": preset,
    }

    def write(staging):
        WRITERS[fmt](function, staging, weights, detector)
        if not nms_inside:
            shutil.copyfile(Path(__file__).with_name("numpy_postprocess.py"), staging / "postprocess.py")
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=1))

    publish_directory(target, write, overwrite=overwrite, what="export")
    return target


def _onnx_proto(function):
    from gflv2_keras.layers.deform_conv2d import force_portable

    tf2onnx = require("tf2onnx", "onnx")
    with force_portable():
        proto, _ = tf2onnx.convert.from_function(function, input_signature=function.input_signature,
                                                 opset=ONNX_OPSET)  # fmt: skip
    return proto


def _write_onnx(function, folder, weights, detector):
    onnx = require("onnx", "onnx")
    path = folder / MODEL_FILES["onnx"]
    proto = _onnx_proto(function)
    if weights == "fp32":
        onnx.save(proto, str(path))
        return
    quantization = require("onnxruntime.quantization", "onnx")
    float_path = folder / "model_fp32.onnx"
    onnx.save(proto, str(float_path))
    quantization.quantize_dynamic(str(float_path), str(path), weight_type=quantization.QuantType.QInt8)
    float_path.unlink()


def _write_litert(function, folder, weights, detector):
    import tempfile

    from gflv2_keras.export.archive import write_saved_model

    # Through a SavedModel: the converter then freezes the variables into constants and the
    # flatbuffer gets a "serving_default" signature with named inputs and outputs.
    with tempfile.TemporaryDirectory(dir=folder) as saved:
        write_saved_model({"serving_default": (function.python_function, function.input_signature)}, saved)
        converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=["serving_default"])
        if weights in ("fp16", "int8"):
            converter.optimizations = [tf.lite.Optimize.DEFAULT]  # int8: dynamic-range weights
        if weights == "fp16":
            converter.target_spec.supported_types = [tf.float16]
        (folder / MODEL_FILES["litert"]).write_bytes(converter.convert())


def _write_openvino(function, folder, weights, detector):
    ov = require("openvino", "openvino")
    onnx_path = folder / "intermediate.onnx"
    require("onnx", "openvino").save(_onnx_proto(function), str(onnx_path))
    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(folder / MODEL_FILES["openvino"]), compress_to_fp16=False)
    onnx_path.unlink()


WRITERS = {"onnx": _write_onnx, "litert": _write_litert, "openvino": _write_openvino}
