"""``gfl_loss`` and the ATSS assignment give TensorFlow's values on the JAX and PyTorch backends.

Fixed inputs (a batch of four images with 0, 1, 20 and 4 ground truths, one of them padded, from
``test_gfl_loss.make_batch``) are saved once; a fresh process per backend (``KERAS_BACKEND``, the
backend is chosen at import) computes the assignment, the three losses and the gradients of
their sum with respect to the head outputs, with that backend's own autodiff, and saves them.
Assignments must be identical, losses equal to 1e-5 relative, gradients to 1e-4.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from test_gfl_loss import NUM_CLASSES, make_batch  # tests/losses is on sys.path (pytest rootdir import)

# Component-level checks; the default run keeps the whole-detector one (tests/backends).
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import keras
    from keras import ops
    from gflv2_keras.assigners.atss import atss_assign
    from gflv2_keras.losses.gfl_loss import gfl_loss
    from gflv2_keras.ops.boxes import anchor_boxes

    inputs = dict(np.load(sys.argv[1]))
    num_classes = int(inputs.pop("num_classes"))
    num_level_points = [int(n) for n in inputs.pop("num_level_points")]
    backend = keras.config.backend()
    assert backend == sys.argv[3], (backend, sys.argv[3])

    anchors = anchor_boxes(inputs["points"], inputs["point_strides"])
    assignment = atss_assign(anchors, num_level_points, inputs["gt_boxes"], inputs["gt_labels"],
                             inputs["valid_points"], num_classes)

    def losses(confidence, box_logits):
        rest = {k: v for k, v in inputs.items() if k not in ("confidence", "box_logits")}
        return gfl_loss(confidence, box_logits, num_level_points=num_level_points, num_classes=num_classes, **rest)

    confidence, box_logits = inputs["confidence"], inputs["box_logits"]
    if backend == "tensorflow":
        import tensorflow as tf
        confidence, box_logits = tf.constant(confidence), tf.constant(box_logits)
        with tf.GradientTape() as tape:
            tape.watch([confidence, box_logits])
            values = losses(confidence, box_logits)
            total = values["qfl"] + values["dfl"] + values["giou"]
        gradients = tape.gradient(total, [confidence, box_logits])
    elif backend == "jax":
        import jax
        def total(c, b):
            v = losses(c, b)
            return v["qfl"] + v["dfl"] + v["giou"], v
        (_, values), gradients = jax.value_and_grad(total, argnums=(0, 1), has_aux=True)(confidence, box_logits)
    else:
        import torch
        confidence = torch.tensor(confidence, requires_grad=True)
        box_logits = torch.tensor(box_logits, requires_grad=True)
        values = losses(confidence, box_logits)
        (values["qfl"] + values["dfl"] + values["giou"]).backward()
        gradients = [confidence.grad, box_logits.grad]
        values = {k: v.detach() for k, v in values.items()}

    out = {f"loss_{k}": ops.convert_to_numpy(v) for k, v in values.items()}
    out.update({f"assign_{k}": ops.convert_to_numpy(v) for k, v in assignment.items()})
    out["grad_confidence"], out["grad_box_logits"] = (np.asarray(ops.convert_to_numpy(g)) for g in gradients)
    np.savez(sys.argv[2], **out)
    print("DONE", backend)
    """
)


@pytest.fixture(scope="module")
def saved_inputs(tmp_path_factory):
    batch = make_batch(0, NUM_CLASSES + 1, dtype="float32")
    path = tmp_path_factory.mktemp("loss_backends") / "inputs.npz"
    arrays = {k: np.asarray(v) for k, v in batch.items()}
    arrays["points"] = arrays["points"].astype(np.float32)
    arrays["point_strides"] = arrays["point_strides"].astype(np.float32)
    np.savez(path, num_classes=NUM_CLASSES, **arrays)
    return path


def run_backend(backend, inputs):
    output = inputs.parent / f"{backend}.npz"
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(inputs), str(output), backend],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0 and "DONE" in result.stdout, result.stdout[-2000:] + result.stderr[-4000:]
    return dict(np.load(output))


@pytest.fixture(scope="module")
def tensorflow_values(saved_inputs):
    return run_backend("tensorflow", saved_inputs)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_loss_and_assignment_equal_tensorflow(backend, saved_inputs, tensorflow_values):
    pytest.importorskip(backend)
    got, want = run_backend(backend, saved_inputs), tensorflow_values
    assert want["assign_positive"].sum() > 20  # the batch has positives (and an image without any)
    for key in ("labels", "positive", "target_boxes", "label_weights"):
        np.testing.assert_array_equal(got[f"assign_{key}"], want[f"assign_{key}"], err_msg=key)
    for name in ("qfl", "dfl", "giou"):
        assert float(want[f"loss_{name}"]) > 0
        assert float(got[f"loss_{name}"]) == pytest.approx(float(want[f"loss_{name}"]), rel=1e-5), name
    for name in ("grad_confidence", "grad_box_logits"):
        scale = float(np.abs(want[name]).max())
        assert scale > 0
        np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5 * scale, err_msg=name)
