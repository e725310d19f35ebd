"""The one trainer of every recipe: strategy, data, model, optimiser, callbacks, ``fit``, preset.

``train(recipe, data_root, ...)`` runs a recipe (``gflv2_keras.recipes``) end to end:

1. a ``tf.distribute`` strategy (``none``, ``mirrored`` over the GPUs or N logical CPU devices,
   ``multi-worker`` from ``TF_CONFIG``);
2. the COCO-layout data (``data.coco`` + ``data.pipeline``): one endless, deterministic stream of
   global batches (order, scale and flip are functions of ``(seed, epoch, position)``), padded
   to a fixed canvas so the training step has static shapes (``pad_to_canvas``);
3. the preset's ``GFLV2Detector`` under ``strategy.scope()`` (frozen stages and BatchNorm
   behaviour come from the preset config), with the dataset's classes;
4. ``compile`` with ``CoupledSGD`` + ``WarmupStepDecay`` (lr scaled to the global batch),
   optional XLA, the stock ``train_step`` (``GFLV2Detector.compute_loss`` owns the loss);
5. callbacks: lr in the logs, COCO evaluation on the val split, checkpoints (every N steps and
   every epoch end, atomic), TensorBoard, Keras' progress bar (``loss qfl dfl giou lr``);
6. ``fit``, resumable exactly (``resume=True``) after a crash at any moment;
7. the trained preset folder ``WORK_DIR/preset`` (``save_to_preset``).

Work-dir layout: ``checkpoints/ckpt-*.npz``, ``log.csv`` (per-epoch logs), ``tensorboard/`` (when
the ``tensorboard`` package is installed), ``preset/``, ``recipe.json``, ``history.json``,
``detections/epoch_{N}.json`` (COCO results of each evaluation).
"""

import json
import os
import time
from pathlib import Path

import keras
import tensorflow as tf

from gflv2_keras.data.canvas import pad_to_canvas, training_canvas
from gflv2_keras.training.checkpoint import CheckpointCallback, latest_checkpoint, restore_checkpoint
from gflv2_keras.training.optimizer import CoupledSGD
from gflv2_keras.training.schedule import WarmupStepDecay, scale_learning_rate

STRATEGIES = ("none", "mirrored", "multi-worker")
# Boxes per image when XLA needs fixed shapes and the recipe does not set max_boxes (COCO
# train2017 has at most 93 non-crowd boxes in an image).
XLA_MAX_BOXES = 100


def configure_cpu_devices(num_devices):
    """Splits the physical CPU into ``num_devices`` logical devices (testing ``mirrored`` on CPU).

    Must run before TensorFlow initialises its devices (before any op or strategy); raises
    ``RuntimeError`` saying so otherwise.
    """
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(int(num_devices))]
        )
    except RuntimeError as error:
        raise RuntimeError(
            f"cannot split the CPU into {num_devices} logical devices: TensorFlow is already initialised "
            f"(call configure_cpu_devices first, e.g. in a fresh process): {error}"
        ) from error


def build_strategy(kind="none", cpu_devices=None):
    """A ``tf.distribute.Strategy``.

    Args:
        kind: ``"none"`` (default strategy, one device), ``"mirrored"`` (all GPUs, or the CPU
            split into ``cpu_devices`` logical devices), ``"multi-worker"``
            (``MultiWorkerMirroredStrategy``; cluster and task from ``TF_CONFIG``).
        cpu_devices: number of logical CPU devices for ``mirrored`` without GPUs.
    """
    if kind not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {kind!r}")
    if cpu_devices:
        configure_cpu_devices(cpu_devices)
    if kind == "none":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        if tf.config.list_physical_devices("GPU") and not cpu_devices:
            return tf.distribute.MirroredStrategy()
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices=devices)
    if "TF_CONFIG" not in os.environ:
        raise ValueError("strategy 'multi-worker' needs the TF_CONFIG environment variable (cluster and task)")
    return tf.distribute.MultiWorkerMirroredStrategy()


def is_chief(strategy):
    """Whether this process writes files (the chief, or worker 0 when there is no chief)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return not has_chief and resolver.task_type == "worker" and resolver.task_id == 0


class LearningRateLogger(keras.callbacks.Callback):
    """Adds ``lr``, the learning rate of the step just taken, to the batch and epoch logs."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule

    def _lr(self):
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) - 1
        return float(keras.ops.convert_to_numpy(self.schedule(max(step, 0))))

    def on_train_batch_end(self, batch, logs=None):
        if logs is not None:
            logs["lr"] = self._lr()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = self._lr()


def resolve_data_paths(recipe, data_root=None, **overrides):
    """Absolute ``train_annotations``, ``train_images``, ``val_annotations``, ``val_images``.

    Recipe paths are relative to ``data_root``; a non-None entry of ``overrides`` replaces one
    (absolute or relative to the current folder). Missing training files raise
    ``FileNotFoundError`` naming the file and the recipe field.
    """
    paths = {}
    for field in ("train_annotations", "train_images", "val_annotations", "val_images"):
        if overrides.get(field):
            paths[field] = os.path.abspath(overrides[field])
        elif data_root is not None:
            paths[field] = os.path.abspath(os.path.join(data_root, recipe[field]))
        else:
            raise ValueError(f"no data: pass data_root (or --data-root), or the {field} path")
    for field in ("train_annotations", "train_images"):
        if not os.path.exists(paths[field]):
            raise FileNotFoundError(
                f"{paths[field]} does not exist (recipe field {field!r} = {recipe[field]!r} under "
                f"data root {data_root}); COCO layout: DATA_ROOT/annotations/instances_train2017.json "
                f"and DATA_ROOT/train2017/"
            )
    return paths


def train(
    recipe,
    data_root=None,
    work_dir=None,
    epochs=None,
    batch_per_replica=None,
    resume=False,
    strategy="none",
    cpu_devices=None,
    jit_compile=False,
    train_annotations=None,
    train_images=None,
    val_annotations=None,
    val_images=None,
    steps_per_epoch=None,
    evaluate=True,
    tensorboard=True,
    save_preset=True,
    callbacks=None,
    verbose="auto",
):
    """Trains a recipe; see the module docstring for what happens.

    Args:
        recipe: a recipe dict (``recipes.load_recipe`` / ``coco_recipe``).
        data_root: folder the recipe's data paths are relative to (COCO layout by default).
        work_dir: output folder (default ``work_dirs/<recipe name>``).
        epochs, batch_per_replica: override the recipe's.
        resume: continue from the newest valid checkpoint of ``work_dir`` (starts afresh, with a
            message, when there is none). The run state in the checkpoint must match this run's
            (global batch, steps per epoch, seed), else ``ValueError`` names the field.
        strategy: ``"none"`` | ``"mirrored"`` | ``"multi-worker"``, or a ``tf.distribute.Strategy``.
        cpu_devices: logical CPU devices for ``mirrored`` (testing without GPUs).
        jit_compile: compile the training step with XLA (fixed box count: ``max_boxes``).
        train_annotations, train_images, val_annotations, val_images: explicit paths.
        steps_per_epoch: cap on steps per epoch (smoke tests, benchmarks); default: one pass.
        evaluate: run the COCO evaluation callback (recipe ``eval_every_epochs``).
        tensorboard: write TensorBoard logs.
        save_preset: write ``WORK_DIR/preset`` at the end.
        callbacks: extra Keras callbacks (run after the built-in ones, before the progress bar).
        verbose: ``fit`` verbosity.

    Returns:
        dict: ``history`` (one dict per epoch since the start of the run, resumed epochs
        included), ``work_dir``, ``preset_dir`` (or None), ``model``, ``iterations``,
        ``steps_per_epoch``, ``global_batch_size``, ``train_seconds`` (this process),
        ``images_per_second`` (steady state, excluding the first step of each ``fit``).
    """
    from gflv2_keras.data.coco import load_coco
    from gflv2_keras.data.pipeline import build_dataset
    from gflv2_keras.data.pipeline import steps_per_epoch as count_steps
    from gflv2_keras.models.detector import GFLV2Detector

    recipe = dict(recipe)
    if epochs is not None:
        recipe["epochs"] = int(epochs)
    if batch_per_replica is not None:
        recipe["batch_per_replica"] = int(batch_per_replica)
    work_dir = Path(work_dir or Path("work_dirs") / recipe["name"]).absolute()
    strategy = strategy if isinstance(strategy, tf.distribute.Strategy) else build_strategy(strategy, cpu_devices)
    chief = is_chief(strategy)
    replicas = strategy.num_replicas_in_sync
    global_batch = recipe["batch_per_replica"] * replicas

    paths = resolve_data_paths(
        recipe,
        data_root,
        train_annotations=train_annotations,
        train_images=train_images,
        val_annotations=val_annotations,
        val_images=val_images,
    )
    train_data = load_coco(paths["train_annotations"], paths["train_images"], for_training=True)
    full_epoch_steps = count_steps(train_data, global_batch)
    steps = min(full_epoch_steps, steps_per_epoch) if steps_per_epoch else full_epoch_steps
    total_iterations = steps * recipe["epochs"]
    base_lr = scale_learning_rate(recipe["base_lr_per_16"], global_batch)
    schedule = WarmupStepDecay.from_epochs(
        base_lr,
        steps,
        [e for e in recipe["lr_steps"] if e < recipe["epochs"]],
        gamma=recipe["lr_gamma"],
        warmup_iters=recipe["warmup_iters"],
        warmup_ratio=recipe["warmup_ratio"],
    )
    max_boxes = recipe["max_boxes"] or (XLA_MAX_BOXES if jit_compile else None)
    canvas = training_canvas(recipe["scale"], recipe["multiscale_range"])
    run_state = {
        "recipe": recipe["name"],
        "preset": recipe["preset"],
        "steps_per_epoch": steps,
        "global_batch_size": global_batch,
        "shuffle_seed": recipe["seed"],
        "epochs": recipe["epochs"],
        "base_lr": base_lr,
    }
    print(
        f"[train] recipe {recipe['name']}: preset {recipe['preset']}, {replicas} replica(s) x "
        f"{recipe['batch_per_replica']} = global batch {global_batch}, lr {base_lr:g}, {recipe['epochs']} epochs x "
        f"{steps} steps, canvas {canvas[0]}x{canvas[1]}, XLA {'on' if jit_compile else 'off'}, work dir {work_dir}"
    )

    keras.utils.set_random_seed(int(recipe["seed"]))  # the same initial weights for the same recipe
    with strategy.scope():
        overrides = {"num_classes": train_data.num_classes, "class_names": list(train_data.class_names)}
        if recipe["init_weights"]:
            model = GFLV2Detector.from_preset(recipe["init_weights"], load_weights=True, **overrides)
        else:
            model = GFLV2Detector.from_preset(recipe["preset"], load_weights=False, **overrides)
        model.build_for_inference()
        if recipe["pretrained_backbone"]:
            load_pretrained_backbone(model, recipe["pretrained_backbone"])
        optimizer = CoupledSGD(schedule, momentum=recipe["momentum"], weight_decay=recipe["weight_decay"])
        model.compile(optimizer=optimizer, jit_compile=bool(jit_compile))
        optimizer.build(model.trainable_variables)

        checkpoint_dir = work_dir / "checkpoints"
        history, start = [], 0
        if resume:
            path = latest_checkpoint(checkpoint_dir)
            if path is None:
                print(f"[train] --resume: no checkpoint in {checkpoint_dir}, starting from scratch")
            else:
                state = restore_checkpoint(path, model, optimizer)
                _check_resume_state(path, state, run_state)
                history, start = state["history"], state["iteration"]
                print(f"[train] resumed from {path}: iteration {start}, epoch {start // steps} + {start % steps} steps")

    if chief:
        work_dir.mkdir(parents=True, exist_ok=True)
        (work_dir / "recipe.json").write_text(json.dumps(recipe, indent=2))

    checkpointer = CheckpointCallback(
        str(checkpoint_dir),
        run_state,
        every_n_steps=recipe["checkpoint_every_steps"],
        keep=recipe["keep_checkpoints"],
        history=history,
        write=chief,
    )
    timer = _StepTimer(global_batch)
    all_callbacks = [LearningRateLogger(schedule)]
    if evaluate and recipe["eval_every_epochs"]:
        from gflv2_keras.evaluation.callback import CocoEvaluationCallback

        all_callbacks.append(
            CocoEvaluationCallback(
                paths["val_annotations"],
                paths["val_images"],
                every_n_epochs=recipe["eval_every_epochs"],
                max_images=recipe["eval_max_images"],
                output_json=str(work_dir / "detections" / "epoch_{epoch}.json") if chief else None,
            )
        )
    all_callbacks += [checkpointer, timer]
    if chief:
        all_callbacks.append(keras.callbacks.CSVLogger(str(work_dir / "log.csv"), append=True))
    if tensorboard and chief:
        if _tensorboard_available():
            all_callbacks.append(keras.callbacks.TensorBoard(str(work_dir / "tensorboard"), write_graph=False))
        else:
            print("[train] TensorBoard logs skipped: the tensorboard package is not installed (pip install tensorboard)")
    all_callbacks += list(callbacks or [])

    def stream(skip):
        data = build_dataset(
            train_data,
            global_batch,
            scale=tuple(recipe["scale"]),
            multiscale_range=recipe["multiscale_range"],
            flip_prob=recipe["flip_prob"],
            training=True,
            shuffle_seed=recipe["seed"],
            max_boxes=max_boxes,
            num_epochs=None,
            skip_batches=skip,
        )
        data = pad_to_canvas(data, canvas)
        if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
            data = data.with_options(options)
        return data

    iteration = start
    while iteration < total_iterations:
        epoch, done = divmod(iteration, steps)
        # A resumed, partly done epoch runs its remaining steps as a fit of its own, so that
        # epoch numbers, epoch-end checkpoints and evaluations stay those of the original run.
        last_epoch = epoch + 1 if done else recipe["epochs"]
        model.fit(
            stream(iteration),
            initial_epoch=epoch,
            epochs=last_epoch,
            steps_per_epoch=steps - done,
            callbacks=all_callbacks,
            verbose=verbose,
            shuffle=False,  # the stream is already in its (seeded, resumable) order
        )
        iteration = int(keras.ops.convert_to_numpy(optimizer.iterations))
        if iteration < last_epoch * steps:  # fit stopped early (a callback's stop_training)
            break

    preset_dir = None
    if save_preset and chief:
        preset_dir = work_dir / "preset"
        final = checkpointer.history[-1] if checkpointer.history else {}
        metadata = {
            "description": f"trained with recipe {recipe['name']}",
            "recipe": recipe["name"],
            "iterations": iteration,
            "epochs": iteration / steps,
            "final_epoch_logs": final,
        }
        model.save_to_preset(str(preset_dir), metadata=metadata, overwrite=True)  # the run's own folder
        print(f"[train] preset folder written: {preset_dir}")
    if chief:
        (work_dir / "history.json").write_text(json.dumps(checkpointer.history, indent=2))
    return {
        "history": checkpointer.history,
        "work_dir": str(work_dir),
        "preset_dir": str(preset_dir) if preset_dir else None,
        "model": model,
        "iterations": iteration,
        "steps_per_epoch": steps,
        "global_batch_size": global_batch,
        "train_seconds": timer.total_seconds,
        "images_per_second": timer.images_per_second(),
    }


def load_pretrained_backbone(model, path):
    """Load ImageNet classification weights (a ``.pth``; needs PyTorch) into ``model.backbone``."""
    from gflv2_keras.convert import load_backbone_weights, read_official_checkpoint

    state_dict, _ = read_official_checkpoint(path)
    report = load_backbone_weights(model, state_dict, source=str(path))
    print(f"[train] backbone initialised from {path}: {report.tensors} tensors, {report.parameters:,} parameters")


def _tensorboard_available():
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def _check_resume_state(path, state, run_state):
    for field in ("steps_per_epoch", "global_batch_size", "shuffle_seed", "preset"):
        if state.get(field) != run_state[field]:
            raise ValueError(
                f"{path}: cannot resume exactly, checkpoint {field} = {state.get(field)!r} but this run has "
                f"{run_state[field]!r} (use the same recipe, batch size, replicas and data)"
            )


class _StepTimer(keras.callbacks.Callback):
    """Wall time of training steps; throughput excludes the first step of each fit (tracing)."""

    def __init__(self, global_batch):
        super().__init__()
        self.global_batch = global_batch
        self.total_seconds = 0.0
        self.steady_seconds = 0.0
        self.steady_steps = 0
        self._first = True
        self._start = None

    def on_train_begin(self, logs=None):
        self._first = True

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        elapsed = time.perf_counter() - self._start
        self.total_seconds += elapsed
        if not self._first:
            self.steady_seconds += elapsed
            self.steady_steps += 1
        self._first = False

    def images_per_second(self):
        return self.global_batch * self.steady_steps / self.steady_seconds if self.steady_steps else None
