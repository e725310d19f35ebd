"""Gradient accumulation: N micro-batches make one update, the one documented in
``GFLV2Detector.accumulated_train_step``: CoupledSGD applied once to the mean of the micro-batches'
gradients (each micro-batch's loss with its own normalisers), coupled L2 and momentum once.

The reference is computed independently here: eager per-micro-batch gradients of
``compute_loss``, averaged in NumPy, and the PyTorch SGD rule written out in float64 NumPy.
"""

import numpy as np
import pytest
import tensorflow as tf

from gflv2_keras.training.trainer import compile_for_training, train

LR, MOMENTUM, DECAY = 0.05, 0.9, 1e-3


def _batch(rng, images=4, height=64, width=96):
    x = rng.normal(size=(images, height, width, 3)).astype(np.float32)
    boxes = np.full((images, 3, 4), -1.0, np.float32)
    labels = np.full((images, 3), -1, np.int32)
    for i in range(images):
        count = 1 + i % 3  # micro-batches with different positive counts: different normalisers
        for j in range(count):
            x0, y0 = 4 + 10 * j + 3 * i, 6 + 8 * j
            boxes[i, j] = [x0, y0, x0 + 30 + 5 * j, y0 + 25]
            labels[i, j] = (i + j) % 3
    return x, {"boxes": boxes, "labels": labels}


def _mean_micro_gradients(model, x, y, steps):
    """Mean over micro-batches of d(compute_loss)/d(trainable), each micro-batch on its own, in float64."""

    @tf.function
    def gradients(x_n, y_n):
        with tf.GradientTape() as tape:
            loss = model.compute_loss(x_n, y_n, model(x_n, training=True))
        return [tf.zeros_like(v) if g is None else g
                for g, v in zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables)]

    micro = len(x) // steps
    total = None
    for n in range(steps):
        part = slice(n * micro, (n + 1) * micro)
        grads = [np.asarray(g, np.float64) for g in gradients(x[part], {k: v[part] for k, v in y.items()})]
        total = grads if total is None else [a + b for a, b in zip(total, grads)]
    return [g / steps for g in total]


@pytest.mark.parametrize("steps", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_one_accumulated_update_is_coupled_sgd_on_the_mean_micro_gradient(nano_factory, rng, steps):
    # Micro-batches of 4 or 2 images. (Odd batch sizes are avoided: TensorFlow's CPU conv
    # backprop segfaults on this nano model for batches of 1 or 3 images, on main too.)
    x, y = _batch(rng, images=8)
    model = nano_factory(seed=5)
    start = [np.asarray(v, np.float64) for v in model.trainable_variables]
    grads = _mean_micro_gradients(model, x, y, steps)

    compile_for_training(model, LR, momentum=MOMENTUM, weight_decay=DECAY, accumulate=steps)
    model.fit(tf.data.Dataset.from_tensors((x, y)).repeat(2), epochs=1, steps_per_epoch=2, verbose=0)
    assert int(model.optimizer.iterations) == 2  # updates, not micro-batches

    # Reference after update 1 (buf = g + wd * w); the test runs two updates so momentum counts,
    # the second from weights after the first: recompute its gradient on a model holding them.
    reference = nano_factory(seed=5)
    weights = start
    bufs = [np.zeros_like(w) for w in weights]
    for update in range(2):
        for variable, w in zip(reference.trainable_variables, weights):
            variable.assign(w.astype(np.float32))
        g = grads if update == 0 else _mean_micro_gradients(reference, x, y, steps)
        bufs = [MOMENTUM * b + gi + DECAY * w for b, gi, w in zip(bufs, g, weights)]
        weights = [w - LR * b for w, b in zip(weights, bufs)]
    moved = max(float(np.abs(w - s).max()) for w, s in zip(weights, start))
    error = max(float(np.abs(np.asarray(v) - w).max()) for v, w in zip(model.trainable_variables, weights))
    assert moved > 1e-3
    assert error < 1e-4 * max(moved, 1.0), (error, moved)


def test_equal_micro_batches_accumulate_to_one_step_of_one_micro_batch(nano_factory, rng):
    """Two identical micro-batches have equal normalisers, so the update is that of one of them."""
    x, y = _batch(rng, images=2)
    x2, y2 = np.concatenate([x, x]), {k: np.concatenate([v, v]) for k, v in y.items()}
    single, double = nano_factory(seed=6), nano_factory(seed=6)
    compile_for_training(single, LR, momentum=MOMENTUM, weight_decay=DECAY)
    compile_for_training(double, LR, momentum=MOMENTUM, weight_decay=DECAY, accumulate=2)
    single.fit(tf.data.Dataset.from_tensors((x, y)), verbose=0)
    double.fit(tf.data.Dataset.from_tensors((x2, y2)), verbose=0)
    for a, b in zip(single.trainable_variables, double.trainable_variables):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_a_batch_that_does_not_split_is_refused(nano_factory, rng):
    x, y = _batch(rng, images=6)
    model = nano_factory(seed=7)
    compile_for_training(model, LR, accumulate=4)
    with pytest.raises(ValueError, match="6 images cannot be split into 4"):
        model.fit(tf.data.Dataset.from_tensors((x, y)), verbose=0)


def test_train_with_accumulate_counts_updates_and_scales_the_batch(nano_recipe, tiny_coco, tmp_path):
    recipe = nano_recipe(batch_per_replica=2, epochs=1)
    result = train(recipe, str(tmp_path / "run"), data_root=tiny_coco, accumulate=2, tensorboard=False,
                   evaluate=False, save_preset=False, verbose=0)
    assert result["global_batch_size"] == 4
    from gflv2_keras.data.coco import load_coco
    from gflv2_keras.data.grouping import grouped_epoch_steps

    dataset = load_coco(f"{tiny_coco}/annotations/train.json", f"{tiny_coco}/train", for_training=True)
    updates = grouped_epoch_steps(dataset, 4)  # an epoch of global batches of 2 x 2 images
    assert result["iterations"] == result["steps_per_epoch"] == updates
    assert int(result["model"].optimizer.iterations.numpy()) == updates  # updates, not micro-batches


def test_bad_accumulate_and_precision_are_refused(nano_recipe, tiny_coco, tmp_path):
    for overrides, field in (({"accumulate": 0}, "accumulate"), ({"precision": "fp8"}, "precision")):
        with pytest.raises(ValueError, match=f"train: {field} must be"):
            train(nano_recipe(), str(tmp_path / "run"), data_root=tiny_coco, **overrides)
