"""AP cost of int8 exports vs float32 on the synthetic demo data: weights-only and calibrated.

Trains the demo preset briefly (``run_demo(output, epochs=N)``; ``--reuse`` takes the preset an
earlier run left in ``--output``), exports it at the demo's input size as

* ONNX and LiteRT: fp32 and ``int8-dynamic`` (weights-only int8, float activations);
* ONNX and OpenVINO: fp32 and calibrated ``int8`` (weights and activations, calibrated on
  ``--calibration-images`` images of the demo's *training* split; the held-out images are never
  seen), once per ``--keep-float`` choice of sensitive layers left in float32
  (``export.quantize.SENSITIVE_LAYERS``: ``none``, ``dgqp``, ``head_outputs``,
  ``head_outputs+dgqp``),

and scores each export (and the Keras detector) on the 100 held-out demo images with COCOeval
(``gflv2_keras.evaluation``): AP and AP50.

    python scripts/int8_ap_cost.py --output /tmp/int8_ap --epochs 4
    python scripts/int8_ap_cost.py --output /tmp/int8_ap --reuse --formats onnx,openvino --keep-float none,dgqp

An existing ``--output`` folder (demo run, exports) is replaced only with ``--overwrite``.
"""

import argparse
import json
import sys
import time
from pathlib import Path

from gflv2_keras.utils.cli import run_command

FORMATS = ("onnx", "litert", "openvino")
KEEP_FLOAT_CHOICES = ("none", "dgqp", "head_outputs", "head_outputs+dgqp")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--reuse", action="store_true", help="use the demo preset already trained in --output")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated: onnx, litert, openvino")
    parser.add_argument("--keep-float", default="none,head_outputs+dgqp",
                        help=f"comma-separated layer choices kept in float32 for calibrated int8: {', '.join(KEEP_FLOAT_CHOICES)}")
    parser.add_argument("--calibration-images", type=int, default=100)
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in --output")
    args = parser.parse_args()
    return run_command("int8_ap_cost", lambda: measure(args), prog="int8_ap_cost.py")


def keep_float_groups(choice):
    if choice not in KEEP_FLOAT_CHOICES:
        raise ValueError(f"--keep-float {choice!r}; valid: {', '.join(KEEP_FLOAT_CHOICES)}")
    return () if choice == "none" else tuple(choice.split("+"))


def variants(formats, keep_float):
    """``[(name, fmt, weights, keep_float_groups)]`` of the exports to score."""
    found = []
    for fmt in formats:
        found.append((f"{fmt} fp32", fmt, "fp32", None))
        if fmt in ("onnx", "litert"):
            found.append((f"{fmt} int8-dynamic", fmt, "int8-dynamic", None))
        if fmt in ("onnx", "openvino"):
            for choice in keep_float:
                found.append((f"{fmt} int8 static (float: {choice})", fmt, "int8", keep_float_groups(choice)))
    return found


def measure(args):
    from gflv2_keras import GFLV2Detector
    from gflv2_keras.evaluation.coco_evaluator import evaluate
    from gflv2_keras.export.calibration import calibration_images
    from gflv2_keras.export.formats import export_portable
    from gflv2_keras.export.runtimes import load_exported
    from gflv2_keras.training.demo import run_demo

    formats = [f for f in args.formats.split(",") if f]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"--formats {', '.join(unknown)}; valid: {', '.join(FORMATS)}")
    keep_float = [c for c in args.keep_float.split(",") if c]
    for choice in keep_float:
        keep_float_groups(choice)
    output = Path(args.output)
    preset = output / "work_dir" / "preset"
    if args.reuse:
        if not (preset / "config.json").is_file():
            raise ValueError(f"--reuse: no trained demo preset in {preset}; run without --reuse first")
        demo = {"AP": None, "epochs": "reused"}
    else:
        summary = run_demo(output, epochs=args.epochs, overwrite=args.overwrite)
        preset, demo = Path(summary["preset_dir"]), {"AP": summary["AP"], "epochs": args.epochs}
    detector = GFLV2Detector.from_preset(str(preset))
    data = output / "data"
    annotations, images = data / "annotations" / "val.json", data / "val"
    calibration = calibration_images(data / "annotations" / "train.json", count=args.calibration_images,
                                     image_dir=data / "train")  # fmt: skip
    scores = evaluate(detector, annotations, images, progress=False, verbose=False)
    results = {"keras": {"AP": scores["AP"], "AP50": scores["AP50"]}}
    print(f"keras: AP {scores['AP']:.4f} AP50 {scores['AP50']:.4f}", flush=True)
    for name, fmt, weights, groups in variants(formats, keep_float):
        folder = output / "exports" / name.replace(" ", "_").replace(":", "").replace("(", "").replace(")", "")
        start = time.perf_counter()
        path = export_portable(detector, fmt, folder, weights=weights, overwrite=args.overwrite,
                               calibration=calibration if weights == "int8" else None,
                               keep_float=groups)  # fmt: skip
        seconds = time.perf_counter() - start
        scores = evaluate(load_exported(path, threads=2), annotations, images, progress=False, verbose=False)
        size = sum(f.stat().st_size for f in path.iterdir() if f.suffix in (".onnx", ".bin", ".tflite"))
        results[name] = {"AP": scores["AP"], "AP50": scores["AP50"], "MiB": round(size / 2**20, 2),
                         "export_s": round(seconds, 1)}  # fmt: skip
        print(f"{name}: AP {scores['AP']:.4f} AP50 {scores['AP50']:.4f} ({size / 2**20:.1f} MiB, exported in "
              f"{seconds:.0f} s)", flush=True)  # fmt: skip
    print(json.dumps({"demo": demo, "calibration_images": len(calibration), "results": results}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
