"""A fine-tuning recipe built from a preset and a dataset (``gflv2 train --preset P --data PATH``).

``finetune_recipe(preset, data)`` returns an ordinary recipe (``recipes.base.RECIPE_FIELDS``) that
the one trainer runs with the checkpoints, resume, strategies and preset output of the official
recipes. What it chooses:

* classes: the dataset's, matched to the preset's by name (``data.class_map``, any order and
  category ids): with the same names the detector is the preset's as it is (its class order);
  otherwise its classes are the preset's names the data has, then the data's new names, and the
  classification output is resized keeping the rows of the names in both (``models.transfer``);
  weights: the preset's when it has them (``init_weights``), none with ``from_scratch``;
* schedule: ``epochs`` (default 12) with x0.1 step decay at 2/3 and 11/12 of them (the 1x
  shape, decay at 8 and 11 of 12) and linear warm-up from 0.001 of the lr over
  ``min(500, half of the first epoch)`` iterations (the official 500 iterations would span
  whole epochs of a small dataset);
* lr: 0.01 per 16 images, scaled linearly to the global batch: the rate the official weights
  were trained at, which MMDetection's own fine-tuning configs keep when starting from COCO
  weights (``configs/cityscapes/faster_rcnn_r50_fpn_1x_cityscapes.py``: lr 0.01 at batch 16,
  warm-up, one decay, 8 epochs from a COCO checkpoint); the warm-up protects the pretrained
  weights from the fresh classifier's first large gradients;
* evaluation every epoch on the validation split: ``val_data``, or for VOC / YOLO the ``val``
  split of the same path; a COCO JSON has no other split, so without ``val_data`` (or without a
  ``val`` split) evaluation is off, with a message.
"""

import copy
import math
import os

from gflv2_keras.recipes.base import _COCO_BASE, validate_recipe

FINETUNE_LR_PER_16 = 0.01
FINETUNE_WARMUP_ITERS = 500
WARMUP_EPOCH_FRACTION = 0.5
DEFAULT_BATCH = 2


def finetune_name(data):
    """``finetune_<dataset name>``, the default recipe name (and so work dir) of fine-tuning on ``data``:
    the file or folder name of the path without its extension (``train.json``: ``finetune_train``)."""
    return f"finetune_{os.path.splitext(os.path.basename(os.path.abspath(data).rstrip(os.sep)))[0]}"


def finetune_recipe(
    preset,
    data,
    val_data=None,
    epochs=12,
    batch_size=None,
    image_size=None,
    from_scratch=False,
    split="train",
    images=None,
    val_split="val",
    val_images=None,
    name=None,
    base_lr_per_16=FINETUNE_LR_PER_16,
    verbose=True,
):
    """The recipe that fine-tunes ``preset`` on ``data`` (see the module docstring).

    Args:
        preset: preset name or preset folder (e.g. ``WORK_DIR/preset`` of an earlier run).
        data: the training data: COCO JSON, Pascal VOC root or YOLO ``data.yaml`` / folder.
        val_data: the validation data (same layouts), or None (see the module docstring).
        epochs: training epochs (int >= 1).
        batch_size: images per replica (default 2).
        image_size: ``(long, short)`` keep-ratio training scale (default the preset's
            ``input_scale``).
        from_scratch: random initial weights even when the preset has weights.
        split, images: the training split (VOC / YOLO) and image folder (COCO / VOC).
        val_split, val_images: the same for the validation data.
        name: recipe name (default ``finetune_<dataset name>``; the default work dir).
        base_lr_per_16: lr for a global batch of 16 images.
        verbose: print what was chosen.

    Returns:
        A validated recipe dict with absolute data paths.

    Raises:
        ValueError: unknown preset or layout, or no usable training image (naming the file).
    """
    from gflv2_keras.data.class_map import training_class_names
    from gflv2_keras.data.formats import detect_format, load_detection_dataset
    from gflv2_keras.models.preset_io import preset_config

    if not (isinstance(epochs, int) and epochs >= 1):
        raise ValueError(f"finetune: epochs must be an int >= 1, got {epochs!r}")
    batch_size = DEFAULT_BATCH if batch_size is None else batch_size
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"finetune: batch size must be an int >= 1, got {batch_size!r}")
    say = print if verbose else (lambda *a: None)
    config, has_weights = preset_config(preset)
    data = os.path.abspath(data)
    kind = detect_format(data)
    train_set = load_detection_dataset(data, split, images=images, for_training=True, verbose=False)
    steps = math.ceil(len(train_set.records) / batch_size)

    if val_data is None and kind in ("voc", "yolo"):
        try:
            load_detection_dataset(data, val_split, images=images, class_names=train_set.class_names,
                                   for_training=False, verbose=False)
            val_data, val_images = data, images
        except ValueError as error:
            say(f"[finetune] evaluation off: no usable '{val_split}' split in {data} ({error}); pass --val-data")
    elif val_data is None:
        say(f"[finetune] evaluation off: {data} is a COCO file (one split); pass --val-data for a validation split")

    init_weights = None
    if from_scratch:
        say(f"[finetune] --from-scratch: random initial weights (preset {preset} gives the architecture only)")
    elif has_weights:
        init_weights = str(os.path.abspath(preset)) if os.path.isdir(preset) else str(preset)
    else:
        say(f"[finetune] preset {preset} has no weights on disk: training from scratch")

    lr_steps = sorted({e for e in (round(epochs * 2 / 3), round(epochs * 11 / 12)) if 0 < e < epochs})
    recipe = {
        **copy.deepcopy(_COCO_BASE),
        "name": name or finetune_name(data),
        "preset": str(os.path.abspath(preset)) if os.path.isdir(preset) else str(preset),
        "init_weights": init_weights,
        "epochs": epochs,
        "lr_steps": lr_steps,
        "multiscale_range": None,
        "base_lr_per_16": base_lr_per_16,
        "warmup_iters": max(1, min(FINETUNE_WARMUP_ITERS, math.ceil(WARMUP_EPOCH_FRACTION * steps))),
        "batch_per_replica": batch_size,
        "scale": [int(v) for v in (image_size or config.get("input_scale", (1333, 800)))],
        "checkpoint_every_steps": 0,
        "eval_every_epochs": 1 if val_data is not None else 0,
        "train_data": data,
        "train_split": split,
        "train_images": os.path.abspath(images) if images else None,
        "val_data": os.path.abspath(val_data) if val_data else None,
        "val_split": val_split,
        "val_images": os.path.abspath(val_images) if val_images else None,
        "official_config": None,
        "notes": (
            f"fine-tuning of {preset} on {data} ({kind}): lr {base_lr_per_16} per 16 images, decay at "
            f"{lr_steps} of {epochs} epochs, warm-up capped to half of the first epoch"
        ),
    }
    recipe = validate_recipe(recipe, "finetune recipe")
    preset_names = config.get("class_names") if init_weights else None
    class_names = training_class_names(train_set.class_names, preset_names)  # the trainer's order, by name
    note = ""
    if preset_names is not None:
        new = [n for n in class_names if n not in set(preset_names)]
        note = f" (matched by name to the preset's {len(preset_names)} classes" + (f"; new: {new}" if new else "") + ")"
    say(
        f"[finetune] {kind} data {data}: {len(train_set.records)} training images, {train_set.num_classes} classes "
        f"{class_names}; from {'preset weights ' + init_weights if init_weights else 'random weights'}"
        + note
    )
    return recipe
