"""Shared test set-up: quiet TensorFlow, deterministic seeds, and the small models and data most tests use.

Fixtures:
    rng: a seeded NumPy generator.
    nano_factory: ``nano_factory(seed=0, **overrides)`` builds the smallest working GFLv2
        (preset ``gflv2_test_r18_nano``: ResNet-18 at 1/8 width, 3 classes) with random,
        seeded weights; ``overrides`` go to ``from_preset`` (``test_config``, ``class_names``,
        ``bounding_box_format``, ...).
    nano: one such detector (seed 1), shared by a module.
    tiny_coco: a synthetic COCO-layout dataset (10 train, 2 val images), shared by the session.
    nano_recipe: ``nano_recipe(**changes)``, a 2-epoch CPU-sized recipe for ``gflv2_test_r18_nano``
        on ``tiny_coco``'s layout, with random scale and flip.

``tests/`` is on ``sys.path`` (rootdir conftest), so ``numpy_reference`` and ``torch_reference``
import as packages from any test folder.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

NANO_PRESET = "gflv2_test_r18_nano"


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def nano_factory():
    import keras

    from gflv2_keras import GFLV2Detector

    def build(seed=0, **overrides):
        keras.utils.set_random_seed(seed)
        return GFLV2Detector.from_preset(NANO_PRESET, load_weights=False, **overrides).build_for_inference()

    return build


@pytest.fixture(scope="module")
def nano(nano_factory):
    return nano_factory(seed=1)


@pytest.fixture(scope="session")
def tiny_coco(tmp_path_factory):
    from gflv2_keras.data.synthetic import make_synthetic_coco

    return make_synthetic_coco(str(tmp_path_factory.mktemp("coco")), num_train=10, num_val=2, seed=3)["root"]


@pytest.fixture(scope="session")
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
        return coco_recipe(NANO_PRESET, **{**settings, **changes, **SYNTHETIC_DATA})

    return make
