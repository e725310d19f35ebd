"""The one trainer of every recipe, as named stages: data, schedule, model, restore, callbacks, fit, outputs.

``train(recipe, work_dir, data_root=..., **overrides)`` first resolves the run
(``options.resolve_run``: recipe + overrides, every value checked before anything is built), then
``Trainer.run`` calls the stages in order. The shape is that of ``mmdet/apis/train.py
train_detector`` (data loaders, optimizer, runner hooks, resume, run), with one method per stage
as detectron2's ``detectron2/engine/defaults.py DefaultTrainer`` (``build_model``,
``build_optimizer``, ``build_train_loader``, ``build_hooks``) and TF Model Garden's
``official/vision/tasks/retinanet.py RetinaNetTask``:

1. ``build_data``: the training split in any layout (``data.formats``: COCO, VOC, YOLO; images
   too thin for the recipe's scale left out) and, when the run evaluates, the validation split
   (refused when none of its image files is readable), ``max_boxes`` (the largest box count of a
   training image unless the recipe sets it, capped only for memory: ``options.resolve_max_boxes``;
   what it drops is named), the global batch
   (``batch_per_replica`` x the replicas of the ``tf.distribute`` strategy: ``none``,
   ``mirrored`` over the GPUs or N logical CPU devices, ``multi-worker`` from ``TF_CONFIG``),
   the steps per epoch, and the endless, deterministic stream of global batches (order, scale
   and flip are functions of ``(seed, epoch, position)``, so it can start at any iteration),
   of orientation-grouped batches each zero-padded to the smallest of a few static canvases
   (``data.grouping.build_grouped_dataset``, ``data.canvas.training_canvases``): one compiled
   training step per canvas. With ``accumulate = N`` each global batch is cut into ``N``
   consecutive micro-batches of ``replicas x batch_per_replica`` images, which ``fit`` sees as
   ``N`` steps (one optimizer update);
2. ``build_schedule``: ``WarmupStepDecay`` with the lr scaled to the global batch;
3. ``build_model``: the preset's ``GFLV2Detector`` under ``strategy.scope()`` (frozen stages and
   BatchNorm behaviour from the preset config) with the dataset's classes, its initial weights
   (``init_weights`` or an ImageNet backbone; classes matched by name: the initial weights' order
   where they have the data's names, classifier rows kept by name, ``data.class_map``,
   ``models.transfer.with_class_names``), compiled with ``CoupledSGD``, optionally with
   XLA; the detector's training function (``models.train_function`` on TensorFlow,
   ``GFLV2Detector.compute_loss`` owns the loss);
4. ``restore_or_start``: with ``resume``, the newest valid checkpoint after checking it belongs
   to this run (``build_data`` has checked that the data has the run's class names,
   ``resumed_class_names``); the chief creates the work dir and writes ``recipe.json``;
5. ``build_callbacks``: the chief first writes the training boxes at a glance (``labels.png``,
   ``ground_truth/``); lr in the logs, COCO evaluation on the val split (with its pictures), the
   best-epoch preset, checkpoints (every N steps and every epoch end, atomic), the step timer, the
   CSV log, TensorBoard (per-epoch and per-step scalars, prediction pictures), the caller's
   callbacks, then Keras' progress bar (``loss qfl dfl giou lr``);
6. ``fit``: Keras ``fit`` over the stream, resumable exactly after a crash at any moment;
7. ``write_outputs``: the last epoch's preset folder ``WORK_DIR/last`` (``save_to_preset``;
   ``WORK_DIR/preset``, the best evaluated epoch, is written during the run), the summary of
   the best epoch, and ``history.json``.

Only the chief (``strategy.is_chief``) writes files; every worker runs every step.

Work-dir layout: ``checkpoints/ckpt-*.npz``, ``log.csv`` (per-epoch logs), ``tensorboard/`` (when
the ``tensorboard`` package is installed: ``train/`` and ``validation/`` per epoch, ``steps/`` per step,
``predictions/`` pictures), ``preset/`` (the epoch with the best held-out ``best_metric``, default
AP; the last epoch when the run never evaluates), ``last/`` (the last epoch), ``recipe.json``,
``history.json``, ``curve.png``, ``labels.png`` and ``ground_truth/`` (the training boxes,
``data.show``), ``detections/epoch_{N}.json`` (COCO results of each evaluation),
``evaluation/epoch_{N}/`` (its ``pr_curves.png``, ``confusion_matrix.png``, ``examples/``),
``data_problems.txt`` (every problem found in the data, when there is one).
"""

import dataclasses
import functools
import json
import uuid
from typing import Callable, NamedTuple

import keras
import tensorflow as tf

from gflv2_keras.data.canvas import training_canvases
from gflv2_keras.training.callbacks import (
    BEST_PRESET,
    LAST_PRESET,
    SELECTED_KEY,
    BestPresetCallback,
    LearningRateLogger,
    NonFiniteGuard,
    PredictionImageLogger,
    StepScalarLogger,
    StepTimer,
    tensorboard_available,
)
from gflv2_keras.training.checkpoint import CheckpointCallback, latest_checkpoint, restore_checkpoint
from gflv2_keras.training.curves import draw_curve
from gflv2_keras.training.optimizer import CoupledSGD
from gflv2_keras.training.options import resolve_max_boxes, resolve_run
from gflv2_keras.training.precision import dtype_policy_scope, wrap_for_precision
from gflv2_keras.training.schedule import UpdateCountSchedule, WarmupStepDecay, scale_learning_rate
from gflv2_keras.training.strategy import broadcast_from_chief, build_strategy, check_strategy, is_chief, shard_for
from gflv2_keras.training.work_dir import refuse_used_work_dir
from gflv2_keras.utils.locks import hold_folder, releases_locks

# Run facts that must be equal in a checkpoint and the run resuming from it.
RESUME_MUST_MATCH = ("steps_per_epoch", "global_batch_size", "shuffle_seed", "preset")
DATA_PROBLEMS_FILE = "data_problems.txt"
TRAINING_PICTURES = 4  # ground-truth pictures the chief writes into the work dir at the start
TENSORBOARD_IMAGES = 4  # validation images whose predictions TensorBoard shows after each evaluation


def train(recipe, work_dir=None, *, data_root=None, strategy="none", resume=False, callbacks=None, **overrides):
    """Trains a recipe: resolves and checks the run, then runs the stages of ``Trainer``.

    Args:
        recipe: a recipe dict (``recipes.load_recipe`` / ``coco_recipe``).
        work_dir: output folder (default ``work_dirs/<recipe name>``).
        data_root: folder the recipe's data paths are relative to (COCO layout by default).
        strategy: ``"none"`` | ``"mirrored"`` | ``"multi-worker"``, or a ``tf.distribute.Strategy``.
        resume: continue from the newest valid checkpoint of ``work_dir`` (starts afresh, with a
            message, when there is none). The run state in the checkpoint must match this run's
            (global batch, steps per epoch, seed, preset), else ``ValueError`` names the field.
        callbacks: extra Keras callbacks (run after the built-in ones, before the progress bar).
        **overrides: ``epochs``, ``batch_per_replica``, the data paths, ``steps_per_epoch``,
            ``cpu_devices``, ``jit_compile``, ``evaluate``, ``tensorboard``, ``save_preset``,
            ``verbose``, ``precision``, ``accumulate``, ``best_metric`` (``options.OVERRIDES`` says what
            each means). An unknown name or a bad value raises ``ValueError`` naming it before
            anything is built.

    Returns:
        dict: ``history`` (one dict per epoch since the start of the run, resumed epochs
        included), ``work_dir``, ``preset_dir`` (or None), ``model``, ``iterations``,
        ``steps_per_epoch``, ``global_batch_size``, ``train_seconds`` (this process),
        ``images_per_second`` (steady state, excluding the first step of each ``fit``).
    """
    options = resolve_run(
        recipe, work_dir, data_root=data_root, strategy=strategy, resume=resume, callbacks=callbacks, **overrides
    )
    return Trainer(options).run()


@dataclasses.dataclass(frozen=True)
class TrainingData:
    """The training split and how it is batched.

    Attributes:
        dataset: the ``DetectionDataset`` of the training split (any layout).
        global_batch_size: images per optimizer update over all replicas and accumulated
            micro-batches (``batch_per_replica x replicas x accumulate``).
        steps_per_epoch: optimizer updates of one pass over the usable images, or the
            ``steps_per_epoch`` cap.
        epochs: epochs of the run.
        canvases: the ``(H, W)`` sizes a batch is zero-padded to (the smallest that fits it).
        stream: ``stream(skip_batches)`` -> the endless ``tf.data.Dataset`` of the batches
            ``fit`` takes (``images [B, H, W, 3]`` float32 with ``(H, W)`` one of ``canvases``,
            ``targets`` of ``data.pipeline.build_dataset``; ``B = global_batch_size /
            accumulate``), starting at global batch (optimizer update) ``skip_batches``.
        val_dataset: the validation ``DetectionDataset`` (``for_training=False``), or None when
            the run does not evaluate.
        accumulate: micro-batches (``fit`` steps) per optimizer update.
        max_boxes: boxes per image of every batch (``options.resolve_max_boxes``: the recipe's,
            else the largest count of a training image, capped only for memory).
        dropped_boxes: ``{image_id: boxes}`` not trained on because the image has more than
            ``max_boxes`` (each named in ``data_problems.txt``).
    """

    dataset: object
    global_batch_size: int
    steps_per_epoch: int
    epochs: int
    canvases: tuple
    stream: Callable
    val_dataset: object = None
    accumulate: int = 1
    max_boxes: int = None
    dropped_boxes: dict = dataclasses.field(default_factory=dict)

    @property
    def micro_batch_size(self):
        """Images of one ``fit`` step over all replicas (``global_batch_size / accumulate``)."""
        return self.global_batch_size // self.accumulate

    @property
    def total_iterations(self):
        return self.steps_per_epoch * self.epochs


class RunCallbacks(NamedTuple):
    """The callbacks passed to ``fit``, and the two whose results ``train`` returns."""

    callbacks: list
    checkpointer: CheckpointCallback
    timer: StepTimer


class Trainer:
    """Runs one resolved training run (``options.TrainOptions``) stage by stage; see the module docstring.

    Building the strategy is the only work of the constructor (logical CPU devices must be set
    up before anything else touches TensorFlow). Each stage takes what the earlier ones returned,
    so a subclass can replace one (e.g. ``build_callbacks``) and keep the rest.
    """

    def __init__(self, options):
        self.options = options
        self.recipe = options.recipe
        strategy = options.strategy
        if not isinstance(strategy, tf.distribute.Strategy):
            strategy = build_strategy(strategy, options.cpu_devices)
        self.strategy = check_strategy(strategy)
        self.chief = is_chief(strategy)
        self.run_id = None  # set by restore_or_start: new, or the resumed run's

    @releases_locks
    def run(self):
        """All the stages; returns the dict documented in ``train``.

        The chief holds the work dir's lock (``utils.locks``) until the run ends: a second run on
        the same work dir refuses in one line; one that finished there meanwhile is refused as in
        ``options.resolve_run`` (unless resuming; ``work_dir.refuse_used_work_dir``).
        """
        if self.chief:
            hold_folder(self.options.work_dir, "--work-dir", recursive=True)
            if not self.options.resume:
                refuse_used_work_dir(self.options.work_dir)
        data = self.build_data()
        schedule = self.build_schedule(data)
        self.describe(data, schedule)
        model = self.build_model(data, schedule)
        history, start = self.restore_or_start(model, data, schedule)
        hooks = self.build_callbacks(data, schedule, history)
        iteration = self.fit(model, data, hooks.callbacks, start)
        preset_dir = self.write_outputs(model, data, iteration, hooks.checkpointer.history)
        return {
            "history": hooks.checkpointer.history,
            "work_dir": str(self.options.work_dir),
            "preset_dir": str(preset_dir) if preset_dir else None,
            "model": model,
            "iterations": iteration,
            "steps_per_epoch": data.steps_per_epoch,
            "global_batch_size": data.global_batch_size,
            "train_seconds": hooks.timer.total_seconds,
            "images_per_second": hooks.timer.images_per_second(),
        }

    def build_data(self):
        """Stage 1: the training split, the global batch, steps per epoch and the stream (``TrainingData``).

        Both splits are read with ``data.formats.load_detection_dataset`` (COCO JSON, Pascal VOC
        or YOLO); the validation split only when the run evaluates, with the training split's
        classes. Classes are matched by name: the run's order is that of the initial weights where
        they name the data's classes (``data.class_map.training_class_names``), or, resuming, the
        run's own (``resumed_class_names``). The chief writes every problem found in the data to
        ``WORK_DIR/data_problems.txt``.
        """
        from gflv2_keras.data.coco import check_image_files
        from gflv2_keras.data.class_map import reorder_classes, training_class_names
        from gflv2_keras.data.formats import load_detection_dataset
        from gflv2_keras.data.grouping import grouped_epoch_steps
        from gflv2_keras.data.records import largest_box_count, report_boxes_over, require_readable_images
        from gflv2_keras.models.transfer import preset_class_names

        recipe, paths = self.recipe, self.options.data_paths
        dataset = load_detection_dataset(  # images too thin for the recipe's scale are left out, named
            paths["train_data"], paths["train_split"], images=paths["train_images"], for_training=True,
            scale=tuple(recipe["scale"]),
        )
        # The run's classes, by name: the initial weights' order where they have the data's names;
        # resuming, the run's own (other names refused before anything is built).
        initial_names = preset_class_names(recipe["init_weights"]) if recipe["init_weights"] else None
        class_names = training_class_names(dataset.class_names, initial_names)
        if self.options.resume and self.chief:
            class_names = resumed_class_names(self.options.checkpoint_dir, class_names, self.strategy)
        reorder_classes(dataset, class_names)
        val_dataset = None
        if self.evaluates:
            val_dataset = load_detection_dataset(
                paths["val_data"],
                paths["val_split"],
                images=paths["val_images"],
                class_names=dataset.class_names,
                for_training=False,
            )
            if not val_dataset.records:
                raise ValueError(f"{val_dataset.annotation_file}: the validation split has no image (or pass --no-eval)")
            check_image_files(val_dataset)
            try:  # a run that could only report AP 0 is refused before it starts
                require_readable_images(val_dataset, "validation")
            except ValueError as error:
                raise ValueError(f"{error}; pass --no-eval to train without evaluation") from None
        elif self.options.evaluate and recipe["eval_every_epochs"]:
            print("[train] evaluation off: the recipe has no validation data (val_data)")
        # With accumulation the grouped batch holds the N micro-batches of one update (the official
        # global batch, one canvas); the stream cuts it into the N micro-batches fit takes.
        accumulate = self.options.accumulate
        global_batch = recipe["batch_per_replica"] * self.strategy.num_replicas_in_sync * accumulate
        steps = grouped_epoch_steps(dataset, global_batch)  # reads the image headers: finds unreadable files
        if self.options.steps_per_epoch:
            steps = min(steps, self.options.steps_per_epoch)
        canvases = tuple(training_canvases(recipe["scale"], recipe["multiscale_range"]))
        usable = dataset.usable_records()
        max_boxes, why = resolve_max_boxes(
            self.options.max_boxes, largest_box_count(usable), recipe["batch_per_replica"], canvases
        )
        dropped = report_boxes_over(dataset, max_boxes, usable, why)  # named in data_problems.txt
        self.write_data_problems(dataset, val_dataset)
        stream = functools.partial(
            training_stream,
            dataset,
            recipe,
            global_batch,
            canvases,
            max_boxes,
            self.strategy,
            accumulate=accumulate,
        )
        return TrainingData(dataset, global_batch, steps, recipe["epochs"], canvases, stream, val_dataset, accumulate,
                            max_boxes, dropped)

    @property
    def evaluates(self):
        """Whether the run evaluates on a validation split (evaluation on and validation data given)."""
        options = self.options
        return bool(options.evaluate and self.recipe["eval_every_epochs"] and options.data_paths["val_data"])

    def write_data_problems(self, *datasets):
        """The chief writes the problems of ``datasets`` (None entries skipped) to ``WORK_DIR/data_problems.txt``."""
        lines = [f"{d.annotation_file}: {p}" for d in datasets if d is not None for p in d.problem_lines()]
        if not lines or not self.chief:
            return
        path = self.options.work_dir / DATA_PROBLEMS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        print(f"[train] {len(lines)} problems found in the data (entries skipped or suspicious), listed in {path}")

    def build_schedule(self, data):
        """Stage 2: ``WarmupStepDecay`` at ``base_lr_per_16`` scaled to the global batch (linear rule)."""
        recipe = self.recipe
        return WarmupStepDecay.from_epochs(
            scale_learning_rate(recipe["base_lr_per_16"], data.global_batch_size),
            data.steps_per_epoch,
            [e for e in recipe["lr_steps"] if e < recipe["epochs"]],
            gamma=recipe["lr_gamma"],
            warmup_iters=recipe["warmup_iters"],
            warmup_ratio=recipe["warmup_ratio"],
        )

    def describe(self, data, schedule):
        """Prints the run in one line."""
        recipe, replicas, accumulate = self.recipe, self.strategy.num_replicas_in_sync, self.options.accumulate
        print(
            f"[train] recipe {recipe['name']}: preset {recipe['preset']}, {replicas} replica(s) x "
            f"{recipe['batch_per_replica']}" + (f" x {accumulate} accumulated" if accumulate > 1 else "")
            + f" = global batch {data.global_batch_size}, lr {schedule.base_lr:g}, precision {self.options.precision}, "
            f"{recipe['epochs']} epochs x {data.steps_per_epoch} steps, {len(data.canvases)} canvases up to "
            f"{max(h for h, _ in data.canvases)}x{max(w for _, w in data.canvases)}, "
            f"max_boxes {data.max_boxes}"
            + (f" ({sum(data.dropped_boxes.values())} boxes of {len(data.dropped_boxes)} images over it not "
               f"trained on, listed in {DATA_PROBLEMS_FILE})" if data.dropped_boxes else "")
            + f", XLA {'on' if self.options.jit_compile else 'off'}, work dir {self.options.work_dir}"
        )

    def build_model(self, data, schedule):
        """Stage 3: the detector under the strategy scope, initialised and compiled with ``CoupledSGD``.

        The seed is the recipe's, so the same recipe starts from the same random weights.
        """
        from gflv2_keras.models.detector import GFLV2Detector
        from gflv2_keras.models.transfer import with_class_names

        recipe = self.recipe
        # The pipeline's targets are xyxy pixels, whatever format an initialising preset was saved with.
        classes = {
            "num_classes": data.dataset.num_classes,
            "class_names": list(data.dataset.class_names),
            "bounding_box_format": "xyxy",
        }
        keras.utils.set_random_seed(int(recipe["seed"]))
        with self.strategy.scope(), dtype_policy_scope(self.options.precision):
            if recipe["init_weights"]:  # loaded as saved, then its classes matched to the data's by name
                model = GFLV2Detector.from_preset(recipe["init_weights"], load_weights=True, bounding_box_format="xyxy")
                model, kept = with_class_names(model, classes["class_names"])
                if kept != classes["class_names"]:
                    new = [n for n in classes["class_names"] if n not in kept]
                    print(f"[train] classes {classes['class_names']}: the classifier rows of {kept} come from "
                          f"{recipe['init_weights']} by name, {new} start from the official initialisation")
            else:
                model = GFLV2Detector.from_preset(recipe["preset"], load_weights=False, **classes)
            model.build_for_inference()
            if recipe["pretrained_backbone"]:
                load_pretrained_backbone(model, recipe["pretrained_backbone"])
            compile_for_training(
                model,
                schedule,
                momentum=recipe["momentum"],
                weight_decay=recipe["weight_decay"],
                jit_compile=self.options.jit_compile,
                precision=self.options.precision,
                accumulate=self.options.accumulate,
            )
        return model

    def run_state(self, data, schedule):
        """The fixed facts of the run stored in every checkpoint (``RESUME_MUST_MATCH`` among them)."""
        recipe = self.recipe
        return {
            "recipe": recipe["name"],
            "preset": recipe["preset"],
            "steps_per_epoch": data.steps_per_epoch,
            "global_batch_size": data.global_batch_size,
            "shuffle_seed": recipe["seed"],
            "epochs": recipe["epochs"],
            "precision": self.options.precision,
            "accumulate": self.options.accumulate,
            "base_lr": schedule.base_lr,
            "run_id": self.run_id,
            "class_names": list(data.dataset.class_names),  # a resume must bring the same names (any order)
        }

    def restore_or_start(self, model, data, schedule):
        """Stage 4: ``(history, start_iteration)``; restores the newest checkpoint when resuming.

        ``resume`` without a checkpoint starts from scratch with a message; a checkpoint of
        another run (``RESUME_MUST_MATCH``; class names: ``build_data``, ``resumed_class_names``)
        raises ``ValueError``. In a multi-worker run only the chief reads its checkpoints (the
        machines need not share a disk) and every worker then takes the chief's weights,
        optimizer state and iteration (``broadcast_from_chief``). The chief then creates the work
        dir and writes ``recipe.json`` (the resolved recipe, overrides applied).
        """
        history, start = [], 0
        self.run_id = uuid.uuid4().hex
        checkpoint_dir = self.options.checkpoint_dir
        if self.options.resume and self.chief:  # other workers get the chief's state below
            path = latest_checkpoint(checkpoint_dir)
            if path is None:
                print(f"[train] --resume: no checkpoint in {checkpoint_dir}, starting from scratch")
            else:
                with self.strategy.scope():
                    state = restore_checkpoint(path, model, model.optimizer)
                check_resume_state(path, state, self.run_state(data, schedule))
                history, start = state["history"], state["iteration"]
                self.run_id = state.get("run_id")  # the resumed run's checkpoints are this run's own
                steps = data.steps_per_epoch
                print(f"[train] resumed from {path}: iteration {start}, epoch {start // steps} + {start % steps} steps")
        if broadcast_from_chief(self.strategy, model.variables + model.optimizer.variables, self.chief):
            start = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
        if self.chief:
            self.options.work_dir.mkdir(parents=True, exist_ok=True)
            (self.options.work_dir / "recipe.json").write_text(json.dumps(dict(self.recipe), indent=2))
        return history, start

    def build_callbacks(self, data, schedule, history):
        """Stage 5: the ``fit`` callbacks, in order (``RunCallbacks``).

        ``NonFiniteGuard`` comes first (a NaN / Inf step stops the run before it is saved);
        ``LearningRateLogger`` and ``CocoEvaluationCallback`` (its pictures in
        ``WORK_DIR/evaluation/epoch_{N}/``) come before the checkpointer so ``lr`` and
        ``val_AP...`` enter the stored history; between them ``BestPresetCallback`` keeps
        ``WORK_DIR/preset`` at the epoch of the best ``val_{best_metric}`` (a resumed run keeps
        the best of its history). TensorBoard (when installed): Keras' per-epoch logs, the losses
        and lr of every step (``StepScalarLogger``) and each evaluation's pictures of a few fixed
        validation images (``PredictionImageLogger``). The non-chief workers keep the checkpointer
        (it counts the history) but write nothing. The chief first writes the training split's
        ``labels.png`` and ``ground_truth/`` pictures (``write_data_pictures``).
        """
        options, recipe, work_dir = self.options, self.recipe, self.options.work_dir
        self.write_data_pictures(data)
        checkpointer = CheckpointCallback(
            str(options.checkpoint_dir),
            self.run_state(data, schedule),
            every_n_steps=recipe["checkpoint_every_steps"],
            keep=recipe["keep_checkpoints"],
            history=history,
            write=self.chief,
        )
        timer = StepTimer(data.micro_batch_size)  # images per fit step
        callbacks = [NonFiniteGuard(), LearningRateLogger(schedule)]
        tensorboard = options.tensorboard and self.chief and tensorboard_available()
        self.best_preset = None
        if data.val_dataset is not None:
            from gflv2_keras.evaluation.callback import CocoEvaluationCallback

            callbacks.append(
                CocoEvaluationCallback(
                    data.val_dataset,
                    every_n_epochs=recipe["eval_every_epochs"],
                    max_images=recipe["eval_max_images"],
                    output_json=str(work_dir / "detections" / "epoch_{epoch}.json") if self.chief else None,
                    plots_dir=str(work_dir / "evaluation" / "epoch_{epoch}") if self.chief else None,
                )
            )
            if options.save_preset:
                self.best_preset = BestPresetCallback(
                    work_dir / BEST_PRESET, options.best_metric, history, write=self.chief,
                    metadata={"description": f"trained with recipe {recipe['name']}", "recipe": recipe["name"]},
                )
                callbacks.append(self.best_preset)
            if tensorboard:
                callbacks.append(PredictionImageLogger(
                    work_dir / "tensorboard" / "predictions", data.val_dataset.usable_records()[:TENSORBOARD_IMAGES],
                    data.val_dataset.class_names,
                ))
        callbacks += [checkpointer, timer]
        if self.chief:
            callbacks.append(keras.callbacks.CSVLogger(str(work_dir / "log.csv"), append=True))
        if tensorboard:
            callbacks.append(keras.callbacks.TensorBoard(str(work_dir / "tensorboard"), write_graph=False))
            callbacks.append(StepScalarLogger(work_dir / "tensorboard" / "steps", accumulate=data.accumulate))
        elif options.tensorboard and self.chief:
            print("[train] TensorBoard logs skipped: the tensorboard package is not installed (pip install tensorboard)")
        callbacks += list(options.callbacks)
        return RunCallbacks(callbacks, checkpointer, timer)

    def write_data_pictures(self, data):
        """The chief writes the training split's ``labels.png`` (box statistics) and ``ground_truth/``
        (``TRAINING_PICTURES`` images with their boxes) into the work dir (``data.show.show_data``);
        a resumed run keeps those already there."""
        from gflv2_keras.data.show import output_paths, show_data

        work_dir = self.options.work_dir
        if not self.chief or (self.options.resume and output_paths(work_dir)["labels"].exists()):
            return
        dataset = data.dataset
        written = show_data(dataset, work_dir, num_images=TRAINING_PICTURES, seed=int(self.recipe["seed"]),
                            overwrite=True, title=f"Labels of the training split {dataset.annotation_file}"
                            + (f" [{dataset.split}]" if dataset.split else ""))
        print(f"[train] the training boxes at a glance: {written['labels']}; "
              f"{len(written['pictures'])} images with their boxes in {written['ground_truth']}")

    def fit(self, model, data, callbacks, start):
        """Stage 6: ``fit`` from iteration ``start`` to the end of the run; returns the last iteration.

        A resumed, partly done epoch runs its remaining steps as a ``fit`` of its own, so that
        epoch numbers, epoch-end checkpoints and evaluations stay those of the original run.
        Iterations are optimizer updates; ``fit`` counts micro-batches (``accumulate`` per
        update), so an epoch is ``steps_per_epoch x accumulate`` ``fit`` steps.
        """
        steps, iteration = data.steps_per_epoch, start
        while iteration < data.total_iterations:
            epoch, done = divmod(iteration, steps)
            last_epoch = epoch + 1 if done else data.epochs
            model.fit(
                data.stream(iteration),
                initial_epoch=epoch,
                epochs=last_epoch,
                steps_per_epoch=(steps - done) * data.accumulate,
                callbacks=callbacks,
                verbose=self.options.verbose,
                shuffle=False,  # the stream is already in its (seeded, resumable) order
            )
            iteration = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
            if iteration < last_epoch * steps:  # fit stopped early (a callback's stop_training)
                break
        return iteration

    def write_outputs(self, model, data, iteration, history):
        """Stage 7: the chief writes ``WORK_DIR/last`` (the last epoch's preset) and makes sure of
        ``WORK_DIR/preset`` (unless ``save_preset=False``), then ``history.json`` and ``curve.png``
        (loss and held-out AP per epoch).

        ``preset/`` is the epoch with the best held-out ``best_metric``, written during the run
        (``BestPresetCallback``); a run that never evaluated writes the last epoch there too, and
        says so. The summary line names the best epoch and its value, and the last one's.

        Returns the preset folder, or None when none was written.
        """
        if not self.chief:
            return None
        work_dir, preset_dir = self.options.work_dir, None
        if self.options.save_preset:
            preset_dir, last_dir = work_dir / BEST_PRESET, work_dir / LAST_PRESET
            last_epoch = int(history[-1]["epoch"]) if history else -(-iteration // data.steps_per_epoch)
            metadata = {
                "description": f"trained with recipe {self.recipe['name']}",
                "recipe": self.recipe["name"],
                "iterations": iteration,
                "epochs": iteration / data.steps_per_epoch,
                "final_epoch_logs": history[-1] if history else {},
            }
            last = {"by": "last epoch", "epoch": last_epoch}
            model.save_to_preset(str(last_dir), metadata={**metadata, SELECTED_KEY: last}, overwrite=True)
            best = self.best_preset.best if getattr(self, "best_preset", None) is not None else None
            if best is None or not (preset_dir / "metadata.json").is_file():
                why = ("the run never evaluated" if best is None
                       else f"the folder of the best epoch {best['epoch']} is missing")
                selected = {**last, "by": f"last epoch ({why})"}
                model.save_to_preset(str(preset_dir), metadata={**metadata, SELECTED_KEY: selected}, overwrite=True)
                print(f"[train] preset folder written: {preset_dir} = the last epoch {last_epoch} ({why}), as {last_dir}")
            else:
                key = best["metric"]
                final = history[-1] if history else {}
                print(f"[train] best epoch {best['epoch']} of {last_epoch}: {key} {best['value']:.4f}, preset folder "
                      f"{preset_dir}; last epoch {last_epoch}"
                      + (f" ({key} {float(final[key]):.4f})" if key in final else " (not evaluated)") + f": {last_dir}")
        (work_dir / "history.json").write_text(json.dumps(history, indent=2))
        curve = draw_curve(history, str(work_dir / "curve.png"))
        if curve:
            print(f"[train] loss / AP curve: {curve}")
        return preset_dir


def training_stream(dataset, recipe, global_batch_size, canvases, max_boxes, strategy, skip_batches=0, accumulate=1):
    """The endless training stream from global batch ``skip_batches`` on, on the static ``canvases``.

    Batches are orientation-grouped and padded to the smallest canvas that holds them
    (``data.grouping.build_grouped_dataset``); order, grouping, scale and flip are functions of
    ``(seed, epoch, position)``, so the stream started at ``skip_batches = iteration`` is the one
    an uninterrupted run sees from that iteration (exact resume). Global batches are ``images
    [global_batch_size, H, W, 3]`` float32 with ``(H, W)`` in ``canvases`` and the targets of
    ``build_dataset`` (``max_boxes`` boxes per image, or the largest count of the batch); with
    ``accumulate = N`` each is cut into ``N`` consecutive micro-batches of ``global_batch_size /
    N`` images (same canvas), the ``fit`` steps of one optimizer update.
    """
    from gflv2_keras.data.grouping import build_grouped_dataset

    stream = build_grouped_dataset(
        dataset,
        global_batch_size,
        scale=tuple(recipe["scale"]),
        multiscale_range=recipe["multiscale_range"],
        flip_prob=recipe["flip_prob"],
        shuffle_seed=recipe["seed"],
        max_boxes=max_boxes,
        num_epochs=None,
        skip_batches=skip_batches,
        canvases=list(canvases),
    )
    if accumulate > 1:
        stream = stream.rebatch(global_batch_size // accumulate, drop_remainder=True)
    return shard_for(strategy, stream)


def compile_for_training(
    model, learning_rate, momentum=0.9, weight_decay=1e-4, jit_compile=False, precision="float32", accumulate=1
):
    """Compiles ``model`` with ``CoupledSGD`` (the official ``torch.optim.SGD``) and builds its state.

    Args:
        model: a built ``GFLV2Detector`` (under the strategy scope when there is one; built under
            the dtype policy of ``precision``, ``precision.dtype_policy_scope``).
        learning_rate: float or schedule (``WarmupStepDecay``); the schedule counts optimizer
            updates, not micro-batches.
        momentum, weight_decay: SGD momentum and coupled L2 (official 0.9 and 1e-4).
        jit_compile: compile the training step with XLA.
        precision: ``"float16"`` wraps the optimiser in ``LossScaleOptimizer``
            (``precision.wrap_for_precision``); the other names leave it as is.
        accumulate: micro-batches per optimizer update, ``N >= 1``. Every ``fit`` step is one
            micro-batch; every ``N``-th step applies ``CoupledSGD`` once to the mean of the last
            ``N`` micro-batch gradients (each micro-batch's loss with its own normalisers), so
            coupled L2 and momentum enter once per update and ``optimizer.iterations`` and the
            lr schedule count updates. TensorFlow: the detector's training function accumulates
            (``models.train_function``, ``model.accumulate_steps = N``; Keras' own option
            cannot run under ``tf.distribute`` strategies). JAX / PyTorch: Keras'
            ``gradient_accumulation_steps=N`` with the schedule wrapped in
            ``UpdateCountSchedule``. With ``LossScaleOptimizer`` on TensorFlow a non-finite mean
            gradient skips the whole update; on JAX / PyTorch Keras skips (and does not count)
            the non-finite micro-batch.

    Returns:
        the optimiser, whose variables exist (so a checkpoint can be restored into them).
    """
    if not model.built:
        raise ValueError("compile_for_training: build the model first (model.build_for_inference())")
    if int(accumulate) != accumulate or accumulate < 1:
        raise ValueError(f"compile_for_training: accumulate must be an integer >= 1, got {accumulate!r}")
    accumulate, options = int(accumulate), {}
    in_train_function = keras.config.backend() == "tensorflow"
    if accumulate > 1 and not in_train_function:
        options["gradient_accumulation_steps"] = accumulate
        if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
            learning_rate = UpdateCountSchedule(learning_rate, accumulate)
    optimizer = CoupledSGD(learning_rate, momentum=momentum, weight_decay=weight_decay, **options)
    optimizer = wrap_for_precision(optimizer, precision)
    model.accumulate_steps = accumulate if in_train_function else 1  # read by models.train_function
    model.compile(optimizer=optimizer, jit_compile=bool(jit_compile))
    optimizer.build(model.trainable_variables)
    return optimizer


def load_pretrained_backbone(model, path):
    """Load ImageNet classification weights (a ``.pth``; needs PyTorch) into ``model.backbone``."""
    from gflv2_keras.convert import load_backbone_weights, read_official_checkpoint

    state_dict, _ = read_official_checkpoint(path)
    report = load_backbone_weights(model, state_dict, source=str(path))
    print(f"[train] backbone initialised from {path}: {report.tensors} tensors, {report.parameters:,} parameters")


def check_resume_state(path, state, run_state):
    """Raises ``ValueError`` naming the first ``RESUME_MUST_MATCH`` field where the checkpoint differs."""
    for field in RESUME_MUST_MATCH:
        if state.get(field) != run_state[field]:
            raise ValueError(
                f"{path}: cannot resume exactly, checkpoint {field} = {state.get(field)!r} but this run has "
                f"{run_state[field]!r} (use the same recipe, batch size, replicas and data)"
            )


def resumed_class_names(checkpoint_dir, class_names, strategy):
    """The class order of a resumed run: ``class_names`` (the data's, by name), or the run's own.

    The newest checkpoint of ``checkpoint_dir`` records the run's ``class_names`` (checkpoints of
    earlier versions, or none at all: ``class_names`` as they are). Other names raise
    ``ValueError`` in one line naming the missing and new ones; the same names in another order
    (the data rewritten in another layout) give the run's order, which the data is relabelled to
    (``data.class_map.reorder_classes``) and the model built in, so the checkpoint's classifier rows
    keep their classes. A multi-worker run refuses that case (only the chief reads checkpoints).
    """
    from gflv2_keras.data.class_map import describe_difference
    from gflv2_keras.training.checkpoint import read_checkpoint

    path = latest_checkpoint(checkpoint_dir)
    recorded = None if path is None else read_checkpoint(path)[0].get("class_names")
    if recorded is None or list(recorded) == list(class_names):
        return class_names
    if sorted(recorded) != sorted(class_names):
        raise ValueError(
            f"{path}: cannot resume: the run was trained for the classes {recorded}, the data has {class_names} "
            f"({describe_difference(recorded, class_names)}; classes are matched by name)"
        )
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        raise ValueError(
            f"{path}: cannot resume with --strategy multi-worker: the data lists the run's classes in another "
            f"order ({class_names}, the run {recorded}); give the data its classes in the run's order"
        )
    print(f"[train] --resume: the data lists the classes in another order; matched by name to the run's {recorded}")
    return list(recorded)
