"""SGD with momentum and *coupled* L2 weight decay: the official recipe's ``torch.optim.SGD``.

mmdet trains GFLv2 with ``torch.optim.SGD(lr, momentum=0.9, weight_decay=1e-4)`` (``configs/gfocal/gfocal_r50_fpn_1x.py``),
whose update for a parameter ``w`` with gradient ``g`` and learning rate ``lr`` is::

    d = g + weight_decay * w          # L2 added to the gradient, *before* momentum
    buf = momentum * buf + d          # buf starts at 0 (PyTorch's first step sets buf = d: the same)
    w = w - lr * buf                  # lr applied outside the momentum buffer

Keras' ``SGD(weight_decay=...)`` is different on two counts: its decay is decoupled (``w -= lr *
wd * w`` outside momentum, about 10x weaker at momentum 0.9), and its velocity accumulates
``lr * g`` (``v = m * v - lr * g``), so a learning-rate change (warm-up, step decay) only takes
effect gradually. ``CoupledSGD`` follows the PyTorch rule exactly.
"""

import re

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="gflv2_keras")
class CoupledSGD(keras.optimizers.Optimizer):
    """PyTorch-semantics SGD: momentum buffer of raw gradients plus coupled L2 decay.

    Args:
        learning_rate: float, or a ``keras.optimizers.schedules.LearningRateSchedule``
            (``WarmupStepDecay`` for the official recipe).
        momentum: momentum factor in ``[0, 1)`` (official 0.9). Dampening is 0.
        weight_decay: coupled L2 coefficient (official 1e-4), applied to every trainable
            variable (mmdet has no per-parameter rules in the GFLv2 configs) except those
            excluded with ``exclude_from_weight_decay``. Note: unlike Keras optimizers, this
            is *not* decoupled decay; the base class' decoupled decay is disabled.
        nesterov: Nesterov momentum as PyTorch (``d = d + momentum * buf`` after the update
            of ``buf``).
        **kwargs: other ``keras.optimizers.Optimizer`` arguments (``name``, ``clipnorm``,
            ``global_clipnorm``, ``gradient_accumulation_steps``, ...). The official recipe uses
            no gradient clipping. With Keras' ``gradient_accumulation_steps=N`` (the accumulation
            of ``training.trainer.compile_for_training`` on JAX and PyTorch) ``update_step`` runs
            once per ``N`` micro-steps on their mean gradient, so coupled L2 and momentum enter
            once per update; a learning-rate schedule must then be wrapped in
            ``schedule.UpdateCountSchedule`` (Keras calls it with the micro-step count).

    The variables are ``iterations`` and one ``momentum`` buffer per trainable variable, so
    the full state is saved by ``optimizer.variables``. Works on the TensorFlow, JAX and PyTorch
    backends, under ``tf.distribute`` strategies (gradients are summed over replicas by Keras
    before ``update_step``) and XLA. Each variable finds its momentum buffer through the
    optimizer's own index, built in ``build`` (``momentum_for``).

    Example:
        >>> from gflv2_keras.training.schedule import WarmupStepDecay
        >>> optimizer = CoupledSGD(WarmupStepDecay(0.01, milestones=[58640, 80630]),
        ...                        momentum=0.9, weight_decay=1e-4)
    """

    def __init__(self, learning_rate=0.01, momentum=0.9, weight_decay=1e-4, nesterov=False, name="coupled_sgd", **kwargs):
        super().__init__(learning_rate=learning_rate, weight_decay=None, name=name, **kwargs)
        if not 0.0 <= float(momentum) < 1.0:
            raise ValueError(f"CoupledSGD: momentum must be in [0, 1), got {momentum}")
        if float(weight_decay) < 0.0:
            raise ValueError(f"CoupledSGD: weight_decay must be >= 0, got {weight_decay}")
        self.momentum = float(momentum)
        self.coupled_weight_decay = float(weight_decay)
        self.nesterov = bool(nesterov)
        # exclude_from_weight_decay: ids of the excluded variables (ids, not the variables, which
        # the optimizer would otherwise track as its own) and the compiled name pattern.
        self.decay_excluded_ids = set()
        self.decay_excluded_names = None
        self.variable_slots = {}  # id of a variable (or of its backend value / replica component) -> position
        self.decays = []  # per position: whether coupled L2 applies

    def exclude_from_weight_decay(self, var_list=None, var_names=None):
        """Exclude variables from the coupled L2 decay (Keras' signature and matching rule).

        Must be called before ``build``. ``var_list``: variables to exclude; ``var_names``:
        strings, a variable is excluded when one of them occurs (as a regular expression) in
        its ``name``. A new call replaces the previous exclusions.
        """
        if self.built:
            raise ValueError("CoupledSGD.exclude_from_weight_decay() can only be configured before the optimizer is built.")
        self.decay_excluded_ids = {key for v in (var_list or []) for key in _identities(v)}
        self.decay_excluded_names = re.compile("|".join(sorted(set(var_names)))) if var_names else None

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum") if self.momentum else []
        slots, decays = {}, []
        for position, variable in enumerate(variables):
            keys = _identities(variable)
            slots.update((key, position) for key in keys)
            named = self.decay_excluded_names is not None and self.decay_excluded_names.search(variable.name)
            decays.append(not named and self.decay_excluded_ids.isdisjoint(keys))
        self.variable_slots, self.decays = slots, decays

    def slot_of(self, variable):
        """Position of ``variable`` (a trainable variable given to ``build``, or its backend value) in ``build``'s list."""
        try:
            return self.variable_slots[id(variable)]
        except KeyError:
            raise ValueError(
                f"CoupledSGD: unknown variable {getattr(variable, 'name', variable)!r}: the optimizer was built "
                "for other variables (create a new optimizer for a new model)"
            ) from None

    def update_step(self, gradient, variable, learning_rate):
        position = self.slot_of(variable)
        lr = ops.cast(learning_rate, variable.dtype)
        step = ops.cast(gradient, variable.dtype)
        if self.coupled_weight_decay and self.decays[position]:
            step = step + ops.cast(self.coupled_weight_decay, variable.dtype) * variable
        if self.momentum:
            buf = self.momentums[position]
            momentum = ops.cast(self.momentum, variable.dtype)
            new_buf = momentum * buf + step
            self.assign(buf, new_buf)
            step = step + momentum * new_buf if self.nesterov else new_buf
        self.assign_sub(variable, lr * step)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"momentum": self.momentum, "weight_decay": self.coupled_weight_decay, "nesterov": self.nesterov}
        )
        return config


def _identities(variable):
    """The ids under which ``update_step`` may receive ``variable``.

    The Keras variable itself (JAX, PyTorch), its backend value (TensorFlow passes the
    ``tf.Variable``), and under a ``tf.distribute`` strategy each replica's component
    (``DistributedValues.values``: the strategy updates a mirrored variable one device at a time).
    """
    found = [variable]
    value = getattr(variable, "value", None)
    if value is not None and keras.config.backend() == "tensorflow":
        import tensorflow as tf

        found.append(value)
        if isinstance(value, tf.distribute.DistributedValues):
            found.extend(value.values)
    return [id(v) for v in found]
