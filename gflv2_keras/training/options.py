"""What one training run is: the recipe merged with the caller's overrides, checked in one place.

``resolve_run(recipe, work_dir, data_root=..., strategy=..., **overrides)`` returns a frozen
``TrainOptions``; every stage of the trainer reads it and nothing else. A wrong override (an
unknown name, a wrong type, a value out of range, a missing data path) raises one ``ValueError``
(``FileNotFoundError`` for missing training files) naming the field, before a strategy, a
dataset or a model is built. The role of mmdet's ``tools/train.py`` merging ``--cfg-options``
into the config before ``mmdet/apis/train.py train_detector`` runs.
"""

import dataclasses
import numbers
import os
from pathlib import Path
from types import MappingProxyType

import tensorflow as tf

from gflv2_keras.training.callbacks import BEST_METRICS
from gflv2_keras.training.precision import POLICIES
from gflv2_keras.training.strategy import STRATEGIES
from gflv2_keras.training.work_dir import default_work_dir, refuse_used_work_dir

DATA_FIELDS = ("train_data", "train_images", "val_data", "val_images")
# Older override names of the COCO annotation files, still accepted.
DATA_ALIASES = {"train_annotations": "train_data", "val_annotations": "val_data"}
# max_boxes, the boxes per image of every training batch (a fixed count keeps one traced training
# step per canvas, and XLA needs it): the recipe's when it sets one, else the largest count of
# an image in the training split, so nothing is dropped (COCO train2017: 93 non-crowd boxes;
# crowded scenes have hundreds), capped only where memory says so. The rule of the cap: the ATSS
# assigner (assigners/atss.py) works on [images, box slots, points] matrices, at its peak about
# ASSIGNER_BYTES_PER_PAIR bytes per (image, box slot, anchor point) (measured, BENCHMARKS.md
# "max_boxes"); the cap keeps one replica's batch on the largest training canvas within
# ASSIGNER_MEMORY_BUDGET. Boxes past max_boxes are dropped, and each image that loses some is
# named in the run's summary line and data_problems.txt (records.report_boxes_over).
ASSIGNER_BYTES_PER_PAIR = 40  # measured 34-40 (TensorFlow, CPU, 800x1344 canvas, 0-1000 boxes)
ASSIGNER_MEMORY_BUDGET = 2 * 2**30
VERBOSITY = ("auto", 0, 1, 2)

# name -> meaning of every keyword ``train`` accepts besides its named arguments.
OVERRIDES = {
    "epochs": "the recipe's number of epochs (int >= 1)",
    "batch_per_replica": "the recipe's images per replica (int >= 1)",
    "train_data": "training data: COCO JSON, VOC root or YOLO data.yaml (absolute or relative to the current folder)",
    "train_images": "training image folder (COCO / VOC)",
    "val_data": "validation data (same layouts)",
    "val_images": "validation image folder (COCO / VOC)",
    "train_annotations": "old name of train_data",
    "val_annotations": "old name of val_data",
    "steps_per_epoch": "cap on the steps of an epoch (int >= 1; smoke tests, benchmarks); None: one pass",
    "cpu_devices": "split the CPU into N logical devices (int >= 1; mirrored without GPUs)",
    "jit_compile": "compile the training step with XLA (bool; fixed box count: max_boxes)",
    "evaluate": "run the COCO evaluation callback every recipe eval_every_epochs (bool)",
    "tensorboard": "write TensorBoard logs (bool)",
    "save_preset": "write WORK_DIR/preset at the end (bool)",
    "verbose": "fit verbosity: 'auto', 0, 1 or 2",
    "precision": "'float32' (official), 'bfloat16' or 'float16' (mixed precision; float16 with loss scaling)",
    "accumulate": "micro-batches per optimizer update (int >= 1): global batch = replicas x batch_per_replica x N",
    "best_metric": "the held-out metric that picks WORK_DIR/preset (the best epoch): AP, AP50, AP75, APs, APm or APl",
}
DEFAULTS = {
    "epochs": None,
    "batch_per_replica": None,
    "train_data": None,
    "train_images": None,
    "val_data": None,
    "val_images": None,
    "train_annotations": None,
    "val_annotations": None,
    "steps_per_epoch": None,
    "cpu_devices": None,
    "jit_compile": False,
    "evaluate": True,
    "tensorboard": True,
    "save_preset": True,
    "verbose": "auto",
    "precision": "float32",
    "accumulate": 1,
    "best_metric": "AP",
}


@dataclasses.dataclass(frozen=True)
class TrainOptions:
    """One resolved training run.

    Attributes:
        recipe: the validated recipe with ``epochs`` / ``batch_per_replica`` overrides applied
            (read-only mapping; ``dict(options.recipe)`` is what ``recipe.json`` holds).
        work_dir: absolute output folder.
        data_paths: where the data is (read-only mapping, ``resolve_data_paths``): absolute
            ``train_data``, ``train_images``, ``val_data``, ``val_images`` (the image folders
            and ``val_data`` may be None) and the ``train_split`` / ``val_split`` names.
        strategy: a name of ``STRATEGIES`` or a ``tf.distribute.Strategy``.
        cpu_devices, resume, callbacks, steps_per_epoch, jit_compile, evaluate, tensorboard,
        save_preset, verbose, precision, accumulate, best_metric: see ``OVERRIDES`` and ``trainer.train``.
    """

    recipe: MappingProxyType
    work_dir: Path
    data_paths: MappingProxyType
    strategy: object = "none"
    cpu_devices: int = None
    resume: bool = False
    callbacks: tuple = ()
    steps_per_epoch: int = None
    jit_compile: bool = False
    evaluate: bool = True
    tensorboard: bool = True
    save_preset: bool = True
    verbose: object = "auto"
    precision: str = "float32"
    accumulate: int = 1
    best_metric: str = "AP"

    @property
    def max_boxes(self):
        """The recipe's boxes per image of a batch, or None: decided from the data (``resolve_max_boxes``)."""
        return self.recipe["max_boxes"] or None

    @property
    def checkpoint_dir(self):
        return self.work_dir / "checkpoints"


def resolve_run(recipe, work_dir=None, *, data_root=None, strategy="none", resume=False, callbacks=None, **overrides):
    """Merges ``recipe`` and the overrides into a ``TrainOptions``, checking every value.

    Args:
        recipe: a recipe dict (``recipes.load_recipe`` / ``coco_recipe``); validated with
            ``recipes.validate_recipe`` after the overrides are applied.
        work_dir: output folder (default ``work_dirs/<recipe name>``).
        data_root: folder the recipe's data paths are relative to.
        strategy: a name of ``STRATEGIES`` or a ``tf.distribute.Strategy``.
        resume: bool.
        callbacks: None or a sequence of ``keras.callbacks.Callback``.
        **overrides: names of ``OVERRIDES``.

    Raises:
        ValueError: naming the field, for an unknown override, a wrong type or range, or no
            source for a data path; ``FileNotFoundError`` for missing training files.
    """
    from gflv2_keras.recipes import validate_recipe

    unknown = sorted(set(overrides) - set(OVERRIDES))
    if unknown:
        raise ValueError(f"train: unknown option(s) {unknown}; known: {sorted(OVERRIDES)}")
    values = {**DEFAULTS, **overrides}
    for old, new in DATA_ALIASES.items():
        if values[old] is not None:
            if values[new] is not None:
                raise ValueError(f"train: pass {new} or its old name {old}, not both")
            values[new] = values[old]
    _check("accumulate", values["accumulate"], _is_int(values["accumulate"]) and values["accumulate"] >= 1,
           "an int >= 1")
    _check("precision", values["precision"], values["precision"] in POLICIES, f"one of {tuple(POLICIES)}")
    _check("best_metric", values["best_metric"], values["best_metric"] in BEST_METRICS, f"one of {BEST_METRICS}")
    for field in ("epochs", "batch_per_replica", "steps_per_epoch", "cpu_devices"):
        _check(field, values[field], values[field] is None or _is_int(values[field]) and values[field] >= 1,
               "None or an int >= 1")
    for field in ("jit_compile", "evaluate", "tensorboard", "save_preset"):
        _check(field, values[field], isinstance(values[field], bool), "True or False")
    _check("resume", resume, isinstance(resume, bool), "True or False")
    verbose = values["verbose"]
    _check("verbose", verbose, not isinstance(verbose, bool) and verbose in VERBOSITY, f"one of {VERBOSITY}")
    for field in (*DATA_FIELDS, "data_root"):
        value = data_root if field == "data_root" else values[field]
        _check(field, value, value is None or _is_path(value), "None or a non-empty path")
    _check("work_dir", work_dir, work_dir is None or _is_path(work_dir), "None or a non-empty path")
    is_strategy = isinstance(strategy, tf.distribute.Strategy)
    _check("strategy", strategy, is_strategy or strategy in STRATEGIES,
           f"one of {STRATEGIES} or a tf.distribute.Strategy")
    if is_strategy and values["cpu_devices"]:
        raise ValueError("train: cpu_devices applies to a strategy name, not to a tf.distribute.Strategy object")
    callbacks = tuple(callbacks or ())
    for i, callback in enumerate(callbacks):
        _check(f"callbacks[{i}]", callback, isinstance(callback, _keras_callback()), "a keras.callbacks.Callback")
    if not isinstance(recipe, dict):
        raise ValueError(f"train: recipe must be a dict (recipes.load_recipe), got {type(recipe).__name__}")

    recipe = dict(recipe)
    for field in ("epochs", "batch_per_replica"):
        if values[field] is not None:
            recipe[field] = int(values[field])
    recipe = validate_recipe(recipe, f"recipe {recipe.get('name')!r}")
    work_dir = Path(work_dir or default_work_dir(recipe["name"])).absolute()
    if not resume:
        refuse_used_work_dir(work_dir)
    return TrainOptions(
        recipe=MappingProxyType(recipe),
        work_dir=work_dir,
        data_paths=MappingProxyType(
            resolve_data_paths(
                recipe,
                data_root,
                require_val=values["evaluate"] and bool(recipe["eval_every_epochs"]),
                **{f: values[f] for f in DATA_FIELDS},
            )
        ),
        strategy=strategy,
        cpu_devices=values["cpu_devices"],
        resume=resume,
        callbacks=callbacks,
        **{
            f: values[f]
            for f in (
                "steps_per_epoch", "jit_compile", "evaluate", "tensorboard", "save_preset", "verbose", "precision",
                "accumulate", "best_metric",
            )
        },
    )


def memory_box_cap(batch_per_replica, canvases):
    """The most boxes per image whose assigner matrices fit ``ASSIGNER_MEMORY_BUDGET``.

    Args:
        batch_per_replica: images of one replica's (micro-)batch.
        canvases: the ``(H, W)`` training canvases (``data.canvas.training_canvases``); the one
            with the most anchor points (strides 8..128) counts.

    Returns:
        ``budget // (batch_per_replica x points x ASSIGNER_BYTES_PER_PAIR)``, at least 1.
    """
    from gflv2_keras.ops.boxes import level_sizes

    points = max(sum(h * w for h, w in level_sizes(int(H), int(W))) for H, W in canvases)
    return max(1, ASSIGNER_MEMORY_BUDGET // (int(batch_per_replica) * points * ASSIGNER_BYTES_PER_PAIR))


def resolve_max_boxes(recipe_max_boxes, largest, batch_per_replica, canvases):
    """The run's ``max_boxes`` and why it is that value (see ``ASSIGNER_MEMORY_BUDGET`` for the rule).

    Args:
        recipe_max_boxes: ``TrainOptions.max_boxes`` (the recipe's), or None.
        largest: the most boxes of one usable training image (``records.largest_box_count``).
        batch_per_replica, canvases: see ``memory_box_cap``.

    Returns:
        ``(max_boxes, why)``: ``why`` is ``""`` for the largest count, else a phrase such as
        ``" (the recipe's max_boxes)"`` to follow ``max_boxes is N`` in a problem line.
    """
    if recipe_max_boxes:
        return int(recipe_max_boxes), " (the recipe's max_boxes)"
    cap = memory_box_cap(batch_per_replica, canvases)
    if largest > cap:
        return cap, (
            f" (capped for memory: {batch_per_replica} images per replica on canvases up to "
            f"{max(h for h, _ in canvases)}x{max(w for _, w in canvases)}, rule in training/options.py)"
        )
    return max(1, int(largest)), ""


def resolve_data_paths(recipe, data_root=None, require_val=False, **paths):
    """Where the run's data is: ``train_data``, ``train_images``, ``val_data``, ``val_images``
    (absolute paths or None) and ``train_split`` / ``val_split`` (names).

    A recipe path is used as is when absolute, else relative to ``data_root``; a non-None entry
    of ``paths`` replaces it (absolute or relative to the current folder). An image folder or
    ``val_data`` of None stays None (the layout's default folder; no validation data). The
    training data must exist (``FileNotFoundError`` naming the file and the recipe field); the
    validation data only when ``require_val`` (evaluation on): ``--no-eval`` demands none.
    """
    resolved = {"train_split": recipe["train_split"], "val_split": recipe["val_split"]}
    for field in DATA_FIELDS:
        if paths.get(field):
            resolved[field] = os.path.abspath(paths[field])
        elif recipe[field] is None:
            resolved[field] = None
        elif os.path.isabs(recipe[field]):
            resolved[field] = recipe[field]
        elif data_root is not None:
            resolved[field] = os.path.abspath(os.path.join(data_root, recipe[field]))
        else:
            raise ValueError(f"no data: pass data_root (or --data-root), or the {field} path")
    if resolved["train_data"] is None:
        raise ValueError("no training data: the recipe's train_data is None and no train_data was passed")
    checked = ("train_data", "train_images") + (("val_data", "val_images") if require_val else ())
    for field in checked:
        if resolved[field] is not None and not os.path.exists(resolved[field]):
            raise FileNotFoundError(
                f"{resolved[field]} does not exist (recipe field {field!r} = {recipe[field]!r}"
                + (f" under data root {data_root}" if data_root is not None else "")
                + "); COCO layout: DATA_ROOT/annotations/instances_train2017.json and DATA_ROOT/train2017/"
                + ("; pass --no-eval to train without validation data" if field.startswith("val") else "")
            )
    return resolved


def _check(field, value, ok, expected):
    if not ok:
        raise ValueError(f"train: {field} must be {expected}, got {value!r}")


def _is_int(value):
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_path(value):
    return isinstance(value, (str, os.PathLike)) and str(value) != ""


def _keras_callback():
    import keras

    return keras.callbacks.Callback
