"""Which runtime runs ``detect`` and in what precision: the names, the valid pairs, the CLI options.

``gflv2 predict`` and ``gflv2 evaluate`` take ``--runtime auto|tf|onnxruntime|openvino|litert``
with ``--precision`` (``inference.runtime_choice`` does the work; ``docs/runtimes.md``):

===========  ===================================  ===============================================
runtime      precisions                           what runs
===========  ===================================  ===============================================
tf           float32, bfloat16, float16           ``GFLV2Detector.detect`` (Keras dtype policy)
onnxruntime  float32, int8                        per-image-canvas ONNX export (int8: calibrated)
openvino     float32, bfloat16, int8              per-image-canvas IR (bfloat16: the float32 IR
                                                  with the CPU plugin's bf16 hint; int8: NNCF)
litert       float32                              fixed-canvas LiteRT export (letterboxed)
auto         float32, bfloat16, float16, int8     the fastest of the above that keeps the result
===========  ===================================  ===============================================

Nothing here imports TensorFlow: ``check_runtime_options`` runs as the commands' precheck, so a
wrong combination is one line before TensorFlow's start-up.
"""

import importlib.util

from gflv2_keras.utils.arguments import existing_path, positive_int
from gflv2_keras.utils.cli import UserError

RUNTIMES = ("auto", "tf", "onnxruntime", "openvino", "litert")
RUNTIME_PRECISIONS = {
    "tf": ("float32", "bfloat16", "float16"),
    "onnxruntime": ("float32", "int8"),
    "openvino": ("float32", "bfloat16", "int8"),
    "litert": ("float32",),
}
RUNTIME_PRECISIONS["auto"] = ("float32", "bfloat16", "float16", "int8")
PRECISION_NAMES = RUNTIME_PRECISIONS["auto"]
# runtime (int8 adds its quantizer) -> [(module, pip extra)]: what ``export.formats.require`` imports.
RUNTIME_MODULES = {
    "tf": [],
    "onnxruntime": [("tf2onnx", "onnx"), ("onnx", "onnx"), ("onnxruntime", "onnx")],
    "openvino": [("tf2onnx", "openvino"), ("onnx", "openvino"), ("openvino", "openvino")],
    "litert": [("ai_edge_litert", "litert")],
}
INT8_MODULES = {"onnxruntime": [("onnxruntime.quantization", "onnx")], "openvino": [("nncf", "openvino")]}
CACHE_ENV = "GFLV2_CACHE_DIR"


def runtime_modules(runtime, precision):
    """``[(module, extra)]`` that ``runtime`` needs in ``precision``."""
    return RUNTIME_MODULES[runtime] + (INT8_MODULES.get(runtime, []) if precision == "int8" else [])


def missing_module(runtime, precision):
    """``(module, extra)`` of the first module ``runtime`` needs and cannot find, or ``None`` (nothing imported)."""
    for module, extra in runtime_modules(runtime, precision):
        try:
            found = importlib.util.find_spec(module) is not None
        except ImportError:  # the parent package of a dotted name is missing
            found = False
        if not found:
            return module, extra
    return None


def check_runtime_precision(runtime, precision):
    """``ValueError`` in one line unless ``runtime`` runs ``precision`` (the table of the module docstring)."""
    if runtime not in RUNTIMES:
        raise ValueError(f"unknown runtime {runtime!r}; valid: {', '.join(RUNTIMES)}")
    valid = RUNTIME_PRECISIONS[runtime]
    if precision not in valid:
        where = [r for r in RUNTIMES if r != "auto" and precision in RUNTIME_PRECISIONS[r]]
        raise ValueError(f"--runtime {runtime} runs --precision {', '.join(valid)}, not {precision!r}"
                         + (f" ({precision} runs in {', '.join(where)})" if where else ""))  # fmt: skip


def add_runtime_arguments(parser):
    """``--runtime``, ``--precision`` (with int8), ``--calibration-data``, ``--calibration-images``,
    ``--cache-dir`` and ``--remeasure`` on a ``predict`` / ``evaluate`` parser."""
    parser.add_argument(
        "--runtime", choices=RUNTIMES, default="tf",
        help="what runs the detector: tf (default: Keras/TensorFlow, the preset itself), onnxruntime, openvino "
        "(exported once per model into --cache-dir, any image size, the detections of tf), litert (fixed "
        "canvas, letterboxed) or auto: the fastest installed one that keeps tf's detections, measured once per "
        "model, precision and machine and cached (docs/runtimes.md)",
    )  # fmt: skip
    parser.add_argument(
        "--precision", choices=PRECISION_NAMES, default="float32",
        help="compute precision (default float32): bfloat16 (tf: Keras mixed_bfloat16; openvino: bf16 compute; "
        "fast on CPUs with AVX512-BF16/AMX), float16 (tf), int8 (onnxruntime, openvino: weights and activations "
        "calibrated on --calibration-data). Decoding and NMS stay float32",
    )  # fmt: skip
    parser.add_argument("--calibration-data", type=existing_path, metavar="PATH",
                        help="--precision int8: images to calibrate the int8 activations on: a COCO JSON, a Pascal "
                        "VOC root, a YOLO data.yaml (or its folder), or a folder of images")  # fmt: skip
    parser.add_argument("--calibration-images", type=positive_int, default=None, metavar="N",
                        help="--precision int8: use N images of --calibration-data, evenly spaced (default 100)")
    parser.add_argument("--cache-dir", metavar="DIR",
                        help=f"where exports and auto's measurements are kept (default ${CACHE_ENV}, else "
                        "$XDG_CACHE_HOME/gflv2_keras, else ~/.cache/gflv2_keras)")  # fmt: skip
    parser.add_argument("--remeasure", action="store_true",
                        help="--runtime auto: measure the runtimes again instead of reusing the cached choice")


def check_runtime_options(args, model_flag=None):
    """One-line ``UserError`` for a combination that cannot run (before TensorFlow loads).

    Args:
        args: the parsed ``predict`` / ``evaluate`` arguments (``add_runtime_arguments``).
        model_flag: the value of ``--model`` where the command has it (an export keeps its own runtime).
    """
    runtime, precision = args.runtime, args.precision
    if model_flag:
        if runtime != "tf":
            raise UserError(f"--runtime {runtime} applies to --preset; an export of --model runs in its own runtime")
        if precision != "float32":
            raise UserError(f"--precision {precision} applies to --preset; an exported model keeps its own")
    try:
        check_runtime_precision(runtime, precision)
    except ValueError as error:
        raise UserError(str(error)) from None
    if precision == "int8" and args.calibration_data is None:
        raise UserError("--precision int8 needs --calibration-data PATH (images to calibrate the int8 activations "
                        "on: a dataset or a folder of images)")  # fmt: skip
    if precision != "int8":
        given = [flag for flag, value in (("--calibration-data", args.calibration_data),
                                          ("--calibration-images", args.calibration_images)) if value is not None]
        if given:
            raise UserError(f"{given[0]} is for --precision int8, not {precision}")
    if runtime == "tf":
        given = [flag for flag, value in (("--cache-dir", args.cache_dir), ("--remeasure", args.remeasure)) if value]
        if given:
            raise UserError(f"{given[0]} is for the exported runtimes (--runtime auto, onnxruntime, openvino, litert), "
                            "not tf")  # fmt: skip
    elif args.remeasure and runtime != "auto":
        raise UserError(f"--remeasure is for --runtime auto, not {runtime}")
    if runtime not in ("tf", "auto"):
        missing = missing_module(runtime, precision)
        if missing:
            module, extra = missing
            raise UserError(f"--runtime {runtime} needs the {module.split('.')[0]!r} package; install it with "
                            f"pip install 'gflv2-keras[{extra}]'")  # fmt: skip


def tf_precision(args):
    """The ``--precision`` the preset is loaded in: its own for ``--runtime tf``, else float32 (what exports trace)."""
    return args.precision if args.runtime == "tf" else "float32"


def first_image(items, read, limit=16):
    """The uint8 pixels of the first of ``items`` that ``read(item)`` decodes (of the first ``limit``), or ``None``.

    ``auto``'s probe: the command's own first image, so the measured sizes are the user's.
    """
    from gflv2_keras.data.image_io import ImageReadError

    for item in list(items)[:limit]:
        try:
            return read(item)
        except ImageReadError:
            continue
    return None


def compile_from_args(detector, args, probe=None):
    """``detector`` (loaded in ``tf_precision(args)``) as the ``--runtime`` / ``--precision`` of ``args`` run it.

    ``--runtime tf`` returns ``detector`` itself; the others ``runtime_choice.compile_for_inference``
    (``probe``: auto's probe image, e.g. ``first_image``; only read for ``auto``).
    """
    if args.runtime == "tf":
        return detector
    from gflv2_keras.inference.runtime_choice import compile_for_inference

    return compile_for_inference(
        detector, args.runtime, args.precision, calibration_data=args.calibration_data,
        calibration_images=args.calibration_images, cache_dir=args.cache_dir,
        probe_image=probe() if args.runtime == "auto" and probe is not None else None, remeasure=args.remeasure,
    )  # fmt: skip
