"""Mixed precision: one training step in bfloat16 / float16 (loss-scaled) gives the float32 losses and
update within a stated tolerance, a short bfloat16 run trains, and the head's outputs stay float32."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from gflv2_keras.training.precision import dtype_policy_scope
from gflv2_keras.training.trainer import compile_for_training, train

# Relative tolerances on qfl / dfl / giou after one step, about 3x the largest difference measured
# on the nano model (CPU, oneDNN): bfloat16 1.3e-3 (qfl), float16 3.6e-4 (qfl).
LOSS_RTOL = {"bfloat16": 4e-3, "float16": 1.2e-3}


def _batch(rng, images=2, height=64, width=96):
    x = rng.normal(size=(images, height, width, 3)).astype(np.float32)
    boxes = np.array([[[8, 6, 50, 40], [40, 20, 90, 60]]] * images, np.float32)
    labels = np.array([[0, 2]] * images, np.int32)
    return x, {"boxes": boxes, "labels": labels}


def _one_step(nano_factory, precision, x, y):
    with dtype_policy_scope(precision):
        model = nano_factory(seed=11)
    compile_for_training(model, 0.01, momentum=0.9, weight_decay=1e-4, precision=precision)
    history = model.fit(tf.data.Dataset.from_tensors((x, y)), verbose=0).history
    return model, {k: float(v[-1]) for k, v in history.items()}


@pytest.fixture(scope="module")
def float32_step(nano_factory):
    x, y = _batch(np.random.default_rng(0))
    model, logs = _one_step(nano_factory, "float32", x, y)
    return x, y, model, logs


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_one_mixed_precision_step_matches_float32(nano_factory, float32_step, precision):
    x, y, reference, reference_logs = float32_step
    model, logs = _one_step(nano_factory, precision, x, y)
    assert model.head.gfl_cls.compute_dtype == precision  # built under the policy
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    outputs = model(x[:1], training=False)
    assert outputs["confidence"].dtype == "float32" and outputs["box_logits"].dtype == "float32"
    differences = {name: abs(logs[name] - reference_logs[name]) / reference_logs[name] for name in ("qfl", "dfl", "giou")}
    print(precision, "relative loss differences", differences)
    assert max(differences.values()) < LOSS_RTOL[precision], differences
    if precision == "float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
        assert float(model.optimizer.dynamic_scale) > 1.0  # loss scaling was active
    assert int(model.optimizer.iterations) == 1  # the update was applied (not skipped as non-finite)
    moved = [np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in zip(model.trainable_variables, reference.trainable_variables)]
    assert np.isfinite(moved).all()


def test_the_global_dtype_policy_is_restored(nano_factory):
    with dtype_policy_scope("bfloat16"):
        assert keras.config.dtype_policy().name == "mixed_bfloat16"
    assert keras.config.dtype_policy().name == "float32"


@pytest.mark.slow  # a whole training run; one mixed-precision step is compared with float32 above
def test_a_short_bfloat16_run_trains(nano_recipe, tiny_coco, tmp_path):
    recipe = nano_recipe(epochs=3, base_lr_per_16=0.2, multiscale_range=None, flip_prob=0.0)
    result = train(recipe, str(tmp_path / "run"), data_root=tiny_coco, precision="bfloat16", tensorboard=False,
                   evaluate=False, save_preset=False, verbose=0)
    losses = [epoch["loss"] for epoch in result["history"]]
    print("bf16 epoch losses", losses)
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert result["model"].head.gfl_cls.compute_dtype == "bfloat16"


def test_checkpoints_save_and_restore_the_loss_scale_state(tmp_path):
    from gflv2_keras.training import checkpoint as ckpt
    from gflv2_keras.training.optimizer import CoupledSGD
    from gflv2_keras.training.precision import wrap_for_precision

    def model_and_optimizer(scale, momentum):
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        optimizer = wrap_for_precision(CoupledSGD(0.1), "float16")
        optimizer.build(model.trainable_variables)
        optimizer.dynamic_scale.assign(scale)
        optimizer.step_counter.assign(7)
        for buffer in optimizer.inner_optimizer.momentums:
            buffer.assign(np.full(buffer.shape, momentum, np.float32))
        optimizer.inner_optimizer.iterations.assign(5)
        return model, optimizer

    model, optimizer = model_and_optimizer(512.0, 0.25)
    ckpt.save_checkpoint(str(tmp_path), model, optimizer, {"iteration": 5}, keep=1)
    other, other_optimizer = model_and_optimizer(2.0**15, 0.0)
    other_optimizer.step_counter.assign(0)
    other_optimizer.inner_optimizer.iterations.assign(0)
    ckpt.restore_checkpoint(ckpt.latest_checkpoint(str(tmp_path)), other, other_optimizer)
    assert float(other_optimizer.dynamic_scale) == 512.0 and int(other_optimizer.step_counter) == 7
    assert int(other_optimizer.iterations) == 5  # the wrapper's iterations are the inner optimiser's
    for a, b in zip(optimizer.variables, other_optimizer.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
