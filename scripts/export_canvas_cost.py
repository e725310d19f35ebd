"""What a fixed-size export's canvas costs against the official per-image canvas, on the demo data.

Trains the demo preset (``run_demo(output, epochs=N)``), or takes ``--preset DIR --data DIR`` (a
trained preset and the demo's data folder), exports it as ONNX twice: at its fixed default
canvas (the preset's input scale; images resized keeping their ratio into it and padded) and
with ``--dynamic-size`` (the official per-image canvas inside), and runs on the held-out
images (``data/annotations/val.json``):

* ``predict``: ``GFLV2Detector.detect``, the official pipeline (reference);
* ``onnx per-image canvas``: the dynamic export;
* ``onnx fixed canvas``: the fixed export, each image letterboxed (what ``predict --model`` does);
* ``onnx fixed, stretched``: the same export fed as the runner did before keep-ratio canvases
  (the image stretched to the canvas with PIL bilinear, boxes scaled back).

For each: COCO AP / AP50 (pycocotools or faster-coco-eval) and the share of ``predict``'s
detections it reproduces (same class, IoU >= 0.95, matched one to one by descending score), over
all detections (score > 0.05) and over the confident ones (score >= 0.3, what pictures draw).

    python scripts/export_canvas_cost.py --output /tmp/canvas_cost --epochs 12

An existing ``--output`` folder (demo run, exports) is replaced only with ``--overwrite``.
"""

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from gflv2_keras.utils.cli import run_command

MATCH_IOU = 0.95
CONFIDENT = 0.3


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="folder for the demo run, the exports and results.json")
    parser.add_argument("--epochs", type=int, default=12, help="demo epochs when no --preset is given (default 12)")
    parser.add_argument("--preset", help="a trained preset folder (skips the demo training; needs --data)")
    parser.add_argument("--data", help="with --preset: the demo data folder (annotations/val.json, val/)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in --output")
    args = parser.parse_args()
    return run_command("export_canvas_cost", lambda: measure(args), prog="export_canvas_cost.py")


class Stretched:
    """A fixed-size export fed as before keep-ratio canvases: the image stretched to the canvas."""

    def __init__(self, exported):
        self.exported, self.class_names = exported, exported.class_names

    def detect(self, image):
        from PIL import Image

        h, w = image.shape[:2]
        height, width = self.exported.height, self.exported.width
        canvas = np.asarray(Image.fromarray(image).resize((width, height), Image.BILINEAR))
        result = self.exported.run_batch(canvas[None])[0]
        scale = np.float32([w / width, h / height, w / width, h / height])
        return {**result, "boxes": np.asarray(result["boxes"], np.float32).reshape(-1, 4) * scale}


def measure(args):
    from gflv2_keras import GFLV2Detector
    from gflv2_keras.evaluation.coco_evaluator import evaluate
    from gflv2_keras.export.formats import export_portable
    from gflv2_keras.export.runtimes import load_exported

    output = Path(args.output)
    if args.preset:
        if not args.data:
            raise ValueError("--preset needs --data (the demo data folder)")
        preset, data, demo = Path(args.preset), Path(args.data), None
    else:
        from gflv2_keras.training.demo import run_demo

        summary = run_demo(output, epochs=args.epochs, overwrite=args.overwrite)
        preset, data, demo = Path(summary["preset_dir"]), output / "data", summary["AP"]
    detector = GFLV2Detector.from_preset(preset)
    annotations, images = data / "annotations" / "val.json", data / "val"
    fixed = export_portable(detector, "onnx", output / "onnx_fixed", overwrite=args.overwrite)
    dynamic = export_portable(detector, "onnx", output / "onnx_dynamic", input_size="dynamic",
                              overwrite=args.overwrite)  # fmt: skip
    variants = {
        "predict": detector,
        "onnx per-image canvas": load_exported(dynamic, threads=2),
        "onnx fixed canvas": load_exported(fixed, threads=2),
        "onnx fixed, stretched": Stretched(load_exported(fixed, threads=2)),
    }
    rows = {}
    for name, model in variants.items():
        path = output / f"detections_{name.replace(' ', '_').replace(',', '')}.json"
        scores = evaluate(model, annotations, images, output_json=path, progress=False, verbose=False)
        rows[name] = {"AP": scores["AP"], "AP50": scores["AP50"], "detections": json.loads(path.read_text())}
        print(f"{name}: AP {scores['AP']:.4f} AP50 {scores['AP50']:.4f}", flush=True)
    reference = rows["predict"]["detections"]
    table = {}
    for name, row in rows.items():
        table[name] = {
            "AP": round(row["AP"], 4),
            "AP50": round(row["AP50"], 4),
            "reproduced_all": round(reproduced(reference, row["detections"], 0.0), 4),
            "reproduced_confident": round(reproduced(reference, row["detections"], CONFIDENT), 4),
            "num_detections": len(row["detections"]),
        }
    sizes = [(image["height"], image["width"]) for image in json.loads(annotations.read_text())["images"]]
    result = {"preset": str(preset), "demo_AP": demo, "input_scale": list(detector.input_scale),
              "fixed_canvas": json.loads((fixed / "export.json").read_text())["input_size"],
              "val_images": len(sizes), "portrait_images": sum(h > w for h, w in sizes), "table": table}  # fmt: skip
    (output / "results.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    print("| variant | AP | AP50 | predict's detections reproduced (all / score >= 0.3) |")
    print("|---|---:|---:|---:|")
    for name, row in table.items():
        print(f"| {name} | {row['AP']:.4f} | {row['AP50']:.4f} | "
              f"{row['reproduced_all']:.1%} / {row['reproduced_confident']:.1%} |")  # fmt: skip


def reproduced(reference, found, min_score):
    """Share of ``reference``'s COCO results with ``score >= min_score`` that ``found`` has (``count_reproduced``)."""
    from gflv2_keras.evaluation.matching import count_reproduced

    hits, total = count_reproduced(reference, found, min_score=min_score, iou_threshold=MATCH_IOU)
    return hits / max(total, 1)


if __name__ == "__main__":
    sys.exit(main())
