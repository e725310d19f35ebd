"""Do blurred box edges get wider side distributions? (``docs/box_uncertainty.md``)

On held-out synthetic images (``gflv2_keras.data.synthetic.render_image``, a generator split the
demo never trains or evaluates on) the script picks one object per image, Gaussian-blurs a band
across ONE of its sides (the side cycles left, top, right, bottom over the images), and runs the
detector on the clean and the blurred image with ``return_box_distributions=True``. For the
detection matching the object (best-scored box of its class with IoU >= 0.5 to it, in each
image) it compares the standard deviation of the blurred side with

* the opposite side of the same box (same bin width: both on the same axis), and
* the same side in the clean image,

and reports the share of images where the blurred side is wider, plus the clean-image share of
"this side wider than its opposite" as the chance level.

Usage::

    # train the demo detector first (or reuse one: --preset DIR)
    python scripts/box_uncertainty_experiment.py --train-epochs 12 --work /tmp/unc --output result.json
    python scripts/box_uncertainty_experiment.py --preset gflv2_demo/work_dir/preset --num-images 200
"""

import argparse
import json
import sys

import numpy as np

from gflv2_keras.utils.cli import run_command

SIDES = ("left", "top", "right", "bottom")
OPPOSITE = (2, 3, 0, 1)
EXPERIMENT_SPLIT = 7  # image_rng stream no demo split uses (train 0, val 1)


def blur_side(image, box, side, sigma=8.0, half_width=16):
    """Gaussian-blur a band of ``2 * half_width`` pixels centred on one side of ``box``.

    Args:
        image: uint8 RGB ``[H, W, 3]``; box: ``[x1, y1, x2, y2]`` pixels; side: 0..3
            (left, top, right, bottom); sigma: blur radius in pixels.

    Returns:
        A blurred copy; pixels outside the band are unchanged.
    """
    from PIL import Image, ImageFilter

    height, width = image.shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    if side in (0, 2):
        x = x1 if side == 0 else x2
        region = (x - half_width, y1 - half_width, x + half_width, y2 + half_width)
    else:
        y = y1 if side == 1 else y2
        region = (x1 - half_width, y - half_width, x2 + half_width, y + half_width)
    left, top = max(region[0], 0), max(region[1], 0)
    right, bottom = min(region[2], width), min(region[3], height)
    blurred = np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(sigma)))
    out = image.copy()
    out[top:bottom, left:right] = blurred[top:bottom, left:right]
    return out


def match_detection(found, box, label, min_iou=0.5):
    """Index of the best-scored detection of class ``label`` with IoU >= ``min_iou`` to ``box``, or None."""
    if len(found["boxes"]) == 0:
        return None
    boxes = np.asarray(found["boxes"], np.float64)
    ix = np.clip(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]), 0, None)
    iy = np.clip(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]), 0, None)
    inter = ix * iy
    union = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) + (box[2] - box[0]) * (box[3] - box[1]) - inter
    ok = (inter / np.maximum(union, 1e-9) >= min_iou) & (np.asarray(found["labels"]) == label)
    if not ok.any():
        return None
    return int(np.argmax(np.where(ok, found["confidence"], -np.inf)))


def run_experiment(detector, num_images=100, seed=0, sigma=8.0, half_width=16, min_size=24):
    """The measurement of the module docstring; returns a dict of shares and per-image rows."""
    from gflv2_keras.data.synthetic import render_image
    from gflv2_keras.training.demo import DEMO_DATA

    rows = []
    index = 0
    while len(rows) < num_images and index < 20 * num_images:
        rng = np.random.default_rng((seed, EXPERIMENT_SPLIT, index))  # as data.synthetic.image_rng
        index += 1
        image, objects = render_image(rng, DEMO_DATA["image_size"], object_size=DEMO_DATA["object_size"])
        objects = [o for o in objects if min(o["box"][2] - o["box"][0], o["box"][3] - o["box"][1]) >= min_size]
        if not objects:
            continue
        target = max(objects, key=lambda o: o["area"])
        box, label = np.asarray(target["box"], np.float64), target["class_index"]
        side = len(rows) % 4
        clean = detector.detect(image, bounding_box_format="xyxy", return_box_distributions=True)
        blurred = detector.detect(
            blur_side(image, box, side, sigma, half_width), bounding_box_format="xyxy", return_box_distributions=True
        )
        i, j = match_detection(clean, box, label), match_detection(blurred, box, label)
        if i is None or j is None:
            continue
        rows.append(
            {
                "image": index - 1,
                "side": SIDES[side],
                "clean_std": clean["side_std"][i].tolist(),
                "blurred_std": blurred["side_std"][j].tolist(),
            }
        )
    return summarise(rows)


def summarise(rows):
    """Shares over ``rows`` (see the module docstring)."""
    side = np.array([SIDES.index(r["side"]) for r in rows])
    clean = np.array([r["clean_std"] for r in rows]).reshape(-1, 4)
    blurred = np.array([r["blurred_std"] for r in rows]).reshape(-1, 4)
    n = np.arange(len(rows))
    opposite = np.array([OPPOSITE[s] for s in side], dtype=int)
    blurred_side, blurred_opposite, clean_side = blurred[n, side], blurred[n, opposite], clean[n, side]
    return {
        "images": len(rows),
        "share_blurred_side_wider_than_opposite": float(np.mean(blurred_side > blurred_opposite)) if rows else None,
        "share_blurred_side_wider_than_clean": float(np.mean(blurred_side > clean_side)) if rows else None,
        "chance_clean_side_wider_than_opposite": float(np.mean(clean_side > clean[n, opposite])) if rows else None,
        "median_std_ratio_blurred_over_clean": float(np.median(blurred_side / clean_side)) if rows else None,
        "median_std_ratio_blurred_over_opposite": float(np.median(blurred_side / blurred_opposite)) if rows else None,
        "rows": rows,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help="a trained demo preset folder")
    source.add_argument("--train-epochs", type=int, help="train the demo detector for this many epochs first")
    parser.add_argument("--work", default="box_uncertainty_demo", help="demo output folder with --train-epochs")
    parser.add_argument("--num-images", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sigma", type=float, default=8.0, help="Gaussian blur radius in pixels (8)")
    parser.add_argument("--half-width", type=int, default=16, help="half width of the blurred band in pixels (16)")
    parser.add_argument("--output", help="write the result JSON here (a new file)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output / demo run in --work")
    args = parser.parse_args(argv)
    return run_command("box_uncertainty", lambda: _run(args), prog="box_uncertainty_experiment.py")


def _run(args):
    from gflv2_keras.utils.files import atomic_write, refuse_existing

    if args.output:
        refuse_existing(args.output, args.overwrite, "--output file")
    from gflv2_keras import GFLV2Detector

    if args.train_epochs is not None:
        from gflv2_keras.training.demo import run_demo

        preset = run_demo(output=args.work, epochs=args.train_epochs, overwrite=args.overwrite)["preset_dir"]
    else:
        preset = args.preset
    detector = GFLV2Detector.from_preset(str(preset))
    result = run_experiment(detector, args.num_images, args.seed, args.sigma, args.half_width)
    result.update(preset=str(preset), sigma=args.sigma, half_width=args.half_width, seed=args.seed)
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    if args.output:
        atomic_write(args.output, lambda f: f.write(json.dumps(result, indent=1).encode()))
    return 0

if __name__ == "__main__":
    sys.exit(main())
