"""Shared test set-up: quiet TensorFlow, deterministic seeds."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    """Root of a 10-image synthetic COCO split (train) and 2 val images."""
    from gflv2_keras.data.synthetic import make_synthetic_coco

    return make_synthetic_coco(str(tmp_path_factory.mktemp("coco")), num_train=10, num_val=2, seed=3)["root"]


@pytest.fixture
def nano_recipe():
    """``nano_recipe(**changes)``: a 2-epoch nano recipe on ``tiny_coco`` with random scale and flip."""
    from gflv2_keras.recipes import SYNTHETIC_DATA, coco_recipe

    def make(**changes):
        settings = dict(
            name="nano_resume",
            epochs=2,
            lr_steps=[1],
            base_lr_per_16=0.1,
            batch_per_replica=4,  # 10 images grouped by orientation -> 4 steps per epoch
            scale=[128, 96],
            multiscale_range=[64, 96],  # random scale and flip: data order and augmentation must resume too
            warmup_iters=2,
            checkpoint_every_steps=2,
            keep_checkpoints=2,
            eval_every_epochs=0,
        )
        return coco_recipe("gflv2_test_r18_nano", **{**settings, **changes, **SYNTHETIC_DATA})

    return make
