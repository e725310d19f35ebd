"""The trainer's own Keras callbacks: the learning rate in the logs, the non-finite guard and the step timer."""

import importlib.util
import math
import time

import keras


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
