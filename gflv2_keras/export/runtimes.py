"""Run an exported model in its own runtime with the interface of ``detector.detect``.

``load_exported(path)`` takes anything ``gflv2 export`` writes and returns an
``ExportedDetector`` whose ``detect(image)`` returns ``{"boxes": [K, 4] xyxy original pixels,
"confidence": [K], "labels": [K] int}`` like ``GFLV2Detector.detect``:

* an ONNX / LiteRT / OpenVINO export folder (``gflv2 export --format ...``) or the model file
  inside it; the file is checked to be what ``export.json`` says (a file of another format or a
  corrupt one is refused with a ``ValueError`` naming it);
* a SavedModel: the version folder (``OUTPUT/1``), the model base folder ``gflv2 export``'s
  ``--output`` names (its highest numeric version, as TF Serving picks it) or its
  ``saved_model.pb``; run with TensorFlow through its ``image_tensor`` signature.

How an image reaches the model (``export.json`` ``"canvas"``):

* ``"fixed"`` (ONNX, OpenVINO, LiteRT at a fixed ``H x W``): the image is resized keeping its
  aspect ratio to fit ``H x W`` and padded bottom/right (``numpy_postprocess.letterbox``); the
  model also gets the resized size (``image_shape``) and the boxes are mapped back to the
  original pixels with the same factor (``numpy_postprocess.to_original``). Nothing is stretched.
* ``"per_image"`` (``--dynamic-size`` ONNX / OpenVINO, and the SavedModel): the image goes in as
  it is; the official keep-ratio resize and per-image canvas are inside the graph: the
  detections of ``gflv2 predict --preset``.
* exports written before keep-ratio canvases (no ``"canvas"``: one ``images`` input, which the
  old runner stretched) run only on images of exactly their ``input_size``; another size is
  refused in one line asking to re-export.

The export's box format (``export_box_format``) is ``export.json``'s ``"bounding_box_format"``
(a name of ``ops.box_formats``); an export written before those names has ``"box_layout"``
instead, whose ``"yxyx"`` meant normalised ``(ymin, xmin, ymax, xmax)``: it reads as
``rel_yxyx`` (``export.graph.LEGACY_BOX_LAYOUTS``).
"""

import json
from pathlib import Path

import numpy as np

from gflv2_keras.export.formats import METADATA_FILE, MODEL_FILES, MissingRuntimeError, require
from gflv2_keras.export.graph import IMAGE_SHAPE_NAME, INPUT_NAME, LEGACY_BOX_LAYOUTS
from gflv2_keras.export.numpy_postprocess import letterbox, postprocess, to_original
from gflv2_keras.ops.box_formats import convert_boxes, validate_bounding_box_format

TFLITE_MAGIC = b"TFL3"  # bytes 4..8 of a TFLite flatbuffer
SAVED_MODEL_FILE = "saved_model.pb"
RUNTIME_PRECISIONS = ("float32", "bfloat16")
OPENVINO_PRECISION_HINTS = {"float32": "f32", "bfloat16": "bf16"}


def saved_model_folder(path):
    """The SavedModel version folder of ``path`` (version folder, base folder or ``saved_model.pb``), or ``None``."""
    path = Path(path)
    if path.is_file():
        return path.parent if path.name == SAVED_MODEL_FILE else None
    if (path / SAVED_MODEL_FILE).is_file():
        return path
    if path.is_dir():
        versions = [p for p in path.iterdir() if p.name.isdigit() and (p / SAVED_MODEL_FILE).is_file()]
        if versions:
            return max(versions, key=lambda p: int(p.name))  # TF Serving's default: the latest version
    return None


def export_folder(path):
    """Folder and metadata of an export, from the folder or a file inside it."""
    from gflv2_keras.export.saved_model import METADATA_PATH

    path = Path(path)
    if not path.exists():
        raise ValueError(f"{path}: not found")
    version = saved_model_folder(path)
    if version is not None:
        meta_path = version.joinpath(*METADATA_PATH)
        metadata = _read_metadata(meta_path) if meta_path.is_file() else {}
        return version, {**metadata, "format": "saved_model"}
    folder = path if path.is_dir() else path.parent
    meta_path = folder / METADATA_FILE
    if not meta_path.is_file():
        raise ValueError(f"{path}: not a gflv2 export (no {METADATA_FILE} next to it, no {SAVED_MODEL_FILE}); "
                         "export with `gflv2 export`")  # fmt: skip
    metadata = _read_metadata(meta_path)
    fmt = metadata["format"]
    if fmt not in MODEL_FILES:
        raise ValueError(f"{meta_path}: unknown export format {fmt!r}")
    if path.is_file() and path.name not in (MODEL_FILES.get(fmt), "model.bin"):
        raise ValueError(f"{path}: not the {fmt} model of this export ({folder / MODEL_FILES[fmt]})")
    return folder, metadata


def _read_metadata(meta_path):
    try:
        metadata = json.loads(meta_path.read_text())
        metadata["format"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{meta_path}: unreadable export metadata ({error})") from None
    return metadata


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
    """An export loaded in its runtime; ``detect`` mirrors ``GFLV2Detector.detect``.

    Attributes:
        format: ``onnx``, ``litert``, ``openvino`` or ``saved_model``.
        output_box_format: the model's own box format (``--box-layout``; ``run_batch`` returns it).
        bounding_box_format: ``"xyxy"``, the format ``detect`` returns by default.
        canvas: ``"fixed"``, ``"per_image"`` or ``"legacy"`` (module docstring).
        height, width: the fixed canvas (``None`` for a per-image canvas).
        input_scale: ``(long, short)`` of the official resize inside a per-image export (what
            ``gflv2 predict`` checks images against), ``None`` for a fixed canvas (any image
            fits it: each side keeps at least one pixel).
        class_names: the detector's class names (``None`` if the export does not record them).
        precision: the compute precision (``"float32"``, or ``"bfloat16"`` in OpenVINO;
            ``check_runtime_precision``).
    """

    def __init__(self, path, threads=None, precision=None):
        self.folder, self.metadata = export_folder(path)
        self.format = self.metadata["format"]
        self.precision = check_runtime_precision(self.format, precision)
        self.class_names = self.metadata.get("class_names")
        # ``bounding_box_format``: what ``detect`` returns by default (as ``GFLV2Detector``'s, which
        # ``evaluation.run_detector`` reads); the model's own outputs are in ``output_box_format``.
        self.bounding_box_format = "xyxy"
        self.output_box_format = export_box_format(self.metadata)
        if self.format == "saved_model":
            self.canvas, self.batch_size, self.height, self.width = "per_image", None, None, None
            self._run = _saved_model_runner(self.folder)
        else:
            self.canvas = self.metadata.get("canvas", "legacy")
            size = self.metadata.get("input_size")
            self.height, self.width = (None, None) if size is None else (int(v) for v in size)
            self.batch_size = int(self.metadata["batch_size"])
            model_path = self.folder / MODEL_FILES[self.format]
            _check_model_file(model_path, self.format)
            try:
                self._run = _LOADERS[self.format](model_path, threads, self.precision)
            except MissingRuntimeError:
                raise  # names the extra to install
            except Exception as error:  # each runtime raises its own types for a corrupt file
                raise ValueError(f"{model_path}: cannot be loaded as {self.format} "
                                 f"({str(error).splitlines()[0]})") from None  # fmt: skip
        scale = self.metadata.get("input_scale")
        self.input_scale = tuple(int(v) for v in scale) if scale and self.canvas == "per_image" else None

    def inputs_for(self, images, image_shape=None):
        """The model's feed ``{name: array}`` for uint8 ``[batch, H, W, 3]`` canvases.

        ``image_shape`` int ``[batch, 2]``: the resized size inside each canvas (fixed-canvas
        exports; default: the whole canvas, an image of exactly the export's size).
        """
        images = np.ascontiguousarray(images, dtype=np.uint8)
        feeds = {INPUT_NAME: images}
        if self.canvas == "fixed":
            if image_shape is None:
                image_shape = np.tile(np.int32([images.shape[1], images.shape[2]]), (len(images), 1))
            feeds[IMAGE_SHAPE_NAME] = np.ascontiguousarray(image_shape, dtype=np.int32).reshape(len(images), 2)
        return feeds

    def run_batch(self, images, image_shape=None):
        """uint8 ``[batch, H, W, 3]`` → list of per-image ``{"boxes", "confidence", "labels"}``.

        Boxes are in the export's ``output_box_format`` of the model input: pixels of the
        canvas for a fixed-size export (``rel_*``: relative to ``image_shape``), of the images
        themselves for a per-image canvas. ``image_shape`` as ``inputs_for``.
        """
        outputs = self._run(self.inputs_for(images, image_shape))
        if not self.metadata.get("nms_inside", True):
            config = self.metadata["test_config"]
            results = postprocess(outputs["candidate_boxes"], outputs["candidate_scores"], self.metadata["num_classes"],
                                  config["score_threshold"], config["iou_threshold"], config["max_detections"],
                                  output_boxes=outputs.get("candidate_output_boxes"))  # fmt: skip
            if "candidate_output_boxes" not in outputs:  # xyxy, or an export from before that output
                for i, result in enumerate(results):
                    height, width = self._frame(images, image_shape, i)
                    result["boxes"] = _convert(result["boxes"], "xyxy", self.output_box_format, height, width)
            return results
        results = []
        for i in range(len(images)):
            count = int(outputs["num_detections"][i])
            results.append({
                "boxes": np.asarray(outputs["detection_boxes"][i, :count], np.float32),
                "confidence": np.asarray(outputs["detection_scores"][i, :count], np.float32),
                "labels": np.asarray(outputs["detection_classes"][i, :count]).astype(np.int64),
            })  # fmt: skip
        return results

    def _frame(self, images, image_shape, i):
        """``(height, width)`` the ``rel_*`` boxes of image ``i`` are relative to."""
        if self.canvas == "fixed" and image_shape is not None:
            return tuple(int(v) for v in np.reshape(image_shape, (-1, 2))[i])
        return int(np.shape(images)[1]), int(np.shape(images)[2])

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
        if self.canvas == "fixed":
            canvas, image_shape = letterbox(image, self.height, self.width)
            batch, shapes = self._batch(canvas), np.tile(image_shape, (self._repeat(), 1))
            result = self.run_batch(batch, shapes)[0]
            boxes = _convert(result["boxes"], self.output_box_format, "xyxy", *image_shape)
            boxes = to_original(boxes, image_shape, (h, w))
        else:
            if self.canvas == "legacy" and (h, w) != (self.height, self.width):
                raise ValueError(
                    f"{self.folder}: this export was written before keep-ratio canvases and takes only "
                    f"{self.width}x{self.height} images (width x height); re-export it with `gflv2 export` to run "
                    f"this {w}x{h} image"
                )
            result = self.run_batch(self._batch(image))[0]
            boxes = _convert(result["boxes"], self.output_box_format, "xyxy", h, w)
        return {"boxes": _convert(boxes, "xyxy", fmt, h, w), "confidence": result["confidence"],
                "labels": result["labels"]}  # fmt: skip

    def _repeat(self):
        return self.batch_size or 1

    def _batch(self, image):
        return np.repeat(image[None], self._repeat(), axis=0)


def check_runtime_precision(fmt, precision):
    """The compute precision an export of ``fmt`` runs in: ``"float32"`` (default) or ``"bfloat16"``.

    ``bfloat16`` is a choice of OpenVINO's CPU plugin (``INFERENCE_PRECISION_HINT``: float32
    weights of the IR, bf16 compute on CPUs with AVX512-BF16 / AMX); the other runtimes run the
    graph's own types (an int8 export is int8 whatever this says).
    """
    precision = precision or "float32"
    if precision not in RUNTIME_PRECISIONS:
        raise ValueError(f"unknown runtime precision {precision!r}; valid: {', '.join(RUNTIME_PRECISIONS)}")
    if precision == "bfloat16" and fmt != "openvino":
        raise ValueError(f"bfloat16 compute is an OpenVINO setting; a {fmt} export runs in its own precision")
    return precision


def _onnx_runner(path, threads, precision):
    ort = require("onnxruntime", "onnx")
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    inputs = {_plain_name(i.name): i.name for i in session.get_inputs()}
    return lambda feeds: dict(zip(names, session.run(None, {inputs[k]: v for k, v in feeds.items()})))


def _plain_name(name):
    """A runtime's input name without a TensorFlow ``:0`` suffix (``images:0`` → ``images``)."""
    return name.split(":")[0]


def _litert_runner(path, threads, precision):
    interpreter_module = require("ai_edge_litert.interpreter", "litert")
    interpreter = interpreter_module.Interpreter(model_path=str(path), num_threads=threads)
    runner = interpreter.get_signature_runner()
    return lambda feeds: runner(**feeds)


def _openvino_runner(path, threads, precision):
    ov = require("openvino", "openvino")
    # Stated explicitly: on CPUs with bf16/AMX OpenVINO would otherwise pick bf16 by itself.
    config = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISION_HINTS[precision]}
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    names = [o.get_any_name() for o in compiled.outputs]
    inputs = {_plain_name(name): name for port in compiled.inputs for name in port.get_names()}

    def run(feeds):
        result = compiled({inputs[k]: v for k, v in feeds.items()})
        return {name: result[output] for name, output in zip(names, compiled.outputs)}

    return run


def _saved_model_runner(folder):
    """The ``image_tensor`` signature of a SavedModel version folder: feeds → NumPy outputs."""
    import tensorflow as tf

    from gflv2_keras.export.saved_model import TENSOR_INPUT, TENSOR_SIGNATURE

    try:
        loaded = tf.saved_model.load(str(folder))
        signature = loaded.signatures[TENSOR_SIGNATURE]
    except KeyError:
        raise ValueError(f"{folder}: a SavedModel without the {TENSOR_SIGNATURE!r} signature of "
                         "`gflv2 export`") from None  # fmt: skip
    except Exception as error:  # a corrupt or foreign SavedModel
        raise ValueError(f"{folder}: cannot be loaded as a SavedModel ({str(error).splitlines()[0]})") from None

    def run(feeds, model=loaded):  # ``model``: the loaded object owns the variables; keep it alive
        outputs = signature(**{TENSOR_INPUT: tf.constant(feeds[INPUT_NAME])})
        return {key: np.asarray(value) for key, value in outputs.items()}

    return run


_LOADERS = {"onnx": _onnx_runner, "litert": _litert_runner, "openvino": _openvino_runner}


def load_exported(path, threads=None, precision=None):
    """``ExportedDetector`` of an export folder, its model file or a SavedModel (module docstring).

    ``precision``: ``"float32"`` (default) or ``"bfloat16"`` (OpenVINO only: ``check_runtime_precision``).
    """
    return ExportedDetector(path, threads, precision)
