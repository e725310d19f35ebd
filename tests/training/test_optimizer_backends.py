"""``CoupledSGD`` on the TensorFlow, JAX and PyTorch backends equals ``torch.optim.SGD`` (float64 NumPy).

A fresh process per backend (``KERAS_BACKEND``) applies fixed gradients to fixed weights with

* a warm-up / step-decay schedule and one variable excluded from the coupled L2 by name
  (``exclude_from_weight_decay(var_names=...)``, the optimizer's own rule and index);
* Keras' ``gradient_accumulation_steps=2`` with the schedule wrapped in ``UpdateCountSchedule``
  (the accumulation ``compile_for_training`` uses on JAX and PyTorch): one SGD update per two
  micro-steps, on their mean gradient, at the lr of the update count.
"""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from test_optimizer_schedule import _problem, torch_sgd_reference  # tests/training is on sys.path

from gflv2_keras.training.schedule import WarmupStepDecay

# Component-level checks; the default run keeps the whole-detector one (tests/backends).
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCHEDULE = {"base_lr": 0.2, "milestones": [2], "warmup_iters": 2, "warmup_ratio": 0.1}
DECAY, MOMENTUM = 1e-2, 0.9

SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import keras
    from gflv2_keras.training.optimizer import CoupledSGD
    from gflv2_keras.training.schedule import UpdateCountSchedule, WarmupStepDecay

    data = dict(np.load(sys.argv[1]))
    count = int(data.pop("count"))
    weights = [data[f"w{i}"] for i in range(count)]
    steps = int(data.pop("steps"))
    grads = [[data[f"g{t}_{i}"] for i in range(count)] for t in range(steps)]
    schedule = WarmupStepDecay(**SCHEDULE)
    out = {}

    def run(optimizer, names):
        variables = [keras.Variable(w, name=n) for w, n in zip(weights, names)]
        optimizer.build(variables)
        for step in grads:
            optimizer.apply([keras.ops.convert_to_tensor(g) for g in step], variables)
        return [keras.ops.convert_to_numpy(v) for v in variables], int(keras.ops.convert_to_numpy(optimizer.iterations))

    names = ["kernel", "skip_bias", "other"]
    plain = CoupledSGD(schedule, momentum=MOMENTUM, weight_decay=DECAY)
    plain.exclude_from_weight_decay(var_names=["skip"])
    values, out["plain_iterations"] = run(plain, names)
    out.update({f"plain_{i}": v for i, v in enumerate(values)})

    accumulated = CoupledSGD(UpdateCountSchedule(schedule, 2), momentum=MOMENTUM, weight_decay=DECAY,
                             gradient_accumulation_steps=2)
    values, out["accumulated_iterations"] = run(accumulated, ["a", "b", "c"])
    out.update({f"accumulated_{i}": v for i, v in enumerate(values)})
    np.savez(sys.argv[2], **out)
    print("DONE", keras.config.backend())
    """
).replace("SCHEDULE", repr(SCHEDULE)).replace("MOMENTUM", repr(MOMENTUM)).replace("DECAY", repr(DECAY))


@pytest.fixture(scope="module")
def problem(tmp_path_factory):
    weights, grads = _problem(seed=3, steps=6)
    path = tmp_path_factory.mktemp("optimizer_backends") / "problem.npz"
    arrays = {f"w{i}": w for i, w in enumerate(weights)}
    arrays.update({f"g{t}_{i}": g for t, step in enumerate(grads) for i, g in enumerate(step)})
    np.savez(path, count=len(weights), steps=len(grads), **arrays)
    return path, weights, grads


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_coupled_sgd_on_every_backend(backend, problem):
    if backend != "tensorflow":
        pytest.importorskip(backend)
    path, weights, grads = problem
    output = path.parent / f"{backend}.npz"
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(path), str(output)], capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0 and f"DONE {backend}" in result.stdout, result.stdout[-2000:] + result.stderr[-4000:]
    got = dict(np.load(output))
    schedule = WarmupStepDecay(**SCHEDULE)

    lrs = [float(schedule(t)) for t in range(len(grads))]
    expected = torch_sgd_reference(weights, grads, lrs, MOMENTUM, DECAY)
    no_decay = torch_sgd_reference(weights[1:2], [g[1:2] for g in grads], lrs, MOMENTUM, 0.0)
    assert int(got["plain_iterations"]) == len(grads)
    for i, want in enumerate([expected[0], no_decay[0], expected[2]]):
        np.testing.assert_allclose(got[f"plain_{i}"], want, rtol=1e-5, atol=1e-6, err_msg=f"plain {i}")

    updates = len(grads) // 2
    mean_grads = [[(a + b) / 2 for a, b in zip(grads[2 * u], grads[2 * u + 1])] for u in range(updates)]
    expected = torch_sgd_reference(weights, mean_grads, [float(schedule(u)) for u in range(updates)], MOMENTUM, DECAY)
    assert int(got["accumulated_iterations"]) == updates  # Keras counts updates
    for i, want in enumerate(expected):
        np.testing.assert_allclose(got[f"accumulated_{i}"], want, rtol=1e-5, atol=1e-6, err_msg=f"accumulated {i}")
