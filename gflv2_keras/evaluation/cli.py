"""``gflv2 evaluate``: COCO bbox AP (and a per-class table) of a preset on annotated images.

Ground truth in any layout ``data.formats`` reads: ``--data PATH`` (COCO JSON, Pascal VOC root,
YOLO ``data.yaml``; ``--split`` for VOC / YOLO, ``--images`` for COCO / VOC), or the COCO form
``--annotations FILE --images DIR``. Classes are matched to the preset's by name (any order, any
category ids; ``data.class_map``): a class of the data that the preset lacks is one error line,
the preset's classes absent from the data are not scored. Problems found in the ground truth
(missing or unreadable images, unknown categories, duplicate ids, degenerate boxes and boxes outside the image) are
reported before the score; a run that can score nothing (no readable image, or no ground-truth
box in the readable ones) ends with one error line and exit code 2 instead of an AP of 0.
``--output`` writes the detections, and the metrics (12 COCO numbers, per-class table) go to
``--metrics`` (default: beside ``--output`` as ``*_metrics.json``). Beside the metrics (or in
``--plots-dir``) go the pictures: ``pr_curves.png`` (precision-recall per class and for all classes at
IoU 0.50 and 0.50:0.95), ``confusion_matrix.png`` (classes + background at
``--iou-threshold`` / ``--score-threshold``) and ``examples/`` (the ``--examples`` worst and best
images, ground truth and predictions side by side); ``--no-plots`` skips them. Existing files are
replaced only with ``--overwrite`` (checked before anything runs); all are written atomically.
The COCOeval implementation is faster-coco-eval when installed, else pycocotools (``--coco-backend``).
``--runtime onnxruntime|openvino|litert|auto`` (with ``--precision``, ``int8`` calibrated on
``--calibration-data``) runs the preset in another runtime, exported once into ``--cache-dir``
(``auto``: the fastest that keeps TensorFlow's detections, measured on the first image;
``docs/runtimes.md``); the metrics JSON records what ran (``"runtime"``).
"""

import argparse

from gflv2_keras.evaluation.backend import BACKENDS
from gflv2_keras.evaluation.coco_evaluator import IOU_THRESHOLD, NUM_EXAMPLES, SCORE_THRESHOLD
from gflv2_keras.inference.runtime_options import (
    add_runtime_arguments,
    check_runtime_options,
    compile_from_args,
    first_image,
    tf_precision,
)
from gflv2_keras.models.precision import PRECISIONS
from gflv2_keras.utils.arguments import existing_path
from gflv2_keras.utils.locks import hold_folder, releases_locks

SHOWN_PROBLEMS = 10


def register(subparsers):
    parser = subparsers.add_parser("evaluate", description=__doc__)
    parser.add_argument("--preset", required=True, help="preset name (weights in the preset home) or preset folder")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", type=existing_path,
                        help="ground truth: COCO JSON, Pascal VOC root or YOLO data.yaml / folder")
    source.add_argument("--annotations", type=existing_path, help="COCO annotation JSON (e.g. instances_val2017.json)")
    parser.add_argument("--split", default="val", help="VOC / YOLO split (default val)")
    parser.add_argument("--images", help="image folder (COCO: default the JSON's folder; VOC: default JPEGImages)")
    parser.add_argument("--output", help="write the detections (COCO results JSON) here")
    parser.add_argument("--metrics", help="write the metrics and per-class table (JSON) here")
    parser.add_argument("--max-images", type=int, help="evaluate the first N images only")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace existing --output / --metrics files and pictures")
    parser.add_argument("--plots", action=argparse.BooleanOptionalAction, default=True,
                        help="write pr_curves.png, confusion_matrix.png and examples/ beside the metrics (default on)")
    parser.add_argument("--plots-dir", help="folder of the pictures (default: the --metrics file's folder)")
    parser.add_argument("--examples", type=int, default=NUM_EXAMPLES,
                        help=f"how many worst and best images to draw in examples/ (default {NUM_EXAMPLES}; 0: none)")
    parser.add_argument("--score-threshold", type=float, default=SCORE_THRESHOLD,
                        help="smallest score counted by the confusion matrix and the examples "
                        f"(default {SCORE_THRESHOLD})")
    parser.add_argument("--iou-threshold", type=float, default=IOU_THRESHOLD,
                        help="smallest IoU of a match in the confusion matrix and the examples "
                        f"(default {IOU_THRESHOLD})")
    parser.add_argument("--coco-backend", choices=BACKENDS, default="auto",
                        help="COCOeval implementation (default auto: faster-coco-eval when installed, "
                        "else pycocotools)")
    add_runtime_arguments(parser)
    parser.set_defaults(func=run, precheck=check_options)  # precheck: before TensorFlow loads


@releases_locks  # the output folders' locks (utils.locks) are held until the command ends
def run(args):
    import json
    import os

    from gflv2_keras.data.class_map import match_detector_classes
    from gflv2_keras.data.coco import check_image_files
    from gflv2_keras.data.formats import load_detection_dataset
    from gflv2_keras.data.image_io import read_record_image
    from gflv2_keras.data.records import leave_out_unresizable
    from gflv2_keras.evaluation.backend import choose_backend
    from gflv2_keras.evaluation.coco_evaluator import evaluate, format_results
    from gflv2_keras.evaluation.plots import check_plot_paths
    from gflv2_keras.utils.cli import stdout_is_terminal
    from gflv2_keras.utils.files import atomic_write, refuse_existing

    check_options(args)
    choose_backend(args.coco_backend)  # faster-coco-eval asked for and missing: one line, before anything runs
    path = args.data or args.annotations
    if args.images is not None and not os.path.isdir(args.images):
        raise ValueError(f"image folder {args.images} does not exist")
    dataset = load_detection_dataset(path, args.split, images=args.images, for_training=False)
    if not dataset.records:
        raise ValueError(f"{dataset.annotation_file}: no image to evaluate")
    metrics = args.metrics or (os.path.splitext(args.output)[0] + "_metrics.json" if args.output else None)
    for path, flag in ((args.output, "--output"), (metrics, "--metrics")):
        if path:
            refuse_existing(path, args.overwrite, f"{flag} file")
    plots_dir = None
    if args.plots:
        plots_dir = args.plots_dir or (os.path.dirname(os.path.abspath(metrics)) if metrics else None)
        if plots_dir:
            check_plot_paths(plots_dir, args.overwrite)
    written = {os.path.dirname(os.path.abspath(p)) for p in (args.output, metrics) if p}
    written |= {plots_dir} if plots_dir else set()
    for folder in sorted({os.path.abspath(f) for f in written}):  # one evaluation writing in a folder at a time
        hold_folder(folder, "output folder (--output, --metrics, --plots-dir)")
    check_image_files(dataset)
    require_scorable(dataset, args.max_images)  # before the detector is loaded; again once thin images are out
    detector = load_detector(args.preset, PRECISIONS[tf_precision(args)])
    for line in match_detector_classes(detector, dataset).notes():  # by name; data classes it lacks: one line
        print(f"[evaluate] {line}")
    leave_out_unresizable(dataset, detector.input_scale)  # at the preset's own scale
    report_problems(dataset, metrics)
    require_scorable(dataset, args.max_images)
    scored = dataset.records if args.max_images is None else dataset.records[: args.max_images]
    detector = compile_from_args(detector, args, probe=lambda: first_image(
        [r for r in scored if r["image_id"] not in dataset.unreadable], read_record_image))  # auto's probe
    results = evaluate(detector, dataset, output_json=args.output, max_images=args.max_images, verbose=False,
                       progress=stdout_is_terminal(),  # no progress bar's control codes in a log file
                       backend=args.coco_backend, plots_dir=plots_dir, overwrite_plots=args.overwrite,
                       num_examples=args.examples, iou_threshold=args.iou_threshold,
                       score_threshold=args.score_threshold)
    if not results["num_images"]:  # every image failed to decode while running: nothing was scored
        raise ValueError(f"{dataset.annotation_file}: no image could be read, nothing scored "
                         f"({dataset.problem_lines()[-1]})")
    print(f"COCO bbox on {results['num_images']} images ({results['num_detections']} detections, "
          f"{results['backend']}):")
    print("\n".join(format_results(results)))
    if args.output:
        print(f"detections written to {args.output}")
    if "plots" in results:
        examples = results["plots"]["example_images"]
        print(f"pictures written to {plots_dir}: pr_curves.png, confusion_matrix.png"
              + (f", examples/ ({len(examples['worst'])} worst, {len(examples['best'])} best images)"
                 if results["plots"]["examples"] else ""))
    elif args.plots:
        print("pictures not written: pass --metrics FILE or --plots-dir DIR to get them (or --no-plots)")
    if metrics:
        os.makedirs(os.path.dirname(os.path.abspath(metrics)), exist_ok=True)
        ran = {"runtime": getattr(detector, "runtime", "tf"), "precision": args.precision,
               "reason": getattr(detector, "reason", "--runtime tf")}  # fmt: skip
        record = {"data": dataset.annotation_file, "preset": args.preset, "runtime": ran,
                  "problems": dataset.problem_lines(), **results}  # fmt: skip
        atomic_write(metrics, lambda f: f.write(json.dumps(record, indent=2).encode()))
        print(f"metrics and per-class table written to {metrics}")
    return 0


def check_options(args):
    """One ``ValueError`` line for an option out of its range or options that cannot go together (before
    anything runs)."""
    check_runtime_options(args)
    if not 0.0 <= args.score_threshold <= 1.0:
        raise ValueError(f"--score-threshold must be between 0 and 1, got {args.score_threshold}")
    if not 0.0 < args.iou_threshold <= 1.0:
        raise ValueError(f"--iou-threshold must be above 0 and at most 1, got {args.iou_threshold}")
    if args.examples < 0:
        raise ValueError(f"--examples must be 0 or more, got {args.examples}")
    if args.max_images is not None and args.max_images < 1:
        raise ValueError(f"--max-images must be 1 or more, got {args.max_images}")


def require_scorable(dataset, max_images=None):
    """``ValueError`` in one line when the images to score (the first ``max_images``) hold nothing to score.

    A run that can score nothing must not print AP 0 and succeed: refused when none of those
    images has a readable file (the line names how many are missing, the first one and the
    image folder), and when none of the readable ones has a ground-truth box (AP is undefined).
    """
    from gflv2_keras.data.records import require_readable_images

    records = dataset.records if max_images is None else dataset.records[:max_images]
    readable = [r for r in records if r["image_id"] not in dataset.unreadable]
    if not readable:
        if max_images is not None and dataset.usable_records():
            first = records[0]
            raise ValueError(
                f"{dataset.annotation_file}: none of the first {len(records)} images (--max-images) is readable, "
                f"first: image id {first['image_id']} ({first['file_name']}): {dataset.unreadable[first['image_id']]}"
            )
        require_readable_images(dataset, "evaluation")
    if not any(len(r["labels"]) for r in readable):
        raise ValueError(f"{dataset.annotation_file}: the {len(readable)} readable images to score have no "
                         "ground-truth box (crowd / difficult regions do not count): AP is undefined")


def report_problems(dataset, metrics=None):
    """Prints the ground truth's problems (entries skipped or suspicious, unreadable images)."""
    problems = dataset.problem_lines()
    if not problems:
        return
    print(f"[evaluate] {len(problems)} problems in the ground truth {dataset.annotation_file}:")
    for line in problems[:SHOWN_PROBLEMS]:
        print(f"  {line}")
    if len(problems) > SHOWN_PROBLEMS:
        where = f"all of them are in {metrics}" if metrics else "pass --metrics FILE to list all of them"
        print(f"  ... {len(problems) - SHOWN_PROBLEMS} more ({where})")


def load_detector(preset, dtype="float32"):
    """The preset's detector with weights; a missing preset or weights is one ``ValueError`` line."""
    from gflv2_keras.models.detector import GFLV2Detector

    try:
        return GFLV2Detector.from_preset(preset, dtype=dtype)
    except FileNotFoundError as error:
        raise ValueError(" ".join(str(error).split("\n")[:2])) from None
