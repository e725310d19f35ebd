"""A NaN step stops the run before any checkpoint holds it; --resume continues from the last good one."""

import keras
import numpy as np
import pytest

from gflv2_keras.training import checkpoint as ckpt


class _PoisonAt(keras.callbacks.Callback):
    """Sets one weight to NaN before optimiser step ``iteration`` runs (a poisoned batch's effect)."""

    def __init__(self, iteration):
        super().__init__()
        self.iteration = iteration

    def on_train_batch_begin(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.iteration - 1:
            weight = self.model.trainable_weights[-1]
            weight.assign(np.full(weight.shape, np.nan, np.float32))


@pytest.mark.slow  # two training runs; the refusal to save non-finite weights is tested below
def test_nan_never_reaches_a_checkpoint_and_resume_continues(tiny_coco, nano_recipe, tmp_path):
    from gflv2_keras.training.trainer import train

    common = dict(data_root=tiny_coco, tensorboard=False, save_preset=False, verbose=0)
    work = tmp_path / "run"
    # Poison step 5 (epoch 2): checkpoints 2 and 4 exist, step 5 and later are never saved.
    with pytest.raises(ckpt.NonFiniteError, match=r"non-finite loss = nan at step 5.*--resume"):
        train(nano_recipe(), work_dir=str(work), callbacks=[_PoisonAt(5)], **common)
    saved = ckpt.list_checkpoints(str(work / "checkpoints"))
    assert saved and saved[-1].endswith("ckpt-000000004.npz")
    for path in saved:
        _, model_arrays, optimizer_arrays = ckpt.read_checkpoint(path)
        assert all(np.all(np.isfinite(a)) for a in model_arrays + optimizer_arrays if a.dtype.kind == "f")

    resumed = train(nano_recipe(), work_dir=str(work), resume=True, **common)
    assert resumed["iterations"] == 2 * resumed["steps_per_epoch"]
    assert all(np.all(np.isfinite(np.asarray(w))) for w in resumed["model"].weights)


def test_save_checkpoint_refuses_non_finite_weights(tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.layers.Dense(2)])
    model(np.zeros((1, 3), np.float32))
    optimizer = keras.optimizers.SGD(0.1)
    optimizer.build(model.trainable_variables)
    model.weights[0].assign(np.full(model.weights[0].shape, np.inf, np.float32))
    with pytest.raises(ckpt.NonFiniteError, match=r"kernel at step 7"):
        ckpt.save_checkpoint(str(tmp_path), model, optimizer, {"iteration": 7})
    assert ckpt.list_checkpoints(str(tmp_path)) == []
