"""What a training recipe is: its fields, the official COCO recipe they share, and their validation.

A recipe is a plain dict that the one trainer (``training.trainer.train``) runs. ``coco_recipe``
holds what the official configs share (``configs/gfocal/gfocal_r50_fpn_1x.py`` of the official
code: data pipeline, SGD, warm-up, step decay), so each named recipe is one call
(``recipes.catalog``).

Fields (``RECIPE_FIELDS`` lists them with their meaning): the preset to build, the schedule
(epochs, decay epochs, warm-up), the optimiser (SGD momentum / coupled L2, lr per 16 images,
scaled linearly to the global batch), the data (scale, multi-scale range, flip, seed, and
where the data is: ``train_data`` / ``val_data`` in any layout ``data.formats.load_detection_dataset``
reads, with their split and image folder), checkpoint and evaluation intervals. The COCO recipes
hold the COCO 2017 layout relative to ``--data-root``; ``recipes.finetune.finetune_recipe`` holds
absolute paths of a user's dataset.
"""

import copy

# name -> meaning; every recipe has exactly these fields (``validate_recipe``).
RECIPE_FIELDS = {
    "name": "recipe name",
    "preset": "preset name (gflv2_keras.presets) or preset folder of the model to train",
    "init_weights": "preset folder whose weights initialise the model (fine-tuning), or None: random init",
    "pretrained_backbone": "ImageNet classification .pth (torchvision / open-mmlab layout) loaded into the "
    "backbone before training, as the official recipes start; None: random backbone",
    "epochs": "number of training epochs",
    "lr_steps": "epochs (0-based index) from which the lr is multiplied by lr_gamma",
    "lr_gamma": "step-decay factor",
    "base_lr_per_16": "learning rate for a global batch of 16 images (linear scaling rule)",
    "momentum": "SGD momentum",
    "weight_decay": "coupled L2 coefficient (PyTorch SGD weight_decay)",
    "warmup_iters": "iterations of linear warm-up",
    "warmup_ratio": "starting fraction of the warm-up lr",
    "batch_per_replica": "images per replica (GPU) per step",
    "scale": "[long_max, short_max] keep-ratio resize target",
    "multiscale_range": "[short_min, short_max] sampled short side per image, or None (single scale)",
    "flip_prob": "probability of a horizontal flip",
    "max_boxes": "boxes per image in a batch (fixed shapes), or None: the largest count of an image in the "
    "training data, capped only for memory (training/options.py)",
    "seed": "seed of data order, scale and flip (stored in checkpoints)",
    "checkpoint_every_steps": "also checkpoint every N steps (checkpoints are always written at epoch ends)",
    "keep_checkpoints": "checkpoints kept on disk",
    "eval_every_epochs": "COCO evaluation on the val split every N epochs (0: never)",
    "eval_max_images": "evaluate on the first N val images only, or None: all",
    "train_data": "training data in any layout of data.formats (COCO JSON, VOC root, YOLO data.yaml), "
    "absolute or relative to --data-root",
    "train_split": "VOC / YOLO split of train_data (ignored for COCO, whose JSON is the split)",
    "train_images": "COCO / VOC image folder of train_data (absolute or relative to --data-root), or None: "
    "the layout's default (COCO: the JSON's folder, VOC: JPEGImages; YOLO: must be None)",
    "val_data": "validation data (same layouts), or None: no evaluation",
    "val_split": "VOC / YOLO split of val_data",
    "val_images": "image folder of val_data, or None: the layout's default",
    "official_config": "the official config this recipe reproduces (provenance)",
    "notes": "deviations from the official recipe",
}

# Where ``gflv2_keras.data.synthetic.make_synthetic_coco`` writes its splits (relative to its root).
SYNTHETIC_DATA = {
    "train_data": "annotations/train.json",
    "train_images": "train",
    "val_data": "annotations/val.json",
    "val_images": "val",
}

SCHEDULES = {
    "1x": {"epochs": 12, "lr_steps": [8, 11], "multiscale_range": None},
    "ms2x": {"epochs": 24, "lr_steps": [16, 22], "multiscale_range": [480, 960]},
}

_COCO_BASE = {
    "init_weights": None,
    "pretrained_backbone": None,
    "lr_gamma": 0.1,
    "base_lr_per_16": 0.01,
    "momentum": 0.9,
    "weight_decay": 1e-4,
    "warmup_iters": 500,
    "warmup_ratio": 0.001,
    "batch_per_replica": 2,
    "scale": [1333, 800],
    "flip_prob": 0.5,
    "max_boxes": None,
    "seed": 0,
    "checkpoint_every_steps": 2000,
    "keep_checkpoints": 3,
    "eval_every_epochs": 1,
    "eval_max_images": None,
    "train_data": "annotations/instances_train2017.json",
    "train_split": "train",
    "train_images": "train2017",
    "val_data": "annotations/instances_val2017.json",
    "val_split": "val",
    "val_images": "val2017",
    "notes": (
        "Official: ImageNet-pretrained backbone (torchvision://resnet50 etc.): download that .pth and pass "
        "--pretrained-backbone FILE (nothing is downloaded here). "
        "Batches are zero-padded to a fixed square canvas (static shapes) instead of to the largest image."
    ),
}


def coco_recipe(preset, schedule="1x", **overrides):
    """The official COCO recipe of ``preset`` with ``schedule`` ``"1x"`` or ``"ms2x"``.

    Global batch 16 = 8 replicas x 2 (the lr is rescaled for any other global batch),
    SGD lr 0.01 / momentum 0.9 / coupled L2 1e-4, linear warm-up 500 iters from 0.001,
    x0.1 at epochs 8 and 11 of 12 (1x) or 16 and 22 of 24 (ms2x), resize to (1333, 800) or
    short side uniform in [480, 960] (ms2x), flip 0.5. ``overrides`` replace any field.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"coco_recipe: schedule must be one of {sorted(SCHEDULES)}, got {schedule!r}")
    from gflv2_keras.presets import preset_info

    official = preset_info(preset)["metadata"].get("official_config")
    recipe = {
        **copy.deepcopy(_COCO_BASE),
        **copy.deepcopy(SCHEDULES[schedule]),
        "name": preset,
        "preset": preset,
        "official_config": official,
        **overrides,
    }
    return validate_recipe(recipe)


def validate_recipe(recipe, source="recipe"):
    """Checks a recipe has exactly the known fields with sane values; returns it."""
    missing = sorted(set(RECIPE_FIELDS) - set(recipe))
    unknown = sorted(set(recipe) - set(RECIPE_FIELDS))
    if missing or unknown:
        raise ValueError(f"{source}: missing fields {missing}, unknown fields {unknown}")
    checks = [
        ("epochs", recipe["epochs"] >= 1),
        ("batch_per_replica", recipe["batch_per_replica"] >= 1),
        ("base_lr_per_16", recipe["base_lr_per_16"] > 0),
        ("lr_steps", list(recipe["lr_steps"]) == sorted(set(recipe["lr_steps"]))),
        ("scale", len(recipe["scale"]) == 2),
        ("multiscale_range", recipe["multiscale_range"] is None or len(recipe["multiscale_range"]) == 2),
        ("checkpoint_every_steps", recipe["checkpoint_every_steps"] is None or recipe["checkpoint_every_steps"] >= 0),
        ("keep_checkpoints", recipe["keep_checkpoints"] >= 1),
        ("eval_every_epochs", recipe["eval_every_epochs"] >= 0),
    ]
    if recipe["init_weights"] and recipe["pretrained_backbone"]:
        raise ValueError(f"{source}: init_weights (whole model) and pretrained_backbone exclude each other")
    for field, ok in checks:
        if not ok:
            raise ValueError(f"{source}: invalid value of {field!r}: {recipe[field]!r}")
    return recipe
