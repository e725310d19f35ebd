"""``gflv2 demo``: train a tiny GFLv2 from scratch on synthetic shapes, on the CPU, and score it.

Runs the real machinery end to end: ``data.synthetic`` writes a COCO-format dataset (train and
a held-out val split, different seeds per image), ``training.trainer.train`` runs the recipe
``recipes/gflv2_tiny_r18_demo.py`` (SGD with coupled L2, warm-up and step decay, checkpoints,
COCO evaluation of the held-out split after every epoch), then the demo prints the per-epoch
curve, draws predictions on held-out images and leaves the trained preset folder.

Output folder layout: ``data/`` (the dataset), ``work_dir/`` (checkpoints, logs, ``preset/``),
``predictions.png``, ``curve.json`` and ``curve.png`` (loss and held-out AP per epoch).

``--seed N`` changes the training seed (initial weights, data order, scale and flip; the
recipe's is 0), not the dataset, which is always the same. Training prints one line per epoch.

An ``--output`` that holds a previous demo run is refused before TensorFlow loads, unless
``--resume`` continues it or ``--overwrite`` starts over. Before deleting or writing anything the
demo locks ``--output``, its data folder and its work dir (``utils.locks``) until it ends: a second
demo there, or a ``gflv2 train`` in the work dir, is refused in one line, and ``--overwrite``
refuses (deleting nothing) while another live run holds one of them; holding them, it deletes
the contents of the previous work dir.
"""

import json
import os
import time
from pathlib import Path

from gflv2_keras.training.work_dir import run_outputs_in
from gflv2_keras.utils.files import remove_path
from gflv2_keras.utils.locks import LOCK_NAME, hold_folder, releases_locks

# The synthetic dataset of the demo (see data.synthetic.make_synthetic_coco).
DEMO_DATA = {"num_train": 600, "num_val": 100, "image_size": (192, 256), "object_size": (16, 96), "seed": 0}
QUICK_DATA = {**DEMO_DATA, "num_train": 16, "num_val": 4}
DEMO_RECIPE = "gflv2_tiny_r18_demo"
PICTURE_IMAGES = 8
PICTURE_MIN_SCORE = 0.3


@releases_locks  # the demo's folders stay locked (utils.locks) until it returns or raises
def run_demo(output="gflv2_demo", epochs=None, quick=False, resume=False, overwrite=False, seed=None):
    """Generates the data, trains, evaluates, draws; returns a summary dict.

    Args:
        output: output folder.
        epochs: override the recipe's epochs.
        quick: a smoke run (16 training images, 1 epoch of 2 steps): checks the pipeline, not
            the accuracy.
        resume: continue an interrupted demo from its last checkpoint.
        overwrite: start over in an ``output`` that holds a previous demo run (the contents of
            its work dir are deleted, under the work dir's lock); without it (or ``resume``)
            such a folder is refused, unchanged.
        seed: the training seed (``None``: the recipe's, 0); the synthetic dataset does not change.

    Returns:
        dict: ``history`` (per-epoch logs), ``AP``, ``AP50`` (last evaluation), ``seconds``,
        ``picture``, ``preset_dir``, ``images_per_second``.

    Raises:
        ValueError: ``output`` holds a previous run and neither ``resume`` nor ``overwrite`` is given.
        utils.locks.FolderInUseError: another live run holds ``output``, its work dir or its data
            folder (a demo, ``gflv2 train --work-dir``); nothing is deleted or written.
    """
    start = time.perf_counter()
    output, work_dir, data_root = demo_folders(output, quick)
    # Locked before anything is deleted or written (and before TensorFlow loads): another demo in
    # ``output``, or a training run in its work dir, would lose its files.
    for folder in (output, data_root, work_dir):
        hold_folder(folder, "--output", recursive=folder == work_dir)
    refuse_previous_run(output, quick, resume, overwrite)  # again, now that no other run can write there
    if run_outputs_in(work_dir) and not resume:
        print(f"[demo] --overwrite: removing the previous run {work_dir}")
        _remove_previous_run(work_dir)

    from gflv2_keras.data.synthetic import make_synthetic_coco
    from gflv2_keras.recipes import load_recipe
    from gflv2_keras.training.trainer import train

    spec = QUICK_DATA if quick else DEMO_DATA
    marker = data_root / "dataset.json"
    if not marker.is_file() or json.loads(marker.read_text()) != _jsonable(spec):
        print(f"[demo] writing the synthetic dataset to {data_root} ({spec['num_train']} train, {spec['num_val']} val)")
        make_synthetic_coco(str(data_root), **spec)
        marker.write_text(json.dumps(_jsonable(spec)))
    recipe = load_recipe(DEMO_RECIPE)
    if quick:
        recipe.update(epochs=1, lr_steps=[], warmup_iters=1, checkpoint_every_steps=1)
    if seed is not None:
        recipe["seed"] = int(seed)
    result = train(
        recipe,
        work_dir,
        data_root=data_root,
        epochs=epochs,
        resume=resume,
        steps_per_epoch=2 if quick else None,
        verbose=2,
    )
    history = result["history"]
    print_curve(history)
    picture = draw_predictions(
        result["model"], data_root / "annotations" / "val.json", data_root / "val", output / "predictions.png"
    )
    (output / "curve.json").write_text(json.dumps(history, indent=2))
    from gflv2_keras.training.curves import draw_curve

    draw_curve(history, str(output / "curve.png"))
    last = next((h for h in reversed(history) if "val_AP" in h), {})
    seconds = time.perf_counter() - start
    speed = result["images_per_second"]
    print(
        f"[demo] done in {seconds / 60:.1f} min: held-out COCO AP {last.get('val_AP', float('nan')):.3f}, "
        f"AP50 {last.get('val_AP50', float('nan')):.3f}"
        + (f"; training {speed:.1f} images/s" if speed else "")
        + f"\n[demo] preset folder: {result['preset_dir']}\n[demo] predictions: {picture}"
        + f"\n[demo] curve: {output / 'curve.png'}"
    )
    return {
        "history": history,
        "AP": last.get("val_AP"),
        "AP50": last.get("val_AP50"),
        "seconds": seconds,
        "picture": str(picture),
        "preset_dir": result["preset_dir"],
        "images_per_second": speed,
    }


def demo_folders(output, quick=False):
    """``(output, work_dir, data_root)``: the absolute folders of a demo into ``output`` (``--quick``'s own
    ``work_dir_quick`` and ``data_quick``, so a smoke run never touches a full run)."""
    output = Path(output).absolute()
    suffix = "_quick" if quick else ""
    return output, output / f"work_dir{suffix}", output / f"data{suffix}"


def refuse_previous_run(output, quick=False, resume=False, overwrite=False):
    """``ValueError`` when ``output`` holds a previous demo run and neither ``resume`` nor ``overwrite`` is given.

    Needs no TensorFlow: ``gflv2 demo`` checks it before TensorFlow loads, and ``run_demo`` again
    once it holds the folders' locks.
    """
    output, work_dir, _ = demo_folders(output, quick)
    if run_outputs_in(work_dir) and not (resume or overwrite):
        raise ValueError(
            f"{output} holds a previous demo run ({work_dir}): pass --resume to continue it, --overwrite "
            "to start over, or choose another --output; nothing was changed"
        )


def _remove_previous_run(work_dir):
    """Deletes what is in ``work_dir`` except its lock file (held by this run: ``utils.locks``)."""
    for entry in sorted(work_dir.iterdir()):
        if not entry.name.startswith(LOCK_NAME):
            remove_path(entry)


def print_curve(history):
    """Prints one line per epoch: losses, lr and held-out AP / AP50."""
    print(f"{'epoch':>5} {'loss':>7} {'qfl':>7} {'dfl':>7} {'giou':>7} {'lr':>9} {'AP':>6} {'AP50':>6}")
    for h in history:
        ap = f"{h['val_AP']:6.3f} {h['val_AP50']:6.3f}" if "val_AP" in h else f"{'-':>6} {'-':>6}"
        print(
            f"{h['epoch']:>5} {h['loss']:7.4f} {h['qfl']:7.4f} {h['dfl']:7.4f} {h['giou']:7.4f} "
            f"{h.get('lr', float('nan')):9.2e} {ap}"
        )


def draw_predictions(model, annotation_file, image_dir, path, num_images=PICTURE_IMAGES):
    """Draws the model's detections on the first held-out images, in a grid saved to ``path``."""
    import numpy as np
    from PIL import Image

    from gflv2_keras.data.coco import load_coco
    from gflv2_keras.inference.draw import draw_detections

    dataset = load_coco(str(annotation_file), str(image_dir), for_training=False, verbose=False)
    tiles = []
    for record in dataset.records[:num_images]:
        pixels = np.asarray(Image.open(record["file_name"]).convert("RGB"))
        detections = _one_label_per_object(model.detect(pixels, bounding_box_format="xyxy"))
        tiles.append(draw_detections(pixels, detections, dataset.class_names, min_score=PICTURE_MIN_SCORE))
    columns = min(4, len(tiles))
    rows = -(-len(tiles) // columns)
    cell_w, cell_h = max(t.width for t in tiles), max(t.height for t in tiles)
    grid = Image.new("RGB", (columns * cell_w, rows * cell_h), (255, 255, 255))
    for i, tile in enumerate(tiles):
        grid.paste(tile, ((i % columns) * cell_w, (i // columns) * cell_h))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    grid.save(path)
    return path


def _one_label_per_object(detections, iou_threshold=0.7):
    """For the picture only: drops boxes overlapping a better-scored box of another class.

    Per-class NMS (the official post-processing, used for the AP) keeps one box per class
    hypothesis, and the labels of near-identical boxes would be drawn over each other.
    """
    import numpy as np

    from gflv2_keras.ops.boxes import pairwise_iou

    order = np.argsort(-detections["confidence"])
    boxes = detections["boxes"][order]
    overlaps = np.asarray(pairwise_iou(boxes, boxes)) if len(boxes) else np.zeros((0, 0))
    keep = [i for i in range(len(boxes)) if not np.any(overlaps[i, :i] > iou_threshold)]
    return {k: v[order][keep] for k, v in detections.items()}


def _jsonable(spec):
    return json.loads(json.dumps(spec))


def register(subparsers):
    from gflv2_keras.utils.arguments import add_seed_argument, positive_int

    parser = subparsers.add_parser("demo", description=__doc__)
    parser.add_argument("--output", default="gflv2_demo", help="output folder (default ./gflv2_demo)")
    parser.add_argument("--epochs", type=positive_int, help="override the demo recipe's epochs")
    parser.add_argument("--quick", action="store_true", help="smoke run: a few images, 2 steps")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted demo")
    parser.add_argument("--overwrite", action="store_true", help="start over, deleting a previous demo run in --output")
    add_seed_argument(parser, "training seed: initial weights, data order, scale and flip (default 0, the recipe's); "
                      "the synthetic dataset stays the same")
    parser.set_defaults(func=_run, precheck=check_demo_args)


def check_demo_args(args):
    """The check of ``gflv2 demo`` that needs no TensorFlow (``precheck``): a used ``--output``."""
    refuse_previous_run(args.output, args.quick, args.resume, args.overwrite)


def _run(args):
    run_demo(args.output, epochs=args.epochs, quick=args.quick, resume=args.resume, overwrite=args.overwrite,
             seed=args.seed)
    return 0
