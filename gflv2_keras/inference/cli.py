"""``gflv2 predict IMAGE_OR_FOLDER... --preset NAME|DIR | --model EXPORT --output DIR``.

Per image it writes ``STEM.jpg`` (boxes drawn) and ``STEM.json``::

    {"file", "height", "width", "box_format": "xyxy, original image pixels",
     "detections": [{"box": [x1, y1, x2, y2], "confidence", "label", "class_name"}, ...]}

Images are read by the library's one reader (``data.image_io``): the "original image" is the
displayed frame (EXIF orientation applied), as every viewer shows the photo; ``height`` and
``width`` are its size. An image the preset's keep-ratio resize would shrink to nothing (a side
under 1 px, ``image_io.resize_problem``) is skipped and named, like an unreadable one.

The input images are never written over: an output folder that is (or lies inside) an input
folder, or an output file (picture, JSON or explanation) that would be an input image (symbolic
links followed) is refused before anything is written, with or without ``--overwrite``.

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

``--model`` runs any export ``gflv2 export`` writes in its own runtime
(``gflv2_keras.export.runtimes``): an ONNX / LiteRT / OpenVINO folder or its model file, or a
SavedModel (its version folder, or the ``--output`` base folder: the highest version); pictures
and JSON are the same as with a preset.

``--runtime onnxruntime|openvino|litert|auto`` runs the ``--preset`` in another runtime
(exported once into ``--cache-dir``; ``auto``: the fastest installed one that keeps TensorFlow's
detections, measured on the first image and cached per model, precision and machine), with
``--precision`` (``int8``: calibrated on ``--calibration-data``): ``inference.runtime_choice``,
``docs/runtimes.md``.
"""

import json
import os
import sys
from argparse import RawDescriptionHelpFormatter
from pathlib import Path

from gflv2_keras.inference.images import (
    ImageReadError,
    collect_image_paths,
    read_image,
    resize_problem,
    set_max_image_pixels,
)
from gflv2_keras.inference.runtime_options import (
    add_runtime_arguments,
    check_runtime_options,
    compile_from_args,
    first_image,
    tf_precision,
)
from gflv2_keras.models.precision import PRECISIONS
from gflv2_keras.utils.files import atomic_write
from gflv2_keras.utils.locks import hold_folder, releases_locks


def register(subparsers):
    parser = subparsers.add_parser("predict", description=__doc__, formatter_class=RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="image files and/or folders of images")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help="preset name (see `gflv2 presets`) or preset folder")
    source.add_argument("--model", help="an export of `gflv2 export`: an onnx/litert/openvino folder or its "
                        "model file, or a SavedModel (version folder, or the base folder: its highest version)")
    parser.add_argument(
        "--output",
        default="predictions",
        help="output folder (default: ./predictions); never an input folder nor one where an output would replace an "
        "input image",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace output files (STEM.jpg, STEM.json, STEM_explain.png) already in --output"
    )
    parser.add_argument(
        "--max-image-pixels",
        type=int,
        help="largest image (width x height) decoded; larger ones are skipped (default: Pillow's 89,478,485)",
    )
    parser.add_argument("--draw-threshold", type=float, default=0.3, help="smallest score drawn (default 0.3)")
    parser.add_argument("--hide-labels", action="store_true", help="draw the boxes without labels")
    parser.add_argument("--hide-conf", action="store_true", help="labels name the class without the score")
    parser.add_argument(
        "--random-weights", action="store_true", help="do not load weights (smoke-testing a preset without weights)"
    )
    add_runtime_arguments(parser)
    parser.add_argument("--box-uncertainty", action="store_true",
                        help="add each box's classification, quality and per-side uncertainty to the JSON and draw "
                        "+-1 std bands across the edges (--preset with --runtime tf only)")
    parser.add_argument("--box-distributions", action="store_true",
                        help="with --box-uncertainty: also write each side's full bin distribution")
    parser.add_argument("--explain", type=int, metavar="INDEX",
                        help="write STEM_explain.png: the side distributions of detection INDEX (0-based, --preset "
                        "with --runtime tf only)")
    parser.set_defaults(func=run, precheck=check_options)  # precheck: before TensorFlow loads


def check_options(args):
    """One-line ``UserError`` for options that cannot go together (before TensorFlow loads)."""
    from gflv2_keras.utils.cli import UserError

    check_runtime_options(args, model_flag=args.model)
    wants_distributions = args.box_uncertainty or args.box_distributions or args.explain is not None
    if wants_distributions and args.model:
        raise UserError(
            "--box-uncertainty, --box-distributions and --explain need --preset (exported runtimes output detections only)"
        )
    if wants_distributions and args.runtime != "tf":
        raise UserError(f"--box-uncertainty, --box-distributions and --explain need --runtime tf, not {args.runtime} "
                        "(exported runtimes output detections only)")  # fmt: skip
    if args.explain is not None and args.explain < 0:
        raise UserError(f"--explain must be a detection index >= 0, got {args.explain}")


@releases_locks  # the --output folder's lock (utils.locks) is held until the command ends
def run(args):
    from gflv2_keras.utils.cli import UserError

    check_options(args)
    if args.max_image_pixels is not None:
        set_max_image_pixels(args.max_image_pixels)
    paths, problems = collect_image_paths(args.inputs)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if not paths:
        raise UserError("no images to process")
    output = Path(args.output)
    stems = plan_output_stems(paths)
    suffixes = (".jpg", ".json") + (("_explain.png",) if args.explain is not None else ())
    check_output_folder(args.inputs, paths, output, stems, args.overwrite, suffixes)
    hold_folder(output, "--output")  # one run per output folder; checked again: a run may have ended meanwhile
    check_output_folder(args.inputs, paths, output, stems, args.overwrite, suffixes)

    from gflv2_keras.inference.draw import draw_detections, draw_side_bands, draw_side_distributions

    uncertainty = args.box_uncertainty or args.box_distributions
    wants_distributions = uncertainty or args.explain is not None
    detector = _load(args, paths)
    names = detector.class_names
    # Keep-ratio presets only; an export resizes to its fixed input size, which any image fits.
    scale = getattr(detector, "input_scale", None)
    output.mkdir(parents=True, exist_ok=True)
    processed, skipped = 0, 0
    for index, (path, stem) in enumerate(zip(paths, stems), 1):
        try:
            loaded = read_image(path)
            problem = resize_problem(*loaded.pixels.shape[:2], scale) if scale else None
            if problem:
                raise ImageReadError(path, problem)
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
        shown = draw_side_bands(loaded.pixels, detections, args.draw_threshold) if uncertainty else loaded.pixels
        picture = draw_detections(shown, detections, names, args.draw_threshold,
                                  hide_labels=args.hide_labels, hide_conf=args.hide_conf)
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
                explained = draw_side_distributions(one, title)
                atomic_write(output / f"{stem}_explain.png", lambda f: explained.save(f, "PNG"))
            else:
                print(f"[{index}/{len(paths)}] note: {path}: --explain {args.explain}: only "
                      f"{len(detections['boxes'])} detections, no explanation written")  # fmt: skip
        # Each file appears complete or not at all, even if the run is interrupted.
        atomic_write(output / f"{stem}.jpg", lambda f: picture.save(f, "JPEG", quality=92))
        atomic_write(output / f"{stem}.json", lambda f: f.write(json.dumps(record, indent=1).encode()))
        processed += 1
        print(f"[{index}/{len(paths)}] {path}: {len(detections['boxes'])} detections -> {output / stem}.jpg/.json")
    problem_count = skipped + len(problems)
    print(f"done: {processed} of {len(paths)} images processed, {problem_count} problem(s)")
    return 1 if problem_count else 0


def plan_output_stems(paths):
    """One distinct output stem per input path (``a``, ``a_2``, ... for equal file stems)."""
    used, stems = set(), []
    for path in paths:
        stems.append(_unique_stem(Path(path).stem, used))
    return stems


def check_output_folder(inputs, image_paths, output, stems, overwrite, suffixes=(".jpg", ".json")):
    """Refuses outputs that would write over an input, and existing outputs without ``overwrite``.

    Checked before anything is written (symbolic links resolved): ``output`` must not be a
    file, nor be (or lie inside) an input folder; no output file ``output/STEM+SUFFIX`` may be
    one of the input images, with or without ``overwrite`` (the same file through another
    spelling or a case-insensitive file system counts too). Other existing output files are
    replaced only with ``overwrite``.

    Args:
        inputs: the command's input arguments (files and folders).
        image_paths: the image files found in them (``collect_image_paths``).
        output: the output folder.
        stems: the output stem of each image (``plan_output_stems``).
        suffixes: what is written per stem.

    Raises:
        UserError: one line naming the folder or the file (the first three existing files).
    """
    from gflv2_keras.utils.cli import UserError

    try:
        target = output.resolve()
    except (RuntimeError, OSError) as error:  # a symbolic link loop (RuntimeError before Python 3.13)
        raise UserError(f"--output {output}: cannot follow its symbolic links ({error})") from None
    if target.exists() and not target.is_dir():
        raise UserError(f"--output {output} is a file, not a folder")
    for item in inputs:
        try:
            folder = Path(item).resolve()
        except (RuntimeError, OSError):
            continue  # a link loop: reported by collect_image_paths, gives no image
        if folder.is_dir() and (target == folder or folder in target.parents):
            raise UserError(
                f"--output {output} is inside the input folder {item}: the pictures would mix with (or replace) "
                "your images; choose an output folder outside the inputs"
            )
    by_location = {Path(path).resolve(): path for path in image_paths}
    by_inode = {_inode(location): path for location, path in by_location.items() if _inode(location)}
    planned = [output / f"{stem}{suffix}" for stem in stems for suffix in suffixes]
    for path in planned:
        # os.replace swaps the folder entry itself, so the entry's own location (not a link's target) counts.
        location = target / path.name
        image = by_location.get(location) or by_inode.get(_inode(location))
        if image is not None:
            raise UserError(
                f"--output {output}: {path} would be written over the input image {image}; "
                "choose an output folder that holds none of the input images"
            )
    existing = [p for p in planned if p.exists()]
    if existing and not overwrite:
        shown = ", ".join(str(p) for p in existing[:3]) + (" ..." if len(existing) > 3 else "")
        raise UserError(f"{len(existing)} output file(s) already exist ({shown}); pass --overwrite to replace them")


def _inode(path):
    """``(device, inode)`` of the folder entry ``path`` itself (a link is not followed), or ``None``."""
    try:
        status = os.lstat(path)
    except OSError:
        return None
    return status.st_dev, status.st_ino


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


def _load(args, paths):
    """A ``GFLV2Detector`` (``--preset``), the ``CompiledDetector`` of ``--runtime`` (its probe: the
    first readable image of ``paths``) or an ``ExportedDetector`` (``--model``: any export, the
    SavedModel folder included); all ``detect``."""
    if args.model:
        from gflv2_keras.export.runtimes import load_exported

        return load_exported(args.model)
    from gflv2_keras import GFLV2Detector

    detector = GFLV2Detector.from_preset(
        args.preset, load_weights=not args.random_weights, dtype=PRECISIONS[tf_precision(args)]
    )
    return compile_from_args(detector, args, probe=lambda: first_image(paths, lambda path: read_image(path).pixels))


def _unique_stem(stem, used):
    """``stem``, or ``stem_2``, ``stem_3`` ... if already in ``used`` (which it is added to)."""
    candidate, n = stem, 1
    while candidate in used:
        n += 1
        candidate = f"{stem}_{n}"
    used.add(candidate)
    return candidate
