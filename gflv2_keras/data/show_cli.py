"""``gflv2 show-data --data PATH [--output DIR]``: look at the ground truth before training on it.

Reads a split in any layout ``gflv2 train`` and ``gflv2 evaluate`` read (``--data``: COCO JSON,
Pascal VOC root, YOLO ``data.yaml``; ``--split`` for VOC / YOLO, ``--images`` for COCO / VOC)
and writes into ``--output``:

- ``labels.png``: boxes per class, box width and height (fractions of the image side), aspect
  ratios and where the box centres lie (``data.show``);
- ``ground_truth/NN_STEM.jpg``: ``--num-images`` images chosen with ``--seed``, their boxes drawn
  with class names (ignored objects, VOC difficult / COCO crowd, in grey).

Problems the reader found (entries skipped or suspicious) are listed before. The output folder
is never the data's own folder (nor inside it), and an existing ``labels.png`` or
``ground_truth/`` is replaced only with ``--overwrite`` (checked before anything is read).
"""

import os
import sys
from pathlib import Path

SHOWN_PROBLEMS = 10


def register(subparsers):
    from gflv2_keras.data.show import NUM_IMAGES
    from gflv2_keras.utils.arguments import add_seed_argument, existing_dir, existing_path, non_negative_int

    parser = subparsers.add_parser("show-data", description=__doc__)
    parser.add_argument("--data", required=True, type=existing_path,
                        help="ground truth: COCO JSON, Pascal VOC root or YOLO data.yaml / folder")
    parser.add_argument("--split", default="train",
                        help="VOC / YOLO split (default train; COCO: the JSON is the split)")
    parser.add_argument("--images", type=existing_dir,
                        help="image folder (COCO: default the JSON's folder; VOC: default JPEGImages)")
    parser.add_argument("--output", default="show_data",
                        help="output folder (default ./show_data); never the data's folder nor inside it")
    parser.add_argument("--num-images", type=non_negative_int, default=NUM_IMAGES, metavar="N",
                        help=f"images drawn with their boxes (default {NUM_IMAGES}; 0: labels.png only)")
    add_seed_argument(parser, "which images are drawn (default 0)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace labels.png and ground_truth/ already in --output")
    parser.set_defaults(func=run, precheck=precheck)


def precheck(args):
    """The checks that need no TensorFlow (``gflv2`` runs them first): values, paths, the output folder."""
    from gflv2_keras.data.show import check_output_paths
    from gflv2_keras.utils.cli import UserError

    if args.num_images < 0:  # also checked while parsing; here for callers of run(args)
        raise UserError(f"--num-images must be 0 or more, got {args.num_images}")
    if not os.path.exists(args.data):
        raise UserError(f"--data {args.data} does not exist")
    if args.images is not None and not os.path.isdir(args.images):
        raise UserError(f"--images {args.images} is not a folder")
    check_output_folder(Path(args.output), data_folders(args))
    check_output_paths(Path(args.output), args.overwrite)


def data_folders(args, dataset=None):
    """The folders of the data: ``--data`` (its folder for a file), ``--images``, and the loaded
    ``dataset``'s image folder and annotation file's folder."""
    folders = [Path(args.data) if os.path.isdir(args.data) else Path(args.data).parent]
    if args.images:
        folders.append(Path(args.images))
    if dataset is not None:
        folders += [Path(dataset.image_dir), Path(dataset.annotation_file).parent]
    return folders


def run(args):
    precheck(args)  # again: run(args) is also called without the gflv2 entry point
    from gflv2_keras.data.formats import load_detection_dataset
    from gflv2_keras.data.show import show_data

    output = Path(args.output)
    dataset = load_detection_dataset(args.data, args.split, images=args.images, for_training=False)
    check_output_folder(output, data_folders(args, dataset))
    problems = dataset.problem_lines()
    if problems:
        print(f"[show-data] {len(problems)} problems in {dataset.annotation_file} (entries skipped or suspicious, "
              "not drawn):")
        for line in problems[:SHOWN_PROBLEMS]:
            print(f"  {line}")
        if len(problems) > SHOWN_PROBLEMS:
            print(f"  ... {len(problems) - SHOWN_PROBLEMS} more")
    written = show_data(dataset, output, num_images=args.num_images, seed=args.seed or 0, overwrite=args.overwrite)
    stats = written["statistics"]
    counts = ", ".join(f"{name} {int(n)}" for name, n in zip(stats.class_names, stats.class_counts))
    print(f"[show-data] {stats.num_images} images, {stats.num_boxes} boxes; per class: {counts}")
    print(f"[show-data] box summary: {written['labels']}")
    if written["ground_truth"]:
        print(f"[show-data] {len(written['pictures'])} images with their boxes: {written['ground_truth']}")
    for file_name, reason in written["skipped"]:
        print(f"[show-data] skipped {file_name}: {reason}", file=sys.stderr)
    return 1 if written["skipped"] else 0


def check_output_folder(output, folders):
    """``UserError`` (one line) when ``output`` is a file, or is (or lies inside) one of the data ``folders``
    (symbolic links followed): ``inference.cli.check_output_folder``, the rule of ``gflv2 predict``."""
    from gflv2_keras.inference.cli import check_output_folder as check_predict_output

    check_predict_output([str(folder) for folder in folders], [], output, [], overwrite=True, suffixes=())
