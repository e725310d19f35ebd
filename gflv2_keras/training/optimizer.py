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
            ``global_clipnorm``, ...). The official recipe uses no gradient clipping.

    The variables are ``iterations`` and one ``momentum`` buffer per trainable variable, so
    the full state is saved by ``optimizer.variables``. Works under ``tf.distribute``
    strategies (gradients are summed over replicas by Keras before ``update_step``) and XLA.

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

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum") if self.momentum else []

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        step = ops.cast(gradient, variable.dtype)
        if self.coupled_weight_decay and self._use_weight_decay(variable):
            step = step + ops.cast(self.coupled_weight_decay, variable.dtype) * variable
        if self.momentum:
            buf = self.momentums[self._get_variable_index(variable)]
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
