"""``gflv2 export --preset NAME|DIR --output DIR/MODEL_NAME [--version N] [--overwrite]``.

Writes a TF Serving model version ``DIR/MODEL_NAME/<N>/`` (signatures in
``gflv2_keras.export.saved_model``) and prints the ``docker run`` command that serves it.
"""

import sys
import time
from pathlib import Path


def register(subparsers):
    parser = subparsers.add_parser(
        "export",
        description="Export a detector as a TF Serving model version OUTPUT/VERSION/ "
        "(signatures serving_default: image_bytes, and image_tensor).",
    )
    parser.add_argument("--preset", required=True, help="preset name (see `gflv2 presets`) or preset folder")
    parser.add_argument(
        "--output", required=True, help="model base folder DIR/MODEL_NAME; the version is written inside it"
    )
    parser.add_argument("--version", type=int, default=1, help="model version folder number (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing version folder")
    parser.add_argument(
        "--random-weights", action="store_true", help="do not load weights (smoke-testing a preset without weights)"
    )
    parser.set_defaults(func=run)


def run(args):
    output = Path(args.output)
    if args.version < 0:
        return _fail(f"--version must be >= 0, got {args.version}")
    if not output.resolve().name:
        return _fail(f"--output must name the model folder (DIR/MODEL_NAME), got {args.output!r}")
    target = output / str(args.version)
    if target.exists() and not args.overwrite:
        return _fail(f"{target} already exists; choose another --version or pass --overwrite")

    from gflv2_keras import GFLV2Detector
    from gflv2_keras.export.saved_model import directory_size, export_saved_model

    print(f"[1/2] loading preset {args.preset}{' (random weights)' if args.random_weights else ''}", flush=True)
    try:
        detector = GFLV2Detector.from_preset(args.preset, load_weights=not args.random_weights)
    except (FileNotFoundError, ValueError) as error:
        return _fail(str(error))
    print(f"[2/2] tracing and writing the SavedModel to {target}", flush=True)
    start = time.perf_counter()
    try:
        path = export_saved_model(detector, output, version=args.version, overwrite=args.overwrite)
    except FileExistsError as error:
        return _fail(str(error))
    seconds = time.perf_counter() - start
    print(f"done: {path} written in {seconds:.1f} s ({directory_size(path) / 2**20:.1f} MiB)")
    print("signatures: serving_default (image_bytes: string [N]), image_tensor (image_tensor: uint8 [N, H, W, 3])")
    print("outputs: detection_boxes [N, K, 4] (x1, y1, x2, y2) original pixels, detection_scores [N, K],")
    print("         detection_classes [N, K] (0-based, -1 padding), num_detections [N]")
    print(_serving_instructions(output))
    return 0


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


def _fail(message):
    print(f"error: {message}", file=sys.stderr)
    return 2
