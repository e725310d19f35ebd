"""Post-processing, NMS and preprocessing on JAX and PyTorch compute what they compute on TensorFlow.

Each backend runs in its own process (``KERAS_BACKEND`` is fixed when Keras is imported) on the
same saved inputs. On TensorFlow ``postprocess`` uses ``tf.image.combined_non_max_suppression``,
elsewhere the ``keras.ops`` NMS, so this also checks the two NMS paths against each other
(``per_class_nms`` with a tiny chunk covers its all-pairs pass too). The worker imports only
NumPy, Keras and the modules under test, and reports whether TensorFlow got imported.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Component-level checks; the default run keeps the whole-detector one (tests/backends).
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
NUM_CLASSES = 5

WORKER = r"""
import sys
import numpy as np
import keras
from keras import ops

from gflv2_keras.models.preprocessing import preprocess_images
from gflv2_keras.ops.boxes import anchor_points
from gflv2_keras.ops.nms import per_class_nms
from gflv2_keras.ops.postprocess import postprocess


inputs = dict(np.load(sys.argv[1]))
sizes = [tuple(int(v) for v in hw) for hw in inputs["sizes"]]
points, strides = anchor_points(sizes)
info = {"image_shape": inputs["image_shape"], "scale_factor": inputs["scale_factor"]}
out = {}
found = postprocess(inputs["confidence"], inputs["box_logits"], points, strides, sizes, info, num_classes=5,
                    nms_pre=300, score_threshold=0.05, iou_threshold=0.6, max_detections=40,
                    return_box_distributions=True,
                    quality_fn=lambda logits: ops.sigmoid(ops.mean(logits, axis=-1)))
out.update({"post_" + k: ops.convert_to_numpy(v) for k, v in found.items()})
nms = per_class_nms(inputs["nms_boxes"], inputs["nms_scores"], 30, 0.5, 0.1, chunk_size=16)
out.update({"nms_" + k: ops.convert_to_numpy(v) for k, v in zip(("boxes", "scores", "labels", "num"), nms)})
for name, canvas in (("small", None), ("large", (832, 1344))):
    x, image_info = preprocess_images(inputs["image_" + name], canvas=canvas)
    out["pre_" + name] = ops.convert_to_numpy(x)
    out.update({"pre_" + name + "_" + k: ops.convert_to_numpy(v) for k, v in image_info.items()})
out["tensorflow_imported"] = np.array("tensorflow" in sys.modules)
if keras.config.backend() != "tensorflow":  # a tf.data map under this backend takes the TF ops
    import tensorflow as tf

    images = inputs["image_small"]
    mapped = tf.data.Dataset.from_tensors(images).map(lambda x: preprocess_images(x)[0])
    out["pre_small_tf_data"] = next(iter(mapped)).numpy()
np.savez(sys.argv[2], **out)
"""


def run_worker(backend, inputs, tmp_path):
    output = tmp_path / f"{backend}.npz"
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}  # fmt: skip
    done = subprocess.run([sys.executable, "-c", WORKER, str(inputs), str(output)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, f"{backend} worker failed:\n{done.stderr[-4000:]}"
    return dict(np.load(output))


def make_inputs(path):
    rng = np.random.default_rng(5)
    # Head outputs of a 256 x 384 input: levels 32x48 .. 2x3, with nms_pre=300 cutting the first two.
    sizes = np.array([[32, 48], [16, 24], [8, 12], [4, 6], [2, 3]])
    n = int(np.prod(sizes, axis=1).sum())
    confidence = (rng.uniform(0, 1, (2, n, NUM_CLASSES + 1)) ** 6).astype(np.float32)
    box_logits = rng.normal(0, 2, (2, n, 68)).astype(np.float32)
    xy = rng.uniform(0, 100, (2, 120, 2))
    nms_boxes = np.concatenate([xy, xy + rng.uniform(20, 50, (2, 120, 2))], -1).astype(np.float32)
    nms_scores = rng.permuted(np.tile(np.linspace(0.0, 1.0, 120 * 3), (2, 1)), axis=1).reshape(2, 120, 3)
    np.savez(
        path,
        sizes=sizes,
        confidence=confidence,
        box_logits=box_logits,
        image_shape=np.array([[250.0, 380.0], [256.0, 300.0]], np.float32),
        scale_factor=np.array([[0.5, 0.625], [1.25, 1.0]], np.float32),
        nms_boxes=nms_boxes,
        nms_scores=nms_scores.astype(np.float32),
        image_small=rng.integers(0, 256, (2, 90, 150, 3), dtype=np.uint8),
        image_large=rng.integers(0, 256, (1, 333, 500, 3), dtype=np.uint8),
    )
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ops_backends")
    inputs = make_inputs(tmp / "inputs.npz")
    return inputs, run_worker("tensorflow", inputs, tmp)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_backend_matches_tensorflow(backend, reference, tmp_path):
    pytest.importorskip(backend)
    inputs, expected = reference
    got = run_worker(backend, inputs, tmp_path)
    assert not got["tensorflow_imported"]  # neither post- nor preprocessing needs TensorFlow here

    num = expected["post_num_detections"]
    assert num.min() >= 10 and num.max() < 40  # real NMS work, background column dropped
    np.testing.assert_array_equal(got["post_num_detections"], num)
    np.testing.assert_array_equal(got["post_labels"], expected["post_labels"])
    np.testing.assert_allclose(got["post_boxes"], expected["post_boxes"], atol=1e-3)
    np.testing.assert_allclose(got["post_confidence"], expected["post_confidence"], atol=1e-6)
    for key in ("classification", "quality", "side_offsets", "side_std", "side_topk_mass", "side_distributions",
                "bin_widths", "anchor_points"):  # fmt: skip
        np.testing.assert_allclose(got["post_" + key], expected["post_" + key], rtol=1e-5, atol=1e-5, err_msg=key)

    assert expected["nms_num"].tolist() == [30, 30]
    for key in ("num", "labels", "scores", "boxes"):
        np.testing.assert_array_equal(got["nms_" + key], expected["nms_" + key], err_msg=key)

    for name in ("small", "large"):
        assert got["pre_" + name].shape == expected["pre_" + name].shape
        np.testing.assert_allclose(got["pre_" + name], expected["pre_" + name], rtol=0, atol=1e-6)
        for key in ("image_shape", "scale_factor"):
            np.testing.assert_array_equal(got[f"pre_{name}_{key}"], expected[f"pre_{name}_{key}"])
    np.testing.assert_allclose(got["pre_small_tf_data"], expected["pre_small"], rtol=0, atol=1e-6)
