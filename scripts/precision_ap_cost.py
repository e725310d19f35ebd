"""AP and detections of every precision x runtime, on the demo's held-out data or the converted-checkpoint parity case.

Rows (``--variants``, comma-separated; default all; ``tf-float32`` always runs, it is the reference):

* ``tf-float32``: ``GFLV2Detector.detect`` (the official per-image canvas);
* ``tf-bfloat16``: the same preset with ``dtype="mixed_bfloat16"``;
* ``onnxruntime-float32``: the ONNX export, fp32;
* ``onnxruntime-int8``: ONNX, calibrated int8 (weights and activations, ``export.quantize``);
* ``onnxruntime-int8-dynamic``: ONNX, weights-only int8 (float activations);
* ``openvino-float32``: the OpenVINO IR, fp32, ``INFERENCE_PRECISION_HINT`` f32;
* ``openvino-bfloat16``: the same IR run with bf16 compute (``load_exported(precision="bfloat16")``);
* ``openvino-int8``: OpenVINO, calibrated int8 (NNCF);
* ``litert-float32``, ``litert-int8-dynamic``: LiteRT, fp32 and weights-only int8.

ONNX and OpenVINO are exported with ``input_size="dynamic"`` (the official per-image canvas inside
the graph) unless ``--canvas fixed``; LiteRT has no dynamic-size export and always uses the
preset's fixed default canvas (images letterboxed into it). The table names each row's canvas.
Calibrated int8 rows are calibrated on ``--calibration-images`` images of the demo's *training*
split (never the scored images), one row per ``--keep-float`` choice of layers left in float32.

Each row is compared with ``tf-float32``: the share of its detections the row returns again
(same image and class, IoU >= 0.95, one to one: ``evaluation.matching.count_reproduced``), over
all detections (score >= 0.05, the test threshold) and the confident ones (score >= 0.3).

``--case demo`` (default): the demo preset (trained here by ``run_demo(output, epochs=N)``;
``--reuse``: the one an earlier run left in ``--output``; or ``--preset DIR --data DIR``), scored
on the 100 held-out demo images with COCOeval: AP, AP50, and the shares above.

``--case parity``: the converted-checkpoint parity case of ``tests/convert``: the full-size
``--parity-preset`` network (default ``gflv2_r50_fpn_1x_coco``, official canvas 1333 x 800) with the
weights of ``--checkpoint`` (an official ``.pth``) or, without one, of the independent PyTorch
reference model (``tests/torch_reference``, random weights, seed 0) saved as an official
checkpoint; converted with ``convert_checkpoint`` and run on the first ``--images`` held-out demo
images. No ground truth fits it: only the shares, plus one more row, the PyTorch reference's own
float64 forward and post-processing on the same normalised canvas (with the reference weights).

    python scripts/precision_ap_cost.py --output /tmp/precision --epochs 12
    python scripts/precision_ap_cost.py --output /tmp/precision --preset DIR --data DIR
    python scripts/precision_ap_cost.py --case parity --output /tmp/parity --data /tmp/precision/data

``--reuse`` re-runs in an earlier run's ``--output``: its preset (demo) or converted checkpoint
(parity) and its exports are used (variants not there yet are exported), its results
(``results_CASE.json``, ``detections_CASE/``) replaced. Without ``--reuse``, an earlier run's
results, demo run and exports in ``--output`` are replaced only with ``--overwrite``.
"""

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gflv2_keras.utils.cli import run_command

MATCH_IOU = 0.95
CONFIDENT = 0.3
CASES = ("demo", "parity")
KEEP_FLOAT_CHOICES = ("none", "dgqp", "head_outputs", "head_outputs+dgqp")
DEFAULT_CALIBRATION = {"demo": 100, "parity": 32}  # parity: full-size forwards, each seconds long
PARITY_PRESET = "gflv2_r50_fpn_1x_coco"
REFERENCE_ROW = "tf-float32"
TORCH_ROW = "pytorch-reference-float64"
TESTS_DIR = Path(__file__).resolve().parents[1] / "tests"


@dataclass(frozen=True)
class Variant:
    """One precision x runtime: the export it needs (``fmt`` None: the Keras detector) and how it runs."""

    runtime: str
    fmt: str = None
    weights: str = None
    precision: str = "float32"  # tf: the dtype policy's compute type; openvino: the precision hint

    @property
    def calibrated(self):
        return self.weights == "int8"


VARIANTS = {
    "tf-float32": Variant("tf"),
    "tf-bfloat16": Variant("tf", precision="bfloat16"),
    "onnxruntime-float32": Variant("onnxruntime", "onnx", "fp32"),
    "onnxruntime-int8": Variant("onnxruntime", "onnx", "int8"),
    "onnxruntime-int8-dynamic": Variant("onnxruntime", "onnx", "int8-dynamic"),
    "openvino-float32": Variant("openvino", "openvino", "fp32"),
    "openvino-bfloat16": Variant("openvino", "openvino", "fp32", "bfloat16"),
    "openvino-int8": Variant("openvino", "openvino", "int8"),
    "litert-float32": Variant("litert", "litert", "fp32"),
    "litert-int8-dynamic": Variant("litert", "litert", "int8-dynamic"),
}
DYNAMIC_SIZE_FORMATS = ("onnx", "openvino")  # export_portable(input_size="dynamic")


def parser():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, help="folder for the demo run, exports and results")
    parser.add_argument("--case", default="demo", choices=CASES, help="demo (default) or parity")
    parser.add_argument("--epochs", type=int, default=12, help="demo epochs when training here (default 12)")
    parser.add_argument("--reuse", action="store_true",
                        help="use the preset (demo) or converted checkpoint (parity) and exports already in --output")
    parser.add_argument("--preset", help="demo: a trained preset folder (skips the demo training; needs --data)")
    parser.add_argument("--data", help="the demo data folder (annotations/{train,val}.json, train/, val/); default: "
                                       "OUTPUT/data (written for --case parity if missing)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated: {', '.join(VARIANTS)}")
    parser.add_argument("--canvas", default="per-image", choices=("per-image", "fixed"),
                        help="ONNX/OpenVINO exports: per-image (dynamic size, default) or the fixed default canvas")
    parser.add_argument("--keep-float", default="none",
                        help="comma-separated layer choices kept float32 in calibrated int8: "
                             + ", ".join(KEEP_FLOAT_CHOICES))
    parser.add_argument("--calibration-images", type=int,
                        help="training images calibrating int8 (default: 100 demo, 32 parity)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="runtime threads (default: all CPUs)")
    parser.add_argument("--parity-preset", default=PARITY_PRESET,
                        help=f"parity: the architecture (default {PARITY_PRESET})")
    parser.add_argument("--checkpoint", help="parity: an official .pth for --parity-preset (default: the PyTorch "
                                             "reference model's random weights)")
    parser.add_argument("--images", type=int, default=4, help="parity: how many held-out demo images (default 4)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier run in --output (results; without --reuse the demo run and "
                             "exports too)")
    return parser


def main(argv=None):
    args = parser().parse_args(argv)
    return run_command("precision_ap_cost", lambda: measure(args), prog="precision_ap_cost.py",
                       check=lambda: check(args))  # fmt: skip


@dataclass(frozen=True)
class Row:
    name: str
    variant: Variant
    keep_float: str = "none"


def keep_float_groups(choice):
    if choice not in KEEP_FLOAT_CHOICES:
        raise ValueError(f"--keep-float {choice!r}; valid: {', '.join(KEEP_FLOAT_CHOICES)}")
    return () if choice == "none" else tuple(choice.split("+"))


def rows_of(variants, keep_float):
    """``[Row]`` to run: ``tf-float32`` first, one calibrated row per ``keep_float`` choice."""
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"--variants {', '.join(unknown)}; valid: {', '.join(VARIANTS)}")
    for choice in keep_float:
        keep_float_groups(choice)
    if not keep_float:
        raise ValueError("--keep-float: name at least one choice (none: every layer int8)")
    rows = [Row(REFERENCE_ROW, VARIANTS[REFERENCE_ROW])]
    for name in dict.fromkeys(variants):
        variant = VARIANTS[name]
        if name == REFERENCE_ROW:
            continue
        if not variant.calibrated:
            rows.append(Row(name, variant))
            continue
        for choice in keep_float:
            rows.append(Row(name if choice == "none" else f"{name} (float: {choice})", variant, choice))
    return rows


def check(args):
    """The argument checks that need no TensorFlow."""
    rows_of(_listed(args.variants), _listed(args.keep_float))
    if args.case == "demo":
        if args.preset and not args.data:
            raise ValueError("--preset needs --data (the demo data folder)")
        if args.checkpoint:
            raise ValueError("--checkpoint is for --case parity")
    elif args.preset:
        raise ValueError("--preset is for --case demo (parity: --parity-preset NAME and --checkpoint PTH)")
    if args.checkpoint and not Path(args.checkpoint).is_file():
        raise ValueError(f"--checkpoint {args.checkpoint}: not found")
    for option in ("images", "calibration_images", "threads", "epochs"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise ValueError(f"--{option.replace('_', '-')} must be a positive integer, got {value}")
    from gflv2_keras.utils.files import refuse_existing

    output = Path(args.output)
    replace = args.overwrite or args.reuse  # --reuse: a re-run, whose results replace the earlier run's
    refuse_existing(output / f"results_{args.case}.json", replace, "results")
    refuse_existing(output / f"detections_{args.case}", replace, "detections")


def _listed(text):
    return [item.strip() for item in text.split(",") if item.strip()]


# ----------------------------------------------------------------------------- models of the rows
class Models:
    """The detector of each row: the Keras preset in float32 / bfloat16, exports made once and shared."""

    def __init__(self, preset, folder, calibration, canvas, threads, reuse, overwrite):
        self.preset, self.folder, self.calibration = preset, Path(folder), calibration
        self.canvas, self.threads, self.reuse, self.overwrite = canvas, threads, reuse, overwrite
        self.keras = {}
        self.exports = {}  # folder name -> (path, seconds to export or None if reused)

    def detector(self, precision="float32"):
        from gflv2_keras import GFLV2Detector

        if precision not in self.keras:
            dtype = "mixed_bfloat16" if precision == "bfloat16" else None
            self.keras[precision] = GFLV2Detector.from_preset(str(self.preset), **({"dtype": dtype} if dtype else {}))
        return self.keras[precision]

    def model(self, row):
        """``(model, facts)``: an object with ``detect(image)`` and the row's canvas, file size, export time."""
        variant = row.variant
        if variant.fmt is None:
            return self.detector(variant.precision), {"canvas": "per-image (official)"}
        from gflv2_keras.export.runtimes import load_exported

        path, seconds = self.export(variant, row.keep_float)
        model = load_exported(path, threads=self.threads, precision=variant.precision)
        canvas = ("per-image (official)" if model.canvas == "per_image"
                  else f"fixed {model.height}x{model.width}, letterboxed")  # fmt: skip
        size = sum(f.stat().st_size for f in path.iterdir() if f.suffix in (".onnx", ".bin", ".tflite", ".xml"))
        return model, {"canvas": canvas, "MiB": round(size / 2**20, 2), "export_s": seconds}

    def export(self, variant, keep_float):
        from gflv2_keras.export.formats import export_portable
        from gflv2_keras.export.graph import DYNAMIC

        dynamic = self.canvas == "per-image" and variant.fmt in DYNAMIC_SIZE_FORMATS
        name = f"{variant.fmt}_{variant.weights}_{'per-image' if dynamic else 'fixed'}"
        if variant.calibrated and keep_float != "none":
            name += f"_float-{keep_float}"
        if name in self.exports:
            return self.exports[name]
        path = self.folder / name
        if self.reuse and (path / "export.json").is_file():
            self.exports[name] = (path, None)
            return self.exports[name]
        start = time.perf_counter()
        export_portable(self.detector(), variant.fmt, path, input_size=DYNAMIC if dynamic else None,
                        weights=variant.weights, overwrite=self.overwrite,
                        calibration=self.calibration if variant.calibrated else None,
                        keep_float=keep_float_groups(keep_float) if variant.calibrated else None)  # fmt: skip
        self.exports[name] = (path, round(time.perf_counter() - start, 1))
        return self.exports[name]


# ----------------------------------------------------------------------------- the measurement
def measure(args):
    from gflv2_keras.export.calibration import calibration_images

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    rows = rows_of(_listed(args.variants), _listed(args.keep_float))
    started, load_before = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), os.getloadavg()
    if args.case == "demo":
        preset, data, source = demo_preset(args, output)
    else:
        data = demo_data(args, output)
        preset, source = converted_preset(args, output)
    needs_calibration = any(row.variant.calibrated for row in rows)
    count = args.calibration_images or DEFAULT_CALIBRATION[args.case]
    calibration = calibration_images(data / "annotations" / "train.json", count=count,
                                     image_dir=data / "train") if needs_calibration else None  # fmt: skip
    models = Models(preset, output / "exports", calibration, args.canvas, args.threads, args.reuse, args.overwrite)
    detections_dir = output / f"detections_{args.case}"
    detections_dir.mkdir(parents=True, exist_ok=True)
    if args.case == "demo":
        run = DemoRun(data)
    else:
        run = ParityRun(data, args.images)
    table = {}
    for row in rows:
        model, facts = models.model(row)
        start = time.perf_counter()
        found, scores = run.detections(model, detections_dir / f"{_file_name(row.name)}.json")
        seconds = time.perf_counter() - start
        table[row.name] = {**scores, **facts, "detections": found, "s_per_image": round(seconds / run.num_images, 3)}
        print(f"{row.name}: {_summary(scores)} ({facts['canvas']}; {seconds / run.num_images:.2f} s/image)", flush=True)
        del model
    if args.case == "parity" and source.get("reference_model") is not None:
        path = detections_dir / f"{TORCH_ROW}.json"
        found = run.torch_detections(source.pop("reference_model"), models.detector(), path)
        table[TORCH_ROW] = {"canvas": "per-image (official), the same normalised input as tf", "detections": found}
    reference = table[REFERENCE_ROW]["detections"]
    for name, row in table.items():
        found = row.pop("detections")
        for key, min_score in (("all", 0.0), ("confident", CONFIDENT)):
            hits, total = _count(reference, found, min_score)
            row[f"reproduced_{key}"] = [hits, total]
        row["num_detections"] = len(found)
    result = {
        "case": args.case,
        "source": source,
        "calibration_images": None if calibration is None else {"count": len(calibration), "from": calibration.source},
        "match": {"iou": MATCH_IOU, "confident": CONFIDENT, "reference": REFERENCE_ROW},
        "machine": machine_facts(args.threads, started, load_before),
        "table": table,
    }
    (output / f"results_{args.case}.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    print(markdown(table, args.case))


def _count(reference, found, min_score):
    from gflv2_keras.evaluation.matching import count_reproduced

    return count_reproduced(reference, found, min_score=min_score, iou_threshold=MATCH_IOU)


def _file_name(name):
    return name.replace(" ", "_").replace(":", "").replace("(", "").replace(")", "").replace("+", "-")


def _summary(scores):
    return f"AP {scores['AP']:.4f} AP50 {scores['AP50']:.4f}" if "AP" in scores else "detections written"


def demo_preset(args, output):
    """``(preset folder, data folder, source facts)`` of the demo case."""
    if args.preset:
        return Path(args.preset), Path(args.data), {"preset": str(args.preset), "demo_AP": None}
    data = Path(args.data) if args.data else output / "data"
    preset = output / "work_dir" / "preset"
    if args.reuse:
        if not (preset / "config.json").is_file():
            raise ValueError(f"--reuse: no trained demo preset in {preset}; run without --reuse first")
        return preset, data, {"preset": str(preset), "demo_AP": None, "epochs": "reused"}
    from gflv2_keras.training.demo import run_demo

    summary = run_demo(output, epochs=args.epochs, overwrite=args.overwrite)
    return Path(summary["preset_dir"]), output / "data", {"preset": summary["preset_dir"], "demo_AP": summary["AP"],
                                                          "epochs": args.epochs}  # fmt: skip


def demo_data(args, output):
    """The demo data folder: ``--data``, or the demo's synthetic dataset in ``OUTPUT/data`` (written if missing)."""
    if args.data:
        data = Path(args.data)
        if not (data / "annotations" / "val.json").is_file():
            raise ValueError(f"--data {data}: no annotations/val.json (a demo data folder is expected)")
        return data
    from gflv2_keras.data.synthetic import make_synthetic_coco
    from gflv2_keras.training.demo import DEMO_DATA

    data = output / "data"
    if not (data / "annotations" / "val.json").is_file():
        make_synthetic_coco(str(data), **DEMO_DATA)
    return data


def converted_preset(args, output):
    """``(preset folder, source facts)``: ``--checkpoint`` or the PyTorch reference model, converted.

    With the reference model, ``source["reference_model"]`` holds it (float64, eval mode) for the
    PyTorch row; it is taken out before the results are written.
    """
    from gflv2_keras.convert import convert_checkpoint
    from gflv2_keras.presets import PRESETS

    if args.parity_preset not in PRESETS:
        raise ValueError(f"--parity-preset {args.parity_preset!r}: not a preset name")
    converted = output / "converted"
    source = {"architecture": args.parity_preset}
    model = None
    if args.checkpoint:
        checkpoint = Path(args.checkpoint)
        source["weights"] = f"official checkpoint {checkpoint.name}"
    else:
        import torch

        sys.path.insert(0, str(TESTS_DIR))  # the independent reference implementation of the tests
        from torch_reference import gflv2_torch as ref

        config = PRESETS[args.parity_preset]["config"]
        model = ref.build_reference(config, seed=0, dtype=torch.float64)
        checkpoint = output / "reference.pth"
        if not (args.reuse and checkpoint.is_file()):
            from gflv2_keras.utils.files import refuse_existing

            refuse_existing(checkpoint, args.overwrite, "reference checkpoint")
            names = config.get("class_names") or [f"class_{i}" for i in range(config["num_classes"])]
            ref.save_checkpoint(model, checkpoint, meta=ref.official_meta(names))
        source["weights"] = ("the PyTorch reference model of tests/torch_reference (random weights: "
                             "torch_reference.gflv2_torch.build_reference(config, seed=0)), saved as an official "
                             "checkpoint")  # fmt: skip
    if not (args.reuse and (converted / "config.json").is_file()):
        convert_checkpoint(checkpoint, args.parity_preset, converted, log=lambda *_: None, overwrite=args.overwrite)
    source.update(converted=str(converted), checkpoint=str(checkpoint), reference_model=model)
    return converted, source


class DemoRun:
    """The demo's held-out split: COCO results of a model, scored with COCOeval."""

    def __init__(self, data):
        self.annotations, self.images = data / "annotations" / "val.json", data / "val"
        self.num_images = len(json.loads(self.annotations.read_text())["images"])

    def detections(self, model, path):
        from gflv2_keras.evaluation.coco_evaluator import evaluate

        scores = evaluate(model, self.annotations, self.images, output_json=path, progress=False, verbose=False)
        return json.loads(path.read_text()), {"AP": round(scores["AP"], 4), "AP50": round(scores["AP50"], 4)}


class ParityRun:
    """The first ``count`` held-out demo images, run by a model of any class set (no ground truth, no AP)."""

    def __init__(self, data, count):
        from gflv2_keras.data.coco import load_coco
        from gflv2_keras.data.image_io import read_record_image

        dataset = load_coco(data / "annotations" / "val.json", data / "val", for_training=False, verbose=False)
        self.records = dataset.records[:count]
        self.pixels = [read_record_image(record) for record in self.records]
        self.num_images = len(self.records)

    def detections(self, model, path):
        found = []
        for record, image in zip(self.records, self.pixels):
            out = model.detect(image, bounding_box_format="xyxy")
            found += coco_results(record["image_id"], out["boxes"], out["confidence"], out["labels"])
        path.write_text(json.dumps(found))
        return found, {}

    def torch_detections(self, model, detector, path):
        """The PyTorch reference's float64 forward and post-processing on ``detector``'s normalised canvases."""
        import torch

        from torch_reference import gflv2_torch as ref

        from gflv2_keras.models.preprocessing import canvas_size, preprocess_images

        config, found = detector.test_config, []
        for record, image in zip(self.records, self.pixels):
            canvas = canvas_size(image.shape[0], image.shape[1], detector.input_scale)
            inputs, info = preprocess_images(image[None], detector.input_scale, canvas=canvas)
            x = torch.from_numpy(np.asarray(inputs, np.float64).transpose(0, 3, 1, 2).copy())
            with torch.no_grad():
                levels = model(x)
            boxes, scores, labels = ref.postprocess(
                levels, np.asarray(info["image_shape"])[0], np.asarray(info["scale_factor"])[0], detector.num_classes,
                nms_pre=config["nms_pre"], score_thr=config["score_threshold"], iou_thr=config["iou_threshold"],
                max_per_img=config["max_detections"],
            )  # fmt: skip
            found += coco_results(record["image_id"], boxes, scores, labels)
        path.write_text(json.dumps(found))
        return found


def coco_results(image_id, boxes, scores, labels):
    """COCO result dicts of one image's xyxy pixel ``boxes`` (category id: the class index)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    return [{"image_id": int(image_id), "category_id": int(label),
             "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])], "score": float(score)}
            for b, score, label in zip(boxes, np.asarray(scores).reshape(-1), np.asarray(labels).reshape(-1))
            if label >= 0]  # fmt: skip


def machine_facts(threads, started, load_before):
    import platform

    from gflv2_keras.evaluation.benchmark import cpu_model

    versions = {}
    for module in ("tensorflow", "keras", "onnxruntime", "openvino", "nncf", "ai_edge_litert", "torch"):
        try:
            versions[module] = getattr(__import__(module), "__version__", "?")
        except ImportError:
            versions[module] = None
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next(line for line in f if line.startswith("flags")).split(":", 1)[1].split())
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu_model(), "cpus": os.cpu_count(), "threads": threads, "python": platform.python_version(),
            "isa": sorted(flags & {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"}),
            "versions": versions, "started": started, "load_before": [round(v, 1) for v in load_before],
            "load_after": [round(v, 1) for v in os.getloadavg()]}  # fmt: skip


def markdown(table, case):
    """The results as one markdown table (demo: with AP, AP50 and their change from ``tf-float32``)."""
    scored = case == "demo"
    base = table[REFERENCE_ROW]
    head = ("| row | canvas |" + (" AP | AP50 | Δ AP | Δ AP50 |" if scored else "")
            + " detections | tf float32's reproduced: all | score >= 0.3 |")  # fmt: skip
    lines = [head, "|---|---|" + ("---:|---:|---:|---:|" if scored else "") + "---:|---:|---:|"]
    for name, row in table.items():
        shares = [f"{h / t:.1%} ({h}/{t})" if t else "–"
                  for h, t in (row["reproduced_all"], row["reproduced_confident"])]  # fmt: skip
        scores = ""
        if scored:
            scores = (f" {row['AP']:.4f} | {row['AP50']:.4f} | {row['AP'] - base['AP']:+.4f} | "
                      f"{row['AP50'] - base['AP50']:+.4f} |")  # fmt: skip
        lines.append(f"| {name} | {row['canvas']} |{scores} {row['num_detections']} | {shares[0]} | {shares[1]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
