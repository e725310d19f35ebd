"""``gflv2 predict IMAGE_OR_FOLDER... --preset NAME|DIR | --model EXPORT --output DIR``.

Per image it writes ``STEM.jpg`` (boxes drawn) and ``STEM.json``::

    {"file", "height", "width", "box_format": "xyxy, original image pixels",
     "detections": [{"box": [x1, y1, x2, y2], "confidence", "label", "class_name"}, ...]}

The JSON boxes are always xyxy pixels of the original image, whatever the preset's
``bounding_box_format`` (a file format is fixed; the detector's format is a Python-API choice).
``label`` is the 0-based class id, ``class_name`` its name (``null`` without names).

``--model`` runs an ONNX / LiteRT / OpenVINO export (``gflv2 export --format ...``) in its own
runtime (``gflv2_keras.export.runtimes``); pictures and JSON are the same as with a preset.
"""

import json
import sys
from pathlib import Path

from gflv2_keras.models.precision import PRECISIONS, add_precision_argument
from gflv2_keras.inference.images import ImageReadError, collect_image_paths, read_image


def register(subparsers):
    parser = subparsers.add_parser("predict")
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help="preset name (see `gflv2 presets`) or preset folder")
    source.add_argument("--model", help="an exported model: folder or model file of `gflv2 export --format ...`")
    parser.add_argument("--output", default="predictions", help="output folder (default: ./predictions)")
    parser.add_argument("--draw-threshold", type=float, default=0.3, help="smallest score drawn (default 0.3)")
    parser.add_argument(
        "--random-weights", action="store_true", help="do not load weights (smoke-testing a preset without weights)"
    )
    add_precision_argument(parser)
    parser.set_defaults(func=run)


def run(args):
    paths, problems = collect_image_paths(args.inputs)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not paths:
        print("error: no images to process", file=sys.stderr)
        return 2

    from gflv2_keras.inference.draw import draw_detections

    try:
        detector = _load(args)
    except (FileNotFoundError, ValueError, RuntimeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    names = detector.class_names
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    processed, skipped = 0, 0
    used_stems = set()
    for index, path in enumerate(paths, 1):
        try:
            loaded = read_image(path)
        except ImageReadError as error:
            print(f"[{index}/{len(paths)}] skipped {error}", file=sys.stderr)
            skipped += 1
            continue
        for note in loaded.notes:
            print(f"[{index}/{len(paths)}] note: {path}: {note}")
        detections = detector.detect(loaded.pixels, bounding_box_format="xyxy")
        stem = _unique_stem(Path(path).stem, used_stems)
        draw_detections(loaded.pixels, detections, names, args.draw_threshold).save(output / f"{stem}.jpg", quality=92)
        record = {
            "file": str(path),
            "height": int(loaded.pixels.shape[0]),
            "width": int(loaded.pixels.shape[1]),
            "box_format": "xyxy, original image pixels",
            "detections": [
                {
                    "box": [round(float(v), 2) for v in box],
                    "confidence": round(float(score), 5),
                    "label": int(label),
                    "class_name": names[int(label)] if names else None,
                }
                for box, score, label in zip(detections["boxes"], detections["confidence"], detections["labels"])
            ],
        }
        (output / f"{stem}.json").write_text(json.dumps(record, indent=1))
        processed += 1
        print(f"[{index}/{len(paths)}] {path}: {len(detections['boxes'])} detections -> {output / stem}.jpg/.json")
    problem_count = skipped + len(problems)
    print(f"done: {processed} of {len(paths)} images processed, {problem_count} problem(s)")
    return 1 if problem_count else 0


def _load(args):
    """A ``GFLV2Detector`` (``--preset``) or an ``ExportedDetector`` (``--model``); both ``detect``."""
    if args.model:
        from gflv2_keras.export.runtimes import load_exported

        if args.precision != "float32":
            raise ValueError(f"--precision {args.precision} applies to --preset; an exported model keeps its own")
        return load_exported(args.model)
    from gflv2_keras import GFLV2Detector

    return GFLV2Detector.from_preset(
        args.preset, load_weights=not args.random_weights, dtype=PRECISIONS[args.precision]
    )


def _unique_stem(stem, used):
    candidate, n = stem, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}_{n}"
    used.add(candidate)
    return candidate
