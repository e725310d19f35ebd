"""The trainer's own Keras callbacks: lr in the logs, the non-finite guard, the step timer, the best-epoch
preset (``BestPresetCallback``) and the TensorBoard extras (per-step scalars, prediction pictures)."""

import importlib.util
import math
import time

import keras

from gflv2_keras.evaluation.callback import CocoEvaluationCallback


class LearningRateLogger(keras.callbacks.Callback):
    """Adds ``lr``, the learning rate of the step just taken, to the batch and epoch logs."""

    def __init__(self, schedule):
        super().__init__()
        self.schedule = schedule

    def current_lr(self):
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations)) - 1
        return float(keras.ops.convert_to_numpy(self.schedule(max(step, 0))))

    def on_train_batch_end(self, batch, logs=None):
        if logs is not None:
            logs["lr"] = self.current_lr()

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["lr"] = self.current_lr()


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops the run at the first step whose loss (or a loss term) is NaN or Inf.

    Placed before the checkpointer, it raises ``checkpoint.NonFiniteError`` (a ``ValueError``:
    one ``gflv2 train: error:`` line and exit 2 from the CLI) naming the step, before that step
    can be saved; ``--resume`` then continues from the last good checkpoint. A non-finite
    gradient with a finite loss makes non-finite weights, which ``save_checkpoint`` refuses.
    """

    def on_train_batch_end(self, batch, logs=None):
        from gflv2_keras.training.checkpoint import NonFiniteError

        for name, value in sorted((logs or {}).items(), key=lambda item: item[0] != "loss"):  # loss first
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if not math.isfinite(number):
                step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
                raise NonFiniteError(
                    f"non-finite {name} = {number} at step {step}: the run stopped before saving it; "
                    "--resume (resume=True) continues from the last good checkpoint"
                )


class StepTimer(keras.callbacks.Callback):
    """Wall time of training steps; throughput excludes the first step of each fit (tracing).

    Args:
        global_batch_size: images per step over all replicas.
    """

    def __init__(self, global_batch_size):
        super().__init__()
        self.global_batch_size = global_batch_size
        self.total_seconds = 0.0
        self.steady_seconds = 0.0
        self.steady_steps = 0
        self.first_step = True
        self.step_started = None

    def on_train_begin(self, logs=None):
        self.first_step = True

    def on_train_batch_begin(self, batch, logs=None):
        self.step_started = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        elapsed = time.perf_counter() - self.step_started
        self.total_seconds += elapsed
        if not self.first_step:
            self.steady_seconds += elapsed
            self.steady_steps += 1
        self.first_step = False

    def images_per_second(self):
        """Steady-state images per second, or None before a second step of a fit."""
        if not self.steady_steps:
            return None
        return self.global_batch_size * self.steady_steps / self.steady_seconds


def tensorboard_available():
    """Whether ``keras.callbacks.TensorBoard`` can write (the ``tensorboard`` package is installed)."""
    return importlib.util.find_spec("tensorboard") is not None


# The held-out metrics that can choose WORK_DIR/preset: those the evaluation callback logs.
BEST_METRICS = CocoEvaluationCallback.LOGGED
BEST_PRESET, LAST_PRESET = "preset", "last"
# The record of why a preset folder holds its weights, in its ``metadata.json``.
SELECTED_KEY = "selected"


def best_epoch(history, metric="AP", prefix="val_"):
    """``{"metric", "epoch", "value"}`` of the ``history`` entry with the highest ``prefix + metric``
    (the earliest of equal values), or None when no entry holds it (no evaluation yet)."""
    key = prefix + metric
    scored = [h for h in history or () if key in h and math.isfinite(_number(h[key]))]
    if not scored:
        return None
    best = max(scored, key=lambda h: (_number(h[key]), -h["epoch"]))
    return {"metric": key, "epoch": int(best["epoch"]), "value": _number(best[key])}


def recorded_selection(preset_dir):
    """The ``selected`` record of a preset folder's ``metadata.json`` (``BestPresetCallback``), or None."""
    import json
    from pathlib import Path

    try:
        return json.loads((Path(preset_dir) / "metadata.json").read_text()).get(SELECTED_KEY)
    except (OSError, ValueError, AttributeError):
        return None


class BestPresetCallback(keras.callbacks.Callback):
    """Keeps a preset folder at the epoch with the best held-out metric (``WORK_DIR/preset``).

    After each epoch whose logs hold ``prefix + metric`` (an evaluation ran:
    ``CocoEvaluationCallback`` must come before this callback), the model is written to
    ``directory`` when the value is higher than the best so far (the earliest of equal values
    stays). The folder's ``metadata.json`` records ``selected``: ``{"by", "metric", "epoch",
    "value"}``. Place it before the checkpointer: a run killed between the two repeats that epoch
    on resume (exactly), so the folder never holds an epoch the checkpoints do not know.

    Resume: the best so far is the epoch recorded in ``directory``'s metadata (the weights that
    are on disk) with its value from ``history`` (the checkpoint's per-epoch logs; a metric
    changed on resume is looked up there), else the best epoch of ``history``. A resumed run
    therefore keeps an earlier best.

    Args:
        directory: the preset folder.
        metric: one of ``BEST_METRICS``.
        history: per-epoch logs of the epochs before this run (from a resumed checkpoint).
        metadata: dict added to the folder's ``metadata.json`` (recipe, ...).
        write: whether this process writes (the chief); the others only track the best.
        prefix: the evaluation callback's log prefix.
        save: ``save(model, directory, metadata)`` (default: ``model.save_to_preset(directory,
            metadata=metadata, overwrite=True)``, atomic).
    """

    def __init__(self, directory, metric="AP", history=None, metadata=None, write=True, prefix="val_", save=None):
        super().__init__()
        if metric not in BEST_METRICS:
            raise ValueError(f"BestPresetCallback: metric must be one of {BEST_METRICS}, got {metric!r}")
        self.directory = directory
        self.metric, self.prefix, self.key = metric, prefix, prefix + metric
        self.metadata = dict(metadata or {})
        self.write = write
        self.save = save or _save_preset
        self.best = self.resumed_best(history)

    def resumed_best(self, history):
        """The best so far of a run resumed with ``history`` (see the class docstring)."""
        selected = recorded_selection(self.directory)
        if selected and "epoch" in selected:
            entry = next((h for h in history or () if h.get("epoch") == selected["epoch"]), {})
            if self.key in entry:
                return {"metric": self.key, "epoch": int(selected["epoch"]), "value": _number(entry[self.key])}
            if selected.get("metric") == self.key and "value" in selected:
                return {"metric": self.key, "epoch": int(selected["epoch"]), "value": _number(selected["value"])}
        return best_epoch(history, self.metric, self.prefix)

    def on_epoch_end(self, epoch, logs=None):
        if not logs or self.key not in logs:
            return
        value = _number(logs[self.key])
        if not math.isfinite(value) or (self.best is not None and value <= self.best["value"]):
            return
        self.best = {"metric": self.key, "epoch": epoch + 1, "value": value}
        if self.write:
            iteration = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
            metadata = {
                **self.metadata,
                "iterations": iteration,
                "epochs": epoch + 1,
                "final_epoch_logs": {k: _plain(v) for k, v in logs.items()},
                SELECTED_KEY: {"by": f"best held-out {self.metric}", **self.best},
            }
            self.save(self.model, self.directory, metadata)
            print(f"Epoch {epoch + 1}: best {self.key} so far ({value:.4f}): preset written to {self.directory}")


def _save_preset(model, directory, metadata):
    model.save_to_preset(str(directory), metadata=metadata, overwrite=True)  # the run's own folder


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _plain(value):
    """A log value as JSON holds it: a float, else its text."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


class StepScalarLogger(keras.callbacks.Callback):
    """TensorBoard scalars per optimizer update: ``step/loss``, ``step/qfl``, ``step/dfl``, ``step/giou``, ``step/lr``.

    Keras' ``TensorBoard(update_freq=N)`` logs the *running mean* of the epoch at each batch;
    these are the values of the steps themselves. Keras' batch logs are running means
    ``m_k`` over the ``k`` batches of the epoch so far (the trainer's batches all hold the
    same number of images), so the mean over batches ``j+1..k`` is ``(k m_k - j m_j) / (k - j)``:
    with ``every_n_steps=1`` each point is one update (the mean of its ``accumulate``
    micro-batches). ``step/lr`` is the ``lr`` ``LearningRateLogger`` put in the logs (it must come
    before this callback). The step axis is the optimizer iteration.

    Written with ``tf.summary`` (TensorBoard's event files are TensorFlow's format: TensorFlow
    is the point here, whatever the Keras backend) to ``log_dir`` (a run folder of its own,
    e.g. ``WORK_DIR/tensorboard/steps``).

    Args:
        log_dir: the event files' folder.
        every_n_steps: one point per this many optimizer updates.
        accumulate: ``fit`` steps (micro-batches) per optimizer update.
        names: the logged values (``lr`` is taken as is, the others de-averaged).
    """

    NAMES = ("loss", "qfl", "dfl", "giou", "lr")

    def __init__(self, log_dir, every_n_steps=1, accumulate=1, names=NAMES):
        super().__init__()
        if every_n_steps < 1 or accumulate < 1:
            raise ValueError(f"StepScalarLogger: every_n_steps and accumulate must be >= 1, got "
                             f"{every_n_steps}, {accumulate}")
        self.log_dir = str(log_dir)
        self.every_n_steps, self.accumulate, self.names = int(every_n_steps), int(accumulate), tuple(names)
        self.writer = None
        self.start_iteration = 0
        self.fit_steps = 0  # fit steps (micro-batches) since on_train_begin
        self.epoch_batches = 0  # batches of the current epoch
        self.previous = (0, {})  # (batches, running means) at the previous point of this epoch

    def on_train_begin(self, logs=None):
        import tensorflow as tf

        if self.writer is None:
            self.writer = tf.summary.create_file_writer(self.log_dir)
        self.start_iteration = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        self.fit_steps = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_batches, self.previous = 0, (0, {})  # Keras resets the running means here

    def on_train_batch_end(self, batch, logs=None):
        import tensorflow as tf

        self.fit_steps += 1
        self.epoch_batches += 1
        if self.fit_steps % (self.accumulate * self.every_n_steps) or not logs:
            return
        means = {name: _number(logs[name]) for name in self.names if name in logs}
        count, before = self.epoch_batches, self.previous
        step = self.start_iteration + self.fit_steps // self.accumulate
        with self.writer.as_default():
            for name, mean in means.items():
                value = mean
                if name != "lr" and name in before[1]:
                    value = (count * mean - before[0] * before[1][name]) / (count - before[0])
                tf.summary.scalar(f"step/{name}", value, step=step)
        self.previous = (count, means)

    def on_train_end(self, logs=None):
        if self.writer is not None:
            self.writer.flush()


class PredictionImageLogger(keras.callbacks.Callback):
    """TensorBoard pictures of each evaluation: ground truth and predictions on a few fixed val images.

    After each epoch whose logs hold ``key`` (an evaluation ran: place it after
    ``CocoEvaluationCallback``), the model detects on ``records`` and each image is written
    as ``predictions/NN_STEM``: ground truth left (``data.show.draw_ground_truth``), detections
    scored at least ``min_score`` right (``inference.draw.draw_detections``), at the optimizer
    iteration. Written with ``tf.summary.image`` (TensorFlow's event format: TensorFlow is the
    point here) to ``log_dir``.

    Args:
        log_dir: the event files' folder (e.g. ``WORK_DIR/tensorboard/predictions``).
        records: the images (``data.records`` dicts; read with ``image_io.read_record_image``).
        class_names: names indexed by class index.
        min_score: the smallest confidence drawn.
        key: the log entry that says an evaluation ran.
    """

    def __init__(self, log_dir, records, class_names, min_score=0.3, key="val_AP"):
        super().__init__()
        self.log_dir, self.records, self.class_names = str(log_dir), list(records), list(class_names)
        self.min_score, self.key = min_score, key
        self.writer = None

    def on_epoch_end(self, epoch, logs=None):
        import numpy as np
        import tensorflow as tf

        from gflv2_keras.data.image_io import ImageReadError, read_record_image
        from gflv2_keras.data.show import draw_ground_truth
        from gflv2_keras.evaluation.plots import display_scale, safe_stem, scaled_image
        from gflv2_keras.inference.draw import draw_detections, side_by_side

        if not logs or self.key not in logs:
            return
        if self.writer is None:
            self.writer = tf.summary.create_file_writer(self.log_dir)
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        for index, record in enumerate(self.records, 1):
            try:
                pixels = read_record_image(record)
            except ImageReadError:
                continue  # already named by the evaluation
            detections = self.model.detect(pixels, bounding_box_format="xyxy")
            scale = display_scale(pixels.shape[1], pixels.shape[0])
            truth, _ = draw_ground_truth(pixels, record, self.class_names, scale)
            shown = {**detections, "boxes": np.asarray(detections["boxes"]) * scale}
            kept = int(np.sum((np.asarray(detections["confidence"]) >= self.min_score)
                              & (np.asarray(detections["labels"]) >= 0)))  # as draw_detections
            predicted = draw_detections(scaled_image(pixels, scale), shown, self.class_names, self.min_score)
            picture = side_by_side([truth, predicted], [
                f"ground truth: {len(record['labels'])} boxes (image id {record['image_id']})",
                f"epoch {epoch + 1}: {kept} detections >= {self.min_score:g}",
            ])
            with self.writer.as_default():
                tf.summary.image(f"predictions/{index:02d}_{safe_stem(record['file_name'])}",
                                 np.asarray(picture, np.uint8)[None], step=step)
        self.writer.flush()
