"""``gflv2 predict IMAGE_OR_FOLDER... --preset NAME|DIR | --model EXPORT --output DIR``.

Per image it writes ``STEM.jpg`` (boxes drawn) and ``STEM.json``::

    {"file", "height", "width", "box_format": "xyxy, original image pixels",
     "detections": [{"box": [x1, y1, x2, y2], "confidence", "label", "class_name"}, ...]}

The JSON boxes are always xyxy pixels of the original image, whatever the preset's
``bounding_box_format`` (a file format is fixed; the detector's format is a Python-API choice).
``label`` is the 0-based class id, ``class_name`` its name (``null`` without names).

``--box-uncertainty`` adds to each detection what the head knew about its box (pixels of the
original image; ``docs/box_uncertainty.md``)::

    "classification": class probability, "quality": DGQP quality (GFLv2; confidence =
    classification x quality), "anchor_point": [x, y],
    "sides": {"left" | "top" | "right" | "bottom": {"offset": expected distance from the anchor
              point, "std": its standard deviation, "topk_mass": mass of the top-4 bins,
              "bin_width": one bin in pixels, "distribution": [reg_max + 1 bin probabilities]
              (only with --box-distributions)}}

and shades +-1 std across each drawn edge. ``--explain INDEX`` writes ``STEM_explain.png``, the
four side distributions of detection ``INDEX`` (0-based, in the JSON's order).

``--model`` runs an ONNX / LiteRT / OpenVINO export (``gflv2 export --format ...``) in its own
runtime (``gflv2_keras.export.runtimes``); pictures and JSON are the same as with a preset.
"""

import json
import sys
from pathlib import Path

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
    parser.add_argument("--box-uncertainty", action="store_true",
                        help="add each box's classification, quality and per-side uncertainty to the JSON and draw "
                        "+-1 std bands across the edges (--preset only)")
    parser.add_argument("--box-distributions", action="store_true",
                        help="with --box-uncertainty: also write each side's full bin distribution")
    parser.add_argument("--explain", type=int, metavar="INDEX",
                        help="write STEM_explain.png: the side distributions of detection INDEX (0-based, --preset only)")
    parser.set_defaults(func=run)


def run(args):
    paths, problems = collect_image_paths(args.inputs)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not paths:
        print("error: no images to process", file=sys.stderr)
        return 2

    from gflv2_keras.inference.draw import draw_detections, draw_side_bands, draw_side_distributions

    uncertainty = args.box_uncertainty or args.box_distributions
    wants_distributions = uncertainty or args.explain is not None
    if wants_distributions and args.model:
        print("error: --box-uncertainty, --box-distributions and --explain need --preset "
              "(exported runtimes output detections only)", file=sys.stderr)  # fmt: skip
        return 2
    if args.explain is not None and args.explain < 0:
        print(f"error: --explain must be a detection index >= 0, got {args.explain}", file=sys.stderr)
        return 2
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
        if wants_distributions:
            detections = detector.detect(loaded.pixels, bounding_box_format="xyxy", return_box_distributions=True)
        else:
            detections = detector.detect(loaded.pixels, bounding_box_format="xyxy")
        stem = _unique_stem(Path(path).stem, used_stems)
        shown = draw_side_bands(loaded.pixels, detections, args.draw_threshold) if uncertainty else loaded.pixels
        draw_detections(shown, detections, names, args.draw_threshold).save(output / f"{stem}.jpg", quality=92)
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
        if uncertainty:
            for i, entry in enumerate(record["detections"]):
                entry.update(_uncertainty_record(detections, i, args.box_distributions))
        if args.explain is not None:
            if args.explain < len(detections["boxes"]):
                one = {key: value[args.explain] for key, value in detections.items()}
                label = int(one["labels"])
                title = (f"#{args.explain} {names[label] if names else label}  confidence {one['confidence']:.3f}"
                         + (f" = {one['classification']:.3f} x quality {one['quality']:.3f}" if "quality" in one else ""))  # fmt: skip
                draw_side_distributions(one, title).save(output / f"{stem}_explain.png")
            else:
                print(f"[{index}/{len(paths)}] note: {path}: --explain {args.explain}: only "
                      f"{len(detections['boxes'])} detections, no explanation written")  # fmt: skip
        (output / f"{stem}.json").write_text(json.dumps(record, indent=1))
        processed += 1
        print(f"[{index}/{len(paths)}] {path}: {len(detections['boxes'])} detections -> {output / stem}.jpg/.json")
    problem_count = skipped + len(problems)
    print(f"done: {processed} of {len(paths)} images processed, {problem_count} problem(s)")
    return 1 if problem_count else 0


def _uncertainty_record(detections, i, with_distribution):
    """The ``--box-uncertainty`` JSON fields of detection ``i`` (see the module docstring)."""
    from gflv2_keras.ops.box_distributions import SIDES

    entry = {"classification": round(float(detections["classification"][i]), 5)}
    if "quality" in detections:
        entry["quality"] = round(float(detections["quality"][i]), 5)
    entry["anchor_point"] = [round(float(v), 2) for v in detections["anchor_points"][i]]
    sides = {}
    for s, name in enumerate(SIDES):
        side = {
            "offset": round(float(detections["side_offsets"][i, s]), 3),
            "std": round(float(detections["side_std"][i, s]), 3),
            "topk_mass": round(float(detections["side_topk_mass"][i, s]), 4),
            "bin_width": round(float(detections["bin_widths"][i, s]), 4),
        }
        if with_distribution:
            side["distribution"] = [round(float(p), 5) for p in detections["side_distributions"][i, s]]
        sides[name] = side
    entry["sides"] = sides
    return entry


def _load(args):
    """A ``GFLV2Detector`` (``--preset``) or an ``ExportedDetector`` (``--model``); both ``detect``."""
    if args.model:
        from gflv2_keras.export.runtimes import load_exported

        return load_exported(args.model)
    from gflv2_keras import GFLV2Detector

    return GFLV2Detector.from_preset(args.preset, load_weights=not args.random_weights)


def _unique_stem(stem, used):
    candidate, n = stem, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}_{n}"
    used.add(candidate)
    return candidate
