"""The official learning-rate policy: mmcv linear warm-up, then step decay by epoch (``mmcv/runner/hooks/lr_updater.py``)."""

import keras
from keras import ops

# The official recipe: lr 0.01 for 16 images per iteration (8 GPUs x 2).
REFERENCE_BATCH_SIZE = 16


def scale_learning_rate(base_lr_per_16, global_batch_size):
    """Linear scaling rule: ``base_lr_per_16 * global_batch_size / 16``."""
    if global_batch_size < 1:
        raise ValueError(f"scale_learning_rate: global_batch_size must be >= 1, got {global_batch_size}")
    return float(base_lr_per_16) * global_batch_size / REFERENCE_BATCH_SIZE


@keras.saving.register_keras_serializable(package="gflv2_keras")
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """mmcv ``StepLrUpdaterHook`` with ``warmup='linear'``, on the optimiser's iteration count.

    For iteration ``t`` (0-based, the value of ``optimizer.iterations`` when the step runs)::

        regular(t) = base_lr * gamma ** (number of milestones m with t >= m)
        lr(t) = regular(t) * (1 - (1 - t / warmup_iters) * (1 - warmup_ratio))   if t < warmup_iters
              = regular(t)                                                        otherwise

    so ``lr(0) = base_lr * warmup_ratio`` and the warm-up reaches ``base_lr`` at
    ``warmup_iters``. mmdet steps by epoch (``by_epoch=True``): an epoch milestone ``e`` is the
    iteration ``e * steps_per_epoch`` (``from_epochs``).

    Args:
        base_lr: learning rate after warm-up, before decay (already scaled to the batch size).
        milestones: increasing iteration indices where the lr is multiplied by ``gamma``.
        gamma: decay factor (0.1).
        warmup_iters: length of the linear warm-up in iterations (500); 0 disables it.
        warmup_ratio: starting fraction of the warm-up (0.001).
    """

    def __init__(self, base_lr, milestones, gamma=0.1, warmup_iters=500, warmup_ratio=0.001):
        milestones = [int(m) for m in milestones]
        if any(b <= a for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"WarmupStepDecay: milestones must be strictly increasing, got {milestones}")
        if warmup_iters < 0 or not 0.0 < warmup_ratio <= 1.0:
            raise ValueError(
                f"WarmupStepDecay: need warmup_iters >= 0 and 0 < warmup_ratio <= 1, "
                f"got {warmup_iters} and {warmup_ratio}"
            )
        self.base_lr = float(base_lr)
        self.milestones = milestones
        self.gamma = float(gamma)
        self.warmup_iters = int(warmup_iters)
        self.warmup_ratio = float(warmup_ratio)

    @classmethod
    def from_epochs(cls, base_lr, steps_per_epoch, milestone_epochs, **kwargs):
        """The schedule of an epoch-based recipe (e.g. ``milestone_epochs=[8, 11]`` for 1x)."""
        if steps_per_epoch < 1:
            raise ValueError(f"WarmupStepDecay.from_epochs: steps_per_epoch must be >= 1, got {steps_per_epoch}")
        return cls(base_lr, [int(e) * int(steps_per_epoch) for e in milestone_epochs], **kwargs)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        lr = ops.convert_to_tensor(self.base_lr, "float32")
        for milestone in self.milestones:
            lr = ops.where(step >= milestone, lr * self.gamma, lr)
        if self.warmup_iters > 0:
            # = 1 - (1 - t / warmup_iters) * (1 - warmup_ratio), without float32 cancellation at t = 0.
            factor = self.warmup_ratio + (1.0 - self.warmup_ratio) * step / self.warmup_iters
            lr = ops.where(step < self.warmup_iters, lr * factor, lr)
        return lr

    def get_config(self):
        return {
            "base_lr": self.base_lr,
            "milestones": list(self.milestones),
            "gamma": self.gamma,
            "warmup_iters": self.warmup_iters,
            "warmup_ratio": self.warmup_ratio,
        }


@keras.saving.register_keras_serializable(package="gflv2_keras")
class UpdateCountSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """``schedule`` evaluated at the number of optimizer *updates* under Keras' gradient accumulation.

    With ``gradient_accumulation_steps=N`` a Keras optimizer calls its learning-rate schedule
    with the micro-step counter (``N`` per update; the update of micro-step ``t`` happens when
    ``(t + 1) % N == 0``) while ``optimizer.iterations`` counts updates. This wrapper gives
    ``schedule(t // N)``, so update ``u`` (micro-step ``(u + 1) * N - 1``) uses ``schedule(u)``:
    the lr of the update-counting recipe (warm-up and milestones in updates). Used on the JAX and
    PyTorch backends (``trainer.compile_for_training``); the TensorFlow training function
    accumulates by itself and counts updates directly.

    Args:
        schedule: a ``LearningRateSchedule`` of the update count (``WarmupStepDecay``).
        steps: micro-batches per update (``gradient_accumulation_steps``), >= 1.
    """

    def __init__(self, schedule, steps):
        if int(steps) != steps or steps < 1:
            raise ValueError(f"UpdateCountSchedule: steps must be an integer >= 1, got {steps!r}")
        self.schedule = schedule
        self.steps = int(steps)

    def __call__(self, step):
        return self.schedule(ops.floor_divide(ops.convert_to_tensor(step), self.steps))

    def get_config(self):
        return {"schedule": keras.saving.serialize_keras_object(self.schedule), "steps": self.steps}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        return cls(keras.saving.deserialize_keras_object(config.pop("schedule")), **config)
