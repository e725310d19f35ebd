"""Run an exported model in its own runtime with the interface of ``detector.detect``.

``load_exported(path)`` takes an export folder (``gflv2 export --format ...``) or the model
file inside it, checks that the file is what ``export.json`` says (a file of another format
or a corrupt one is refused with a ``ValueError`` naming it) and returns an
``ExportedDetector`` whose ``detect(image)`` returns ``{"boxes": [K, 4] xyxy original pixels,
"confidence": [K], "labels": [K] int}`` like ``GFLV2Detector.detect``.

The export's box format (``export_box_format``) is ``export.json``'s ``"bounding_box_format"``
(a name of ``ops.box_formats``); an export written before those names has ``"box_layout"``
instead, whose ``"yxyx"`` meant normalised ``(ymin, xmin, ymax, xmax)``: it reads as
``rel_yxyx`` (``export.graph.LEGACY_BOX_LAYOUTS``).

Fixed-size exports: an image of another size is stretched to the export's ``H x W`` (PIL
bilinear) and the boxes are mapped back to its own pixels; such results equal
``detector.detect`` on the stretched image, not on the original (export with
``--input-size`` equal to your camera's size to avoid the stretch).
"""

import json
from pathlib import Path

import numpy as np

from gflv2_keras.export.formats import METADATA_FILE, MODEL_FILES, MissingRuntimeError, require
from gflv2_keras.export.graph import LEGACY_BOX_LAYOUTS
from gflv2_keras.export.numpy_postprocess import postprocess
from gflv2_keras.ops.box_formats import convert_boxes, validate_bounding_box_format

TFLITE_MAGIC = b"TFL3"  # bytes 4..8 of a TFLite flatbuffer


def export_folder(path):
    """Folder and metadata of an export, from the folder or a file inside it."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    meta_path = folder / METADATA_FILE
    if not path.exists():
        raise ValueError(f"{path}: not found")
    if (folder / "saved_model.pb").exists():
        return folder, {"format": "saved_model"}
    if not meta_path.is_file():
        raise ValueError(f"{path}: not a gflv2 export (no {METADATA_FILE} next to it); export with `gflv2 export`")
    try:
        metadata = json.loads(meta_path.read_text())
        fmt = metadata["format"]
    except (ValueError, KeyError) as error:
        raise ValueError(f"{meta_path}: unreadable export metadata ({error})") from None
    if path.is_file() and path.name not in (MODEL_FILES.get(fmt), "model.bin"):
        raise ValueError(f"{path}: not the {fmt} model of this export ({folder / MODEL_FILES[fmt]})")
    return folder, metadata


def export_box_format(metadata):
    """The ``ops.box_formats`` name of an export's boxes, from its ``export.json`` metadata."""
    if "bounding_box_format" in metadata:
        return validate_bounding_box_format(metadata["bounding_box_format"])
    layout = metadata.get("box_layout", "xyxy")
    if layout not in LEGACY_BOX_LAYOUTS:
        raise ValueError(f"unknown box layout {layout!r} in {METADATA_FILE}; valid: {', '.join(LEGACY_BOX_LAYOUTS)}")
    return LEGACY_BOX_LAYOUTS[layout]


def _convert(boxes, source, target, height, width):
    """NumPy ``[K, 4]`` float32 boxes from ``source`` to ``target`` (``ops.box_formats.convert_boxes``)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if source == target or not len(boxes):
        return boxes
    return np.asarray(convert_boxes(boxes, source, target, height, width), np.float32)


def _check_model_file(path, fmt):
    """Refuse a model file of another format or a corrupt one, naming the file."""
    data = b""
    if path.is_file():
        with open(path, "rb") as f:
            data = f.read(64)  # the header only: model files are hundreds of MiB
    if not data:
        raise ValueError(f"{path}: missing or empty {fmt} model file")
    is_tflite = data[4:8] == TFLITE_MAGIC
    is_xml = data.lstrip().startswith(b"<")
    if fmt == "litert" and not is_tflite:
        raise ValueError(f"{path}: not a LiteRT/TFLite flatbuffer (no TFL3 identifier)")
    if fmt == "openvino" and not is_xml:
        raise ValueError(f"{path}: not an OpenVINO IR .xml file")
    if fmt == "onnx" and (is_tflite or is_xml):
        raise ValueError(f"{path}: not an ONNX model (looks like {'TFLite' if is_tflite else 'XML'})")


class ExportedDetector:
    """An export loaded in its runtime; ``detect`` mirrors ``GFLV2Detector.detect``."""

    def __init__(self, path, threads=None):
        self.folder, self.metadata = export_folder(path)
        self.format = self.metadata["format"]
        if self.format == "saved_model":
            raise ValueError(f"{path}: a SavedModel; run it with TensorFlow (tf.saved_model.load) or TF Serving")
        self.class_names = self.metadata.get("class_names")
        self.height, self.width = self.metadata["input_size"]
        self.batch_size = int(self.metadata["batch_size"])
        self.bounding_box_format = export_box_format(self.metadata)
        model_path = self.folder / MODEL_FILES[self.format]
        _check_model_file(model_path, self.format)
        try:
            self._run = _LOADERS[self.format](model_path, threads)
        except MissingRuntimeError:
            raise  # names the extra to install
        except Exception as error:  # each runtime raises its own types for a corrupt file
            raise ValueError(f"{model_path}: cannot be loaded as {self.format} ({str(error).splitlines()[0]})") from None

    def run_batch(self, images):
        """uint8 ``[batch, H, W, 3]`` → list of per-image ``{"boxes", "confidence", "labels"}``.

        Boxes are in the export's ``bounding_box_format`` of the ``H x W`` input.
        """
        outputs = self._run(np.ascontiguousarray(images, dtype=np.uint8))
        if not self.metadata["nms_inside"]:
            config = self.metadata["test_config"]
            results = postprocess(outputs["candidate_boxes"], outputs["candidate_scores"], self.metadata["num_classes"],
                                  config["score_threshold"], config["iou_threshold"], config["max_detections"],
                                  output_boxes=outputs.get("candidate_output_boxes"))  # fmt: skip
            if "candidate_output_boxes" not in outputs:  # xyxy, or an export from before that output
                for result in results:
                    result["boxes"] = _convert(result["boxes"], "xyxy", self.bounding_box_format, self.height,
                                               self.width)  # fmt: skip
            return results
        results = []
        for i in range(len(images)):
            count = int(outputs["num_detections"][i])
            results.append({
                "boxes": outputs["detection_boxes"][i, :count],
                "confidence": outputs["detection_scores"][i, :count],
                "labels": outputs["detection_classes"][i, :count].astype(np.int64),
            })  # fmt: skip
        return results

    def detect(self, image, bounding_box_format="xyxy"):
        """One uint8 RGB ``[h, w, 3]`` image (any size) → unpadded detections of it.

        Boxes in ``bounding_box_format`` (a name of ``ops.box_formats``; default xyxy pixels,
        ``rel_*`` relative to the image's ``h``, ``w``), whatever the export's own format.
        """
        fmt = validate_bounding_box_format(bounding_box_format)
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
            raise ValueError(f"expected a uint8 RGB image [H, W, 3], got {image.dtype} {image.shape}")
        h, w = image.shape[:2]
        if (h, w) != (self.height, self.width):
            from PIL import Image

            image = np.asarray(Image.fromarray(image).resize((self.width, self.height), Image.BILINEAR))
        batch = np.repeat(image[None], self.batch_size, axis=0)
        result = self.run_batch(batch)[0]
        boxes = _convert(result["boxes"], self.bounding_box_format, "xyxy", self.height, self.width)
        boxes = boxes * np.float32([w / self.width, h / self.height] * 2)
        boxes = _convert(boxes, "xyxy", fmt, h, w)
        return {"boxes": boxes, "confidence": result["confidence"], "labels": result["labels"]}


def _onnx_runner(path, threads):
    ort = require("onnxruntime", "onnx")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    input_name = session.get_inputs()[0].name
    return lambda images: dict(zip(names, session.run(None, {input_name: images})))


def _litert_runner(path, threads):
    interpreter_module = require("ai_edge_litert.interpreter", "litert")
    interpreter = interpreter_module.Interpreter(model_path=str(path), num_threads=threads)
    runner = interpreter.get_signature_runner()

    def run(images):
        return runner(images=images)

    return run


def _openvino_runner(path, threads):
    ov = require("openvino", "openvino")
    # f32 explicitly: on CPUs with bf16/AMX OpenVINO would otherwise infer in bf16.
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    names = [o.get_any_name() for o in compiled.outputs]

    def run(images):
        result = compiled(images)
        return {name: result[output] for name, output in zip(names, compiled.outputs)}

    return run


_LOADERS = {"onnx": _onnx_runner, "litert": _litert_runner, "openvino": _openvino_runner}


def load_exported(path, threads=None):
    """``ExportedDetector`` of an export folder or its model file (see module docstring)."""
    return ExportedDetector(path, threads)
