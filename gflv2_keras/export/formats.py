"""ONNX, LiteRT (TFLite) and OpenVINO exports of the graphs of ``export.graph``.

Each export is a folder: the model file, ``export.json`` (what a runner needs: format, input
size, batch, box layout, classes, thresholds, whether NMS is inside) and, for a fixed-size
export, ``postprocess.py`` (``export/numpy_postprocess.py``, NumPy only: the keep-ratio
``letterbox`` that prepares its inputs, ``to_original`` for its boxes and, for LiteRT, the NMS).

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

``--weights``: ``fp32``; ``int8`` with ``--calibration-data`` (ONNX, OpenVINO): weights and
activations in int8, calibrated on the user's images (``export.quantize``,
``export.calibration``); ``int8-dynamic`` (ONNX, LiteRT; also ``int8`` without calibration
data): int8 weights, float activations; ``fp16`` (LiteRT).

Fixed size (every format; ``export.json`` ``"canvas": "fixed"``): inputs ``images`` uint8 RGB
``[batch, H, W, 3]`` of the fixed canvas ``H x W`` (default: the preset's ``input_scale`` as a
landscape image), each image resized keeping its aspect ratio into it and padded bottom/right
(``numpy_postprocess.letterbox``), and ``image_shape`` int32 ``[batch, 2]``, the resized size;
boxes in canvas pixels. Per-image canvas (``input_size="dynamic"``, CLI ``--dynamic-size``; ONNX
and OpenVINO, ``"canvas": "per_image"``): input ``images`` of any size, the official
preprocessing inside, boxes in original pixels, the detections of ``predict``. Both trace
``models.detection_graph`` (the graph of ``detector.detect``, frozen BatchNorms folded):
``detect_batch`` where NMS is inside, ``pre_nms_candidates`` for LiteRT. Deformable
convolutions are traced with the portable implementation; no custom op is in any artifact.
Boxes are in the export's ``bounding_box_format`` (``--box-layout``, a name of
``ops.box_formats``; ``export.json`` records it as ``"bounding_box_format"``).
"""

import json
import shutil
from pathlib import Path

import tensorflow as tf

from gflv2_keras.export.archive import reported_write_errors
from gflv2_keras.export.graph import DYNAMIC, IMAGE_SHAPE_NAME, INPUT_NAME, default_input_size, inference_function
from gflv2_keras.export.targets import FORMATS
from gflv2_keras.ops.box_formats import validate_bounding_box_format
from gflv2_keras.utils.cli import UserError
from gflv2_keras.utils.files import publish_directory, refuse_existing

METADATA_FILE = "export.json"
MODEL_FILES = {"onnx": "model.onnx", "litert": "model.tflite", "openvino": "model.xml"}
ONNX_OPSET = 17
# int8-dynamic: int8 weights, float activations ("dynamic range"). int8: with calibration images
# (``export.quantize``: ONNX, OpenVINO) weights and activations; without them (ONNX, LiteRT) the
# weights-only int8-dynamic, as this name meant before calibration existed.
WEIGHT_TYPES = {"onnx": ("fp32", "int8", "int8-dynamic"), "litert": ("fp32", "fp16", "int8", "int8-dynamic"),
                "openvino": ("fp32", "int8")}  # fmt: skip
CALIBRATED_FORMATS = ("onnx", "openvino")


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
                    overwrite=False, preset=None, calibration=None, keep_float=None):  # fmt: skip
    """Write ``fmt`` (``onnx`` | ``litert`` | ``openvino``) of ``detector`` to the folder ``output``.

    Args:
        input_size: ``(H, W)`` of the fixed canvas (default ``default_input_size(detector)``),
            or ``"dynamic"``: any image size, the official per-image canvas (ONNX, OpenVINO).
        batch_size: fixed batch of the input.
        box_layout: format of the returned boxes, a name of ``ops.box_formats`` (``"xyxy"``
            pixels by default; ``"rel_yxyx"`` is the TF Object Detection API's normalised
            layout; see ``export.graph``).
        weights: ``fp32``; ``int8`` with ``calibration`` (ONNX, OpenVINO: static int8 weights and
            activations, ``export.quantize``); ``int8-dynamic``, or ``int8`` without
            ``calibration`` (ONNX, LiteRT: dynamic-range int8 weights, float activations);
            ``fp16`` (LiteRT: float16 weights).
        calibration: ``export.calibration.CalibrationImages`` (``calibration_images(PATH)``),
            only with ``weights="int8"``.
        keep_float: with ``calibration``: names of ``export.quantize.SENSITIVE_LAYERS`` groups
            left in float32 (default ``export.quantize.KEEP_FLOAT``).

    Returns:
        ``Path`` of the folder.
    """
    if fmt not in MODEL_FILES:
        raise ValueError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
    if weights not in WEIGHT_TYPES[fmt]:
        raise ValueError(f"{fmt} supports weights {', '.join(WEIGHT_TYPES[fmt])}, not {weights!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be a positive integer, got {batch_size!r}")
    if calibration is not None and (weights != "int8" or fmt not in CALIBRATED_FORMATS):
        raise ValueError(f"calibration data is for --weights int8 of {' and '.join(CALIBRATED_FORMATS)} "
                         f"(static int8), not {fmt} {weights}")  # fmt: skip
    if weights == "int8" and calibration is None:
        if fmt == "openvino":
            raise ValueError("openvino int8 needs calibration images (--calibration-data PATH): weights and "
                             "activations are quantized from them")  # fmt: skip
        weights = "int8-dynamic"
    box_format = validate_bounding_box_format(box_layout)
    target = Path(output)
    refuse_existing(target, overwrite, "export")
    for module in {"onnx": ["tf2onnx", "onnx"], "litert": [], "openvino": ["tf2onnx", "onnx", "openvino"]}[fmt]:
        require(module, fmt)
    if not detector.built or not detector.weights:
        detector.build_for_inference()
    dynamic = isinstance(input_size, str)
    if dynamic and input_size != DYNAMIC:
        raise ValueError(f"input size must be (H, W) or {DYNAMIC!r}, got {input_size!r}")
    if dynamic and fmt == "litert":
        raise ValueError("litert needs a fixed input size (its NMS runs in NumPy on fixed-size candidates); "
                         "export it with an input size (H, W) instead of a dynamic one")  # fmt: skip
    size = DYNAMIC if dynamic else tuple(int(v) for v in (input_size or default_input_size(detector)))
    nms_inside = fmt != "litert"
    function = inference_function(detector, size, batch_size, with_nms=nms_inside, box_layout=box_format)
    metadata = {
        "format": fmt,
        "model_file": MODEL_FILES[fmt],
        "input_name": INPUT_NAME,
        "inputs": [INPUT_NAME] if dynamic else [INPUT_NAME, IMAGE_SHAPE_NAME],
        # fixed: images letterboxed into input_size (postprocess.py); per_image: the official resize inside
        "canvas": "per_image" if dynamic else "fixed",
        "input_size": None if dynamic else list(size),
        "input_scale": [int(v) for v in detector.input_scale],
        "batch_size": batch_size,
        "bounding_box_format": box_format,
        "weights": weights,
        "activations": "int8" if calibration is not None else "float32",
        "nms_inside": nms_inside,
        "num_classes": detector.num_classes,
        "class_names": detector.class_names,
        "test_config": {k: detector.test_config[k] for k in ("score_threshold", "iou_threshold", "max_detections")},
        "preset": preset,
    }

    def write(staging):
        if calibration is not None:
            from gflv2_keras.export.quantize import write_calibrated

            metadata["quantization"] = write_calibrated(fmt, function, staging, calibration, size, batch_size,
                                                        keep_float)  # fmt: skip
        else:
            WRITERS[fmt](function, staging, weights, detector)
        if not dynamic:
            shutil.copyfile(Path(__file__).with_name("numpy_postprocess.py"), staging / "postprocess.py")
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=1))

    with reported_write_errors(target, "export"):
        publish_directory(target, write, overwrite=overwrite, what="export")
    return target


def onnx_proto(function):
    from gflv2_keras.layers.deform_conv2d import force_portable

    tf2onnx = require("tf2onnx", "onnx")
    with force_portable():
        proto, _ = tf2onnx.convert.from_function(function, input_signature=function.input_signature,
                                                 opset=ONNX_OPSET)  # fmt: skip
    return proto


def _write_onnx(function, folder, weights, detector):
    onnx = require("onnx", "onnx")
    path = folder / MODEL_FILES["onnx"]
    proto = onnx_proto(function)
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
        if weights in ("fp16", "int8-dynamic"):
            converter.optimizations = [tf.lite.Optimize.DEFAULT]  # int8-dynamic: dynamic-range weights
        if weights == "fp16":
            converter.target_spec.supported_types = [tf.float16]
        (folder / MODEL_FILES["litert"]).write_bytes(converter.convert())


def _write_openvino(function, folder, weights, detector):
    ov = require("openvino", "openvino")
    onnx_path = folder / "intermediate.onnx"
    require("onnx", "openvino").save(onnx_proto(function), str(onnx_path))
    model = ov.convert_model(str(onnx_path))
    ov.save_model(model, str(folder / MODEL_FILES["openvino"]), compress_to_fp16=False)
    onnx_path.unlink()


WRITERS = {"onnx": _write_onnx, "litert": _write_litert, "openvino": _write_openvino}
