"""CoupledSGD against a float64 NumPy transcription of torch.optim.SGD; WarmupStepDecay against the mmcv formula."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gflv2_keras.training.optimizer import CoupledSGD
from gflv2_keras.training.schedule import WarmupStepDecay, scale_learning_rate


def torch_sgd_reference(weights, grads_per_step, lrs, momentum=0.9, weight_decay=1e-4, nesterov=False):
    """``torch.optim.SGD.step`` (dampening 0) in float64, transcribed from torch/optim/sgd.py."""
    weights = [w.astype(np.float64).copy() for w in weights]
    bufs = [None] * len(weights)
    for grads, lr in zip(grads_per_step, lrs):
        for i, (w, g) in enumerate(zip(weights, grads)):
            d_p = g.astype(np.float64) + weight_decay * w
            if momentum:
                bufs[i] = d_p.copy() if bufs[i] is None else momentum * bufs[i] + d_p
                d_p = d_p + momentum * bufs[i] if nesterov else bufs[i]
            weights[i] = w - lr * d_p
    return weights


def keras_decoupled_reference(weights, grads_per_step, lrs, momentum=0.9, weight_decay=1e-4):
    """What Keras' own ``SGD(weight_decay=...)`` does: decay outside momentum, lr inside velocity."""
    weights = [w.astype(np.float64).copy() for w in weights]
    velocity = [np.zeros_like(w) for w in weights]
    for grads, lr in zip(grads_per_step, lrs):
        for i, g in enumerate(grads):
            weights[i] = weights[i] - lr * weight_decay * weights[i]
            velocity[i] = momentum * velocity[i] - lr * g
            weights[i] = weights[i] + velocity[i]
    return weights


def _problem(seed=0, steps=6):
    rng = np.random.default_rng(seed)
    shapes = [(3, 3, 4, 5), (5,), (7, 2)]
    # Large weights make the L2 term visible next to the gradients.
    weights = [rng.normal(0, 3.0, s).astype(np.float32) for s in shapes]
    grads = [[rng.normal(0, 0.1, s).astype(np.float32) for s in shapes] for _ in range(steps)]
    return weights, grads


def _run(optimizer, weights, grads_per_step, jit_compile=False):
    variables = [keras.Variable(w) for w in weights]
    optimizer.build(variables)

    def step(grads):
        optimizer.apply(grads, variables)

    fn = tf.function(step, jit_compile=True) if jit_compile else step
    for grads in grads_per_step:
        fn([tf.constant(g) for g in grads])
    return [v.numpy() for v in variables]


@pytest.mark.parametrize("jit_compile", [False, True])
def test_coupled_sgd_matches_torch_sgd_with_a_changing_lr(jit_compile):
    weights, grads = _problem()
    schedule = WarmupStepDecay(0.2, milestones=[4], warmup_iters=3, warmup_ratio=0.1)
    lrs = [float(schedule(t)) for t in range(len(grads))]
    assert len(set(np.round(lrs, 6))) >= 4  # warm-up and decay are both exercised
    ours = _run(CoupledSGD(schedule, momentum=0.9, weight_decay=1e-4), weights, grads, jit_compile)
    expected = torch_sgd_reference(weights, grads, lrs, 0.9, 1e-4)
    for got, want in zip(ours, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # The comparison can tell the coupled rule from Keras' decoupled one.
    decoupled = keras_decoupled_reference(weights, grads, lrs, 0.9, 1e-4)
    assert max(np.abs(d - e).max() for d, e in zip(decoupled, expected)) > 1e-3


def test_coupled_sgd_nesterov_and_no_momentum():
    weights, grads = _problem(seed=1, steps=4)
    lrs = [0.05] * len(grads)
    for momentum, nesterov in ((0.9, True), (0.0, False)):
        ours = _run(CoupledSGD(0.05, momentum=momentum, weight_decay=5e-3, nesterov=nesterov), weights, grads)
        expected = torch_sgd_reference(weights, grads, lrs, momentum, 5e-3, nesterov)
        for got, want in zip(ours, expected):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_coupled_sgd_excluded_variables_get_no_decay():
    weights, grads = _problem(seed=2, steps=3)
    optimizer = CoupledSGD(0.1, momentum=0.9, weight_decay=1e-2)
    variables = [keras.Variable(w, name=f"w{i}") for i, w in enumerate(weights)]
    optimizer.exclude_from_weight_decay(var_list=variables[1:2])
    optimizer.build(variables)
    for step_grads in grads:
        optimizer.apply([tf.constant(g) for g in step_grads], variables)
    expected = torch_sgd_reference(weights, grads, [0.1] * 3, 0.9, 1e-2)
    no_decay = torch_sgd_reference(weights[1:2], [g[1:2] for g in grads], [0.1] * 3, 0.9, 0.0)
    np.testing.assert_allclose(variables[0].numpy(), expected[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(variables[1].numpy(), no_decay[0], rtol=1e-5, atol=1e-6)


def test_coupled_sgd_and_schedule_serialise():
    schedule = WarmupStepDecay.from_epochs(0.02, steps_per_epoch=100, milestone_epochs=[8, 11])
    optimizer = CoupledSGD(schedule, momentum=0.9, weight_decay=1e-4, nesterov=False)
    restored = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert isinstance(restored, CoupledSGD)
    assert (restored.momentum, restored.coupled_weight_decay, restored.nesterov) == (0.9, 1e-4, False)
    assert restored.weight_decay is None  # Keras' decoupled decay stays off
    schedule_config = restored.get_config()["learning_rate"]["config"]
    assert schedule_config == schedule.get_config()
    assert schedule_config["milestones"] == [800, 1100]


def _mmcv_lr(t, base, milestones, gamma=0.1, warmup_iters=500, ratio=0.001):
    regular = base * gamma ** sum(t >= m for m in milestones)
    if t < warmup_iters:
        return regular * (1 - (1 - t / warmup_iters) * (1 - ratio))
    return regular


@pytest.mark.parametrize("steps_per_epoch, epochs", [(7330, [8, 11]), (7330, [16, 22]), (60, [8, 11])])
def test_warmup_step_decay_values(steps_per_epoch, epochs):
    schedule = WarmupStepDecay.from_epochs(0.01, steps_per_epoch, epochs)
    milestones = [e * steps_per_epoch for e in epochs]
    checks = [0, 1, 250, 499, 500, 501, milestones[0] - 1, milestones[0], milestones[1] - 1, milestones[1], 10**6]
    for t in checks:
        want = _mmcv_lr(t, 0.01, milestones)
        assert float(schedule(t)) == pytest.approx(want, rel=1e-5), f"iteration {t}"
    assert float(schedule(0)) == pytest.approx(1e-5)  # 0.01 * warmup_ratio
    assert float(schedule(tf.constant(milestones[1], tf.int64))) == pytest.approx(1e-4)


def test_lr_scales_linearly_with_global_batch():
    assert scale_learning_rate(0.01, 16) == pytest.approx(0.01)
    assert scale_learning_rate(0.01, 4) == pytest.approx(0.0025)
    assert scale_learning_rate(0.01, 64) == pytest.approx(0.04)
    with pytest.raises(ValueError, match="global_batch_size"):
        scale_learning_rate(0.01, 0)


def test_schedule_rejects_bad_milestones():
    with pytest.raises(ValueError, match="increasing"):
        WarmupStepDecay(0.01, [10, 5])
