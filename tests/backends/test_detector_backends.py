"""The nano detector on JAX and PyTorch computes what it computes on TensorFlow.

Each backend runs in its own process (``KERAS_BACKEND`` is fixed when Keras is imported) on the
same preset folder and inputs (``probe.py``): ``detect``/``predict`` detections, the GFL loss of a
batch, and the weight change of one ``fit`` step. TensorFlow's run is the reference.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

PROBE = Path(__file__).with_name("probe.py")


def _run(backend, preset, inputs, tmp_path):
    output = tmp_path / f"{backend}.npz"
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, str(PROBE), str(preset), str(inputs), str(output)], env=env,
                          capture_output=True, text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, f"{backend} probe failed:\n{done.stderr[-4000:]}"
    return dict(np.load(output))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    import keras

    from gflv2_keras import GFLV2ObjectDetector

    tmp = tmp_path_factory.mktemp("backends")
    keras.utils.set_random_seed(11)
    detector = GFLV2ObjectDetector.from_preset("gflv2_test_r18_nano", load_weights=False,
                                               test_config={"score_threshold": 0.0})  # fmt: skip
    detector.save_to_preset(tmp / "nano")
    rng = np.random.default_rng(0)
    boxes = np.array([[[8, 10, 60, 70], [40, 30, 120, 90]], [[20, 20, 100, 110], [-1, -1, -1, -1]]], np.float32)
    np.savez(
        tmp / "inputs.npz",
        image=rng.integers(0, 256, (90, 120, 3), dtype=np.uint8),
        images=rng.integers(0, 256, (2, 100, 70, 3), dtype=np.uint8),
        train_images=rng.normal(size=(2, 128, 128, 3)).astype(np.float32),
        train_boxes=boxes,
        train_labels=np.array([[0, 2], [1, -1]], np.int32),
    )
    return tmp, _run("tensorflow", tmp / "nano", tmp / "inputs.npz", tmp)


def _compare_detections(got, want, prefix):
    count = want[f"{prefix}_labels"] >= 0
    assert count.sum() > 0
    np.testing.assert_array_equal(got[f"{prefix}_labels"], want[f"{prefix}_labels"])
    np.testing.assert_allclose(got[f"{prefix}_boxes"][count], want[f"{prefix}_boxes"][count], atol=2e-3)
    np.testing.assert_allclose(got[f"{prefix}_confidence"], want[f"{prefix}_confidence"], atol=1e-5)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_backend_matches_tensorflow(backend, reference):
    pytest.importorskip(backend)
    tmp, want = reference
    got = _run(backend, tmp / "nano", tmp / "inputs.npz", tmp)
    assert str(got["backend"]) == backend
    _compare_detections(got, want, "detect")
    _compare_detections(got, want, "predict")
    for name in ("loss", "loss_qfl", "loss_dfl", "loss_giou"):
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, err_msg=name)
    step, reference_step = got["step"], want["step"]
    assert np.abs(reference_step).max() > 0
    # The same update up to float32 rounding of the gradients (relative to the step's size).
    assert np.linalg.norm(step - reference_step) <= 1e-3 * np.linalg.norm(reference_step)
