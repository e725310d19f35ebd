"""AP cost of dynamic-range int8 LiteRT / ONNX exports vs float32, on the synthetic demo data.

Trains the demo preset briefly (``run_demo(output, epochs=N)``), exports it as ONNX and LiteRT
with fp32 and int8 weights at the demo's input size, and scores each export (and the Keras
detector) on the held-out demo images with pycocotools (``gflv2_keras.evaluation``).

    python scripts/int8_ap_cost.py --output /tmp/int8_ap --epochs 4

An existing ``--output`` folder (demo run, exports) is replaced only with ``--overwrite``.
"""

import argparse
import json
import sys
from pathlib import Path

from gflv2_keras.utils.cli import run_command


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in --output")
    args = parser.parse_args()
    return run_command("int8_ap_cost", lambda: measure(args), prog="int8_ap_cost.py")


def measure(args):
    from gflv2_keras import GFLV2Detector
    from gflv2_keras.evaluation.coco_evaluator import evaluate
    from gflv2_keras.export.formats import export_portable
    from gflv2_keras.export.runtimes import load_exported
    from gflv2_keras.training.demo import run_demo

    output = Path(args.output)
    summary = run_demo(output, epochs=args.epochs, overwrite=args.overwrite)
    detector = GFLV2Detector.from_preset(summary["preset_dir"])
    data = output / "data"
    annotations, images = data / "annotations" / "val.json", data / "val"
    results = {"keras": evaluate(detector, annotations, images, progress=False, verbose=False)["AP"]}
    for fmt in ("onnx", "litert"):
        for weights in ("fp32", "int8"):
            path = export_portable(detector, fmt, output / f"{fmt}_{weights}", weights=weights,
                                   overwrite=args.overwrite)
            scores = evaluate(load_exported(path, threads=2), annotations, images, progress=False, verbose=False)
            results[f"{fmt} {weights}"] = scores["AP"]
            print(f"{fmt} {weights}: AP {scores['AP']:.4f}", flush=True)
    print(json.dumps({"epochs": args.epochs, "demo_AP": summary["AP"], "AP": results}, indent=2))


if __name__ == "__main__":
    sys.exit(main())
