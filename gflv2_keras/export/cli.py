"""``gflv2 export [--format saved_model|onnx|litert|openvino] --preset NAME|DIR --output PATH``.

``saved_model`` (default) writes a TF Serving model version ``PATH/<N>/`` (signatures in
``gflv2_keras.export.saved_model``) and prints the ``docker run`` command that serves it.
``onnx``, ``litert`` and ``openvino`` write a folder ``PATH`` with the model file and
``export.json`` (``gflv2_keras.export.formats``), at a fixed ``--image-size H W`` canvas that
each image is resized into keeping its aspect ratio (``postprocess.py`` next to the model does
it), or with ``--dynamic-size`` (onnx, openvino) at any size with the official per-image canvas
inside; boxes in ``--box-layout`` (a box format name of ``keras.utils.bounding_boxes``,
``ops.box_formats``). ``gflv2 predict --model`` runs every one of them, the SavedModel included.
An unknown ``--format`` and a target that exists (without ``--overwrite``) are refused before
TensorFlow loads (``export.targets``), and again once the export holds the target's lock.
"""

import time
from pathlib import Path

from gflv2_keras.export.targets import check_export_target, export_target
from gflv2_keras.utils.arguments import add_image_size_argument, non_negative_int, positive_int
from gflv2_keras.utils.cli import UserError
from gflv2_keras.utils.locks import hold_beside, releases_locks

# The help text names the formats without importing ``ops.box_formats`` (which loads Keras);
# ``tests/export`` checks it names every one of ``BOUNDING_BOX_FORMATS``.
BOX_LAYOUT_HELP = (
    "onnx/litert/openvino: format of the output boxes, a keras.utils.bounding_boxes name: xyxy (x1, y1, x2, y2 "
    "pixels, the default), yxyx, xywh, center_xywh, center_yxhw (pixels), rel_xyxy, rel_yxyx, rel_xywh, "
    "rel_center_xywh (relative to the input height and width; rel_yxyx is the TF Object Detection API's "
    "normalised layout, what --box-layout yxyx meant before Keras' names)"
)
LEGACY_YXYX_NOTE = (
    "note: --box-layout yxyx is (ymin, xmin, ymax, xmax) in pixels (Keras' name); the normalised TF Object "
    "Detection API layout it meant in earlier versions is --box-layout rel_yxyx"
)


def register(subparsers):
    parser = subparsers.add_parser(
        "export",
        description="Export a detector: a TF Serving model version OUTPUT/VERSION/ (--format saved_model, "
        "the default; signatures serving_default: image_bytes, image_tensor, tf_example), or an ONNX, LiteRT "
        "or OpenVINO model folder OUTPUT at a fixed --input-size.",
    )
    parser.add_argument("--preset", required=True, help="preset name (see `gflv2 presets`) or preset folder")
    parser.add_argument(
        "--output", required=True, help="saved_model: model base folder DIR/MODEL_NAME (the version is written inside it); "
        "onnx/litert/openvino: the export folder"
    )
    parser.add_argument("--format", default="saved_model", help="saved_model (default), onnx, litert or openvino")
    parser.add_argument("--version", type=non_negative_int, default=1,
                        help="saved_model: version folder number (default 1)")
    add_image_size_argument(parser, "--input-size", multiple_of=32,
                            help="onnx/litert/openvino: fixed input size, the network's canvas (default: the "
                            "preset's input scale)")
    parser.add_argument("--dynamic-size", action="store_true",
                        help="onnx/openvino: any input image size, each run at its own official canvas (keep-ratio "
                        "resize to the preset's input scale, padding to /32: the detections of --preset), instead of "
                        "a fixed --image-size canvas, into which each image is resized keeping its ratio and padded; "
                        "litert is always fixed-size")
    parser.add_argument("--batch-size", type=positive_int, default=1,
                        help="onnx/litert/openvino: fixed batch (default 1)")
    parser.add_argument("--box-layout", default=None, metavar="FORMAT", help=BOX_LAYOUT_HELP)
    parser.add_argument("--weights", default="fp32",
                        help="fp32 (default); int8 with --calibration-data: weights and activations in int8, "
                        "calibrated on your images (onnx, openvino); int8-dynamic: int8 weights only, float "
                        "activations (onnx, litert; what int8 without --calibration-data gives); fp16 (litert)")
    parser.add_argument("--calibration-data", metavar="PATH",
                        help="--weights int8: images to calibrate the activation ranges on: a COCO JSON, a Pascal "
                        "VOC root, a YOLO data.yaml (or its folder), or a folder of images")
    parser.add_argument("--calibration-images", type=int, default=None, metavar="N",
                        help="--weights int8: use N images of --calibration-data, evenly spaced (default 100)")
    parser.add_argument("--calibration-split", default="train",
                        help="--calibration-data VOC / YOLO: the split to read (default train)")
    parser.add_argument("--calibration-image-dir", metavar="DIR",
                        help="--calibration-data COCO: the image folder (default the JSON's folder); VOC: default "
                        "JPEGImages")
    parser.add_argument("--no-warmup", dest="warmup", action="store_false",
                        help="saved_model: skip assets.extra/tf_serving_warmup_requests (TF Serving warm-up)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing version folder (saved_model) or export folder")
    parser.add_argument("--box-distributions", action="store_true",
                        help="saved_model: also output each box's classification probability, quality and side "
                        "distributions (docs/box_uncertainty.md)")
    parser.add_argument(
        "--random-weights", action="store_true", help="do not load weights (smoke-testing a preset without weights)"
    )
    parser.set_defaults(func=run, precheck=check_args)


def check_args(args):
    """The checks of ``gflv2 export`` that need no TensorFlow (``precheck``): the format, and the
    target (``OUTPUT/VERSION``, ``OUTPUT``) refused when it exists without ``--overwrite``; returns the target."""
    return check_export_target(args.output, args.format, args.version, args.overwrite)


def hold_target(args):
    """Locks the export's target (``utils.locks.hold_beside``: one export writing it at a time) and
    checks it again under the lock (``check_args``); returns the target."""
    option = "--output or --version" if args.format == "saved_model" else "--output"
    hold_beside(export_target(args.output, args.format, args.version), option)
    return check_args(args)


@releases_locks  # the lock beside the export (utils.locks) is held until the command ends
def run(args):
    if args.format != "saved_model":
        if args.box_distributions:
            raise UserError(f"--box-distributions is available for --format saved_model only, not {args.format}")
        return _run_portable(args)
    if args.calibration_data is not None:
        raise UserError("--calibration-data is for --format onnx or openvino with --weights int8, not --format "
                        "saved_model (float32)")  # fmt: skip
    if args.box_layout is not None:
        raise UserError("--box-layout is available for --format onnx, litert or openvino; the SavedModel's "
                        "detection_boxes are xyxy pixels")  # fmt: skip
    output = Path(args.output)
    target = hold_target(args)

    from gflv2_keras.export.saved_model import directory_size, export_saved_model

    detector = _load_detector(args)
    print(f"[2/2] tracing and writing the SavedModel to {target}", flush=True)
    start = time.perf_counter()
    path = export_saved_model(
        detector,
        output,
        version=args.version,
        overwrite=args.overwrite,
        warmup=args.warmup,
        box_distributions=args.box_distributions,
    )
    seconds = time.perf_counter() - start
    print(f"done: {path} written in {seconds:.1f} s ({directory_size(path) / 2**20:.1f} MiB)")
    print("signatures: serving_default (image_bytes: string [N]), image_tensor (image_tensor: uint8 [N, H, W, 3]),")
    print("            tf_example (inputs: string [N], serialized tf.train.Example with image/encoded)")
    if args.warmup:
        print("warm-up: assets.extra/tf_serving_warmup_requests (one request per signature; --no-warmup to skip)")
    print("outputs: detection_boxes [N, K, 4] (x1, y1, x2, y2) original pixels, detection_scores [N, K],")
    print("         detection_classes [N, K] (0-based, -1 padding), num_detections [N]")
    if args.box_distributions:
        print("         detection_classification, detection_quality (GFLv2), detection_side_offsets, detection_side_std,")
        print("         detection_side_topk_mass, detection_side_distributions, detection_bin_widths, detection_anchor_points")
    print(_serving_instructions(output))
    print(f"Run it here: gflv2 predict IMAGE.jpg --model {output}")
    return 0


def _load_detector(args):
    """The preset's detector (step 1 of 2); a missing preset or weights raises a clear error for the CLI."""
    from gflv2_keras import GFLV2Detector

    print(f"[1/2] loading preset {args.preset}{' (random weights)' if args.random_weights else ''}", flush=True)
    return GFLV2Detector.from_preset(args.preset, load_weights=not args.random_weights)


def _run_portable(args):
    import sys

    target = hold_target(args)  # before Keras loads: a refusal costs no start-up
    from gflv2_keras.ops.box_formats import validate_bounding_box_format

    try:
        box_layout = validate_bounding_box_format(args.box_layout or "xyxy")
    except ValueError as error:
        raise UserError(f"--box-layout: {str(error).replace('bounding_box_format: ', '', 1)}") from None
    if box_layout == "yxyx":
        print(LEGACY_YXYX_NOTE, file=sys.stderr, flush=True)
    calibration = _calibration(args)
    from gflv2_keras.export.formats import export_portable
    from gflv2_keras.export.saved_model import directory_size

    input_size = _portable_input_size(args)
    detector = _load_detector(args)
    print(f"[2/2] converting to {args.format} ({args.weights}) in {target}", flush=True)
    start = time.perf_counter()
    path = export_portable(detector, args.format, target, input_size=input_size, batch_size=args.batch_size,
                           box_layout=box_layout, weights=args.weights, overwrite=args.overwrite,
                           preset=str(args.preset), calibration=calibration)  # fmt: skip
    print(f"done: {path} written in {time.perf_counter() - start:.1f} s ({directory_size(path) / 2**20:.1f} MiB)")
    if input_size == "dynamic":
        print("canvas: any image size, each with its official per-image canvas inside (the detections of --preset)")
    else:
        import json

        height, width = json.loads((Path(path) / "export.json").read_text())["input_size"]
        print(f"canvas: fixed {height}x{width}; each image is resized keeping its aspect ratio into it and padded "
              "(postprocess.py letterbox, next to the model)")  # fmt: skip
    print(f"run it: gflv2 predict IMAGE.jpg --model {path}")
    return 0


def _portable_input_size(args):
    """``--image-size`` (a fixed canvas; ``None``: the preset's scale) or ``"dynamic"`` (``--dynamic-size``)."""
    if not getattr(args, "dynamic_size", False):
        return args.input_size
    if args.input_size is not None:
        raise UserError("--dynamic-size and --image-size exclude each other: a dynamic export takes every size")
    if args.format == "litert":
        raise UserError("--dynamic-size: litert needs a fixed input size (its NMS runs in NumPy on fixed-size "
                        "candidates); export litert with --image-size H W, or use onnx or openvino")  # fmt: skip
    return "dynamic"


def _calibration(args):
    """The calibration images of ``--weights int8 --calibration-data`` (``export.calibration``), or None.

    Checked before the detector loads, so a wrong path costs no conversion time.
    """
    import sys

    from gflv2_keras.export.calibration import DEFAULT_IMAGES, calibration_images
    from gflv2_keras.export.formats import CALIBRATED_FORMATS, WEIGHT_TYPES

    if args.weights not in WEIGHT_TYPES[args.format]:
        raise UserError(f"--weights {args.weights} is not available for {args.format}; valid: "
                        f"{', '.join(WEIGHT_TYPES[args.format])}")  # fmt: skip
    calibration_options = [name for name, value in (("--calibration-images", args.calibration_images),
                                                    ("--calibration-image-dir", args.calibration_image_dir))
                           if value is not None]  # fmt: skip
    if args.calibration_data is None:
        if calibration_options:
            raise UserError(f"{calibration_options[0]} needs --calibration-data PATH")
        if args.weights == "int8" and args.format == "openvino":
            raise UserError("--format openvino --weights int8 needs --calibration-data PATH (images to calibrate "
                            "the int8 activations on)")  # fmt: skip
        if args.weights == "int8":
            print("note: --weights int8 without --calibration-data quantizes the weights only (int8-dynamic); pass "
                  "--calibration-data PATH for int8 weights and activations", file=sys.stderr, flush=True)  # fmt: skip
        return None
    if args.format not in CALIBRATED_FORMATS:
        raise UserError(f"--calibration-data: calibrated int8 is available for {' and '.join(CALIBRATED_FORMATS)}, "
                        f"not {args.format} (its weights-only int8: --weights int8-dynamic)")  # fmt: skip
    if args.weights != "int8":
        raise UserError(f"--calibration-data is for --weights int8, not --weights {args.weights}")
    count = DEFAULT_IMAGES if args.calibration_images is None else args.calibration_images
    calibration = calibration_images(args.calibration_data, count=count, split=args.calibration_split,
                                     image_dir=args.calibration_image_dir)  # fmt: skip
    print(f"calibration: {calibration.describe()}", flush=True)
    return calibration


def _serving_instructions(output):
    name = output.resolve().name
    mount = str(output) if output.is_absolute() else f"$PWD/{output.as_posix()}"
    return "\n".join(
        [
            "Serve it with TF Serving (REST on 8501, gRPC on 8500):",
            f'  docker run -p 8501:8501 -p 8500:8500 -v "{mount}:/models/{name}" -e MODEL_NAME={name} '
            "tensorflow/serving",
            "Query it:",
            f"  python scripts/serving_client.py --model {name} IMAGE.jpg",
        ]
    )

