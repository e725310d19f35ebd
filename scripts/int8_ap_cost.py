"""AP cost of int8 exports vs float32 on the demo data: the fixed-canvas int8 rows of ``precision_ap_cost.py``.

Kept for the commands of earlier measurements (BENCHMARKS.md, docs/int8.md). It runs
``scripts/precision_ap_cost.py --case demo --canvas fixed`` (every export at the demo's fixed
256x256 canvas, as this script always did) with TensorFlow float32 and the float32 and int8 rows
of ``--formats``: ONNX and LiteRT fp32 and ``int8-dynamic`` (weights only), ONNX and OpenVINO
fp32 and calibrated ``int8`` (weights and activations, one row per ``--keep-float`` choice of
sensitive layers left in float32). Results as that script's: AP and AP50 on the 100 held-out demo
images, and the share of TensorFlow float32's detections each export reproduces.

    python scripts/int8_ap_cost.py --output /tmp/int8_ap --epochs 4
    python scripts/int8_ap_cost.py --output /tmp/int8_ap --reuse --formats onnx,openvino --keep-float none,dgqp

Every precision and runtime (bfloat16 too), per-image canvases: ``precision_ap_cost.py``.
"""

import argparse
import sys

from precision_ap_cost import KEEP_FLOAT_CHOICES, REFERENCE_ROW, VARIANTS
from precision_ap_cost import main as precision_main

FORMATS = ("onnx", "litert", "openvino")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--reuse", action="store_true", help="use the demo preset already trained in --output")
    parser.add_argument("--formats", default=",".join(FORMATS), help="comma-separated: onnx, litert, openvino")
    parser.add_argument("--keep-float", default="none,head_outputs+dgqp",
                        help="comma-separated layer choices kept in float32 for calibrated int8: "
                             + ", ".join(KEEP_FLOAT_CHOICES))
    parser.add_argument("--calibration-images", type=int, default=100)
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in --output")
    args = parser.parse_args(argv)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        print(f"int8_ap_cost.py: error: --formats {', '.join(unknown) or '(none)'}; valid: {', '.join(FORMATS)}",
              file=sys.stderr)  # fmt: skip
        return 2
    variants = [REFERENCE_ROW] + [name for name, v in VARIANTS.items() if v.fmt in formats and v.precision == "float32"]
    return precision_main(
        ["--case", "demo", "--output", args.output, "--epochs", str(args.epochs), "--canvas", "fixed",
         "--variants", ",".join(variants), "--keep-float", args.keep_float,
         "--calibration-images", str(args.calibration_images)]
        + ["--reuse"] * args.reuse + ["--overwrite"] * args.overwrite
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
