"""Normalisation layers with PyTorch numerics (epsilon 1e-5) and the official freezing rules."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="gflv2_keras")
class BatchNorm(keras.layers.BatchNormalization):
    """BatchNorm with PyTorch's epsilon (1e-5) whose statistics can be frozen (``norm_eval``).

    With ``frozen_stats=True`` the layer always normalises with its moving mean/variance and
    never updates them, even in training, while ``gamma``/``beta`` stay trainable unless the
    layer itself is frozen (``trainable=False``). This is the official ``norm_eval=True``.

    Args:
        frozen_stats: bool, use moving statistics in training too.
        epsilon: defaults to 1e-5 (PyTorch), not the Keras 1e-3.
    """

    def __init__(self, frozen_stats=True, epsilon=1e-5, momentum=0.9, **kwargs):
        super().__init__(epsilon=epsilon, momentum=momentum, **kwargs)
        self.frozen_stats = bool(frozen_stats)
        self.folded = False  # set by ``PaddedConv2D.fold_norm``: the conv applies this layer

    def folded_affine(self):
        """``(s, beta - mean * s)`` float32 ``[C]`` with ``s = gamma / sqrt(moving_var + eps)``."""
        f32 = lambda v: ops.cast(v, "float32")  # noqa: E731
        scale = f32(self.gamma) / ops.sqrt(f32(self.moving_variance) + self.epsilon)
        return scale, f32(self.beta) - f32(self.moving_mean) * scale

    def call(self, inputs, training=None, mask=None):
        if self.folded:
            return inputs
        if self.frozen_stats:
            training = False
        if training and self.trainable and mask is None and not (self.renorm or self.synchronized):
            return self.batch_statistics_call(inputs)
        return super().call(inputs, training=training, mask=mask)

    def batch_statistics_call(self, inputs):
        """Training with batch statistics (``frozen_stats=False``) by :func:`normalize`.

        Same values as Keras' layer (biased batch variance, moving statistics updated with
        ``momentum``) with float32 statistics and gradients as precise as PyTorch's: Keras'
        single-pass statistics and its ``x * s + (beta - mean * s)`` form cost the backbone's
        float32 gradients about one decimal digit (issue 20).
        """
        dtype = keras.backend.result_type(inputs.dtype, "float32")
        x = ops.cast(inputs, dtype)
        rank = len(x.shape)
        axis = self.axis % rank
        axes = tuple(i for i in range(rank) if i != axis)
        affine_shape = tuple(x.shape[i] if i == axis else 1 for i in range(rank))
        gamma = ops.reshape(ops.cast(self.gamma, dtype), affine_shape) if self.scale else ops.ones(affine_shape, dtype)
        beta = ops.reshape(ops.cast(self.beta, dtype), affine_shape) if self.center else ops.zeros(affine_shape, dtype)
        mean, variance = moments(x, axes)
        outputs = normalize(x, mean, variance, gamma, beta, axes, self.epsilon)
        for moving, batch in ((self.moving_mean, mean), (self.moving_variance, variance)):
            batch = ops.reshape(batch, (-1,))
            moving.assign(ops.cast(moving, dtype) * self.momentum + batch * (1.0 - self.momentum))
        return ops.cast(outputs, self.compute_dtype)

    def get_config(self):
        return {**super().get_config(), "frozen_stats": self.frozen_stats}


@keras.saving.register_keras_serializable(package="gflv2_keras")
class GroupNormalization(keras.layers.GroupNormalization):
    """``keras.layers.GroupNormalization`` (channels last) with float32 statistics as precise as PyTorch's.

    The class keeps Keras' name on purpose: Keras files address the head's norms by class name
    (``.../container/group_normalization``), so weight files written before stay loadable.

    Keras' layer takes the group statistics with one reduction over all ``H·W·C/G`` values (on
    the TensorFlow backend a running float32 sum, off by ~``n·eps``), normalises as
    ``x * s + (beta - mean * s)`` (large terms that cancel when a group's mean is large against
    its spread) and differentiates that form (``Σ g·x - mean·Σ g``); the float32 gradients of a
    training step lost about one decimal digit against PyTorch's (issue 20). This layer runs
    :func:`normalize` instead: statistics reduced one axis at a time, centred forward and backward.

    Shapes: ``[B, ..., C]`` → same, ``C`` divisible by ``groups``; statistics over the spatial
    axes and the ``C / groups`` channels of each group (``torch.nn.GroupNorm``'s). Statistics
    and the affine run in float32 (float64 for float64 inputs); the output has the layer's
    compute dtype. Weights, config and conversion are those of ``GroupNormalization``; a
    channels-first ``axis`` falls back to the Keras computation.
    """

    def call(self, inputs):
        rank = len(inputs.shape)
        if self.axis not in (-1, rank - 1):
            return super().call(inputs)
        dtype = keras.backend.result_type(inputs.dtype, "float32")
        shape = ops.shape(inputs)
        size = inputs.shape[-1] // self.groups
        grouped = ops.cast(ops.reshape(inputs, tuple(shape[:-1]) + (self.groups, size)), dtype)  # [B, ..., G, C/G]
        affine_shape = (1,) * (rank - 1) + (self.groups, size)
        gamma = ops.reshape(ops.cast(self.gamma, dtype), affine_shape) if self.scale else ops.ones(affine_shape, dtype)
        beta = ops.reshape(ops.cast(self.beta, dtype), affine_shape) if self.center else ops.zeros(affine_shape, dtype)
        axes = tuple(range(1, rank - 1)) + (rank,)  # spatial axes and the channels of a group
        outputs = normalize(grouped, *moments(grouped, axes), gamma, beta, axes, self.epsilon)
        return ops.cast(ops.reshape(outputs, shape), self.compute_dtype)


def precise_mean(x, axes):
    """Mean over ``axes`` (keepdims) reduced one axis at a time, innermost first.

    A float32 reduction of ``n`` values accumulates up to ``~n·eps`` of rounding error on the
    TensorFlow backend (a running sum over non-innermost axes); reducing ``W``, then ``H``, then
    ``B`` keeps each running sum short (the mean of a ``[2, 48, 64, C]`` batch over ``B, H, W``:
    1e-7 relative instead of 7e-7, PyTorch's cascade sum 6e-8).
    """
    return _one_axis_at_a_time(ops.mean, x, axes)


def moments(x, axes):
    """``(mean, variance)`` over ``axes`` with keepdims: ``precise_mean`` of ``x`` and of ``(x - mean)^2``.

    The variance is the biased one (what PyTorch normalises with). Not differentiated:
    :func:`normalize` carries the whole gradient.
    """
    x = ops.stop_gradient(x)
    mean = precise_mean(x, axes)
    return mean, precise_mean(ops.square(x - mean), axes)


def normalize(x, mean, variance, gamma, beta, axes, epsilon):
    """``(x - mean) / sqrt(variance + eps) * gamma + beta`` with the centred analytic gradient.

    ``mean``/``variance`` must be ``moments(x, axes)``: the gradient returned for ``x`` is the
    total derivative through them (``rstd · (dx̂ - mean(dx̂) - x̂ · mean(dx̂ · x̂))``, ``dx̂ = dy ·
    gamma``), with every mean taken by ``precise_mean``, and none flows to ``mean``/``variance``
    themselves. ``gamma``/``beta`` broadcast against ``x`` (size 1 on the axes they are shared
    over); their gradients are summed over those axes. All tensors have ``x``'s dtype.

    Returns:
        The normalised ``x``, same shape and dtype.
    """
    param_axes = tuple(i for i, d in enumerate(gamma.shape) if d == 1)

    @ops.custom_gradient
    def forward(x, mean, variance, gamma, beta):
        rstd = ops.rsqrt(variance + epsilon)
        x_hat = (x - mean) * rstd

        def grad(*args, upstream=None):
            # Keras' calling convention: TensorFlow and JAX pass ``upstream`` positionally, PyTorch by keyword.
            if upstream is None:
                (upstream,) = args
            d_hat = upstream * gamma
            d_x = rstd * (d_hat - precise_mean(d_hat, axes) - x_hat * precise_mean(d_hat * x_hat, axes))
            d_gamma = _precise_sum(upstream * x_hat, param_axes)
            d_beta = _precise_sum(upstream, param_axes)
            return d_x, ops.zeros_like(mean), ops.zeros_like(variance), d_gamma, d_beta

        return x_hat * gamma + beta, grad

    return forward(x, ops.stop_gradient(mean), ops.stop_gradient(variance), gamma, beta)


def _precise_sum(x, axes):
    """Sum over ``axes`` (keepdims), one axis at a time, innermost first (see ``precise_mean``)."""
    return _one_axis_at_a_time(ops.sum, x, axes)


def _one_axis_at_a_time(reduce, x, axes):
    for axis in sorted(axes, reverse=True):
        x = reduce(x, axis=axis, keepdims=True)
    return x


def group_norm(name, groups=32, dtype=None):
    """GroupNorm with PyTorch's epsilon (1e-5), as the official head's ``gn``; ``dtype``: its policy."""
    return GroupNormalization(groups=groups, epsilon=1e-5, name=name, dtype=dtype)
