"""The network layers on every Keras backend: JAX and PyTorch must compute what TensorFlow computes.

Each backend runs in its own process (``KERAS_BACKEND`` is read once, at ``import keras``) and
builds the same layers with the same seeded weights, assigned by variable path, so equal paths
on every backend are part of the check:

* a small ResNet-18 backbone + FPN + GFL head (layer names follow the naming rule of
  ``gflv2_keras.layers.naming``; dotted names break the PyTorch backend), and
* a modulated, grouped, strided ``DeformConv2D`` with random offsets and ``implementation="auto"``,
  which on JAX and PyTorch must take the portable path without ever importing the custom-op
  loader.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# Component-level checks; the default run keeps the whole-detector one (tests/backends).
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, sys
import numpy as np
import keras

from gflv2_keras.layers.deform_conv2d import DeformConv2D
from gflv2_keras.layers.walk import sublayers
from gflv2_keras.models.backbones.resnet import ResNetBackbone
from gflv2_keras.models.fpn import FPN
from gflv2_keras.models.gfl_head import GFLHead



def seeded(layers, seed):
    # Same values on every backend: drawn in variable-path order.
    rng = np.random.default_rng(seed)
    weights = sorted((v for layer in layers for v in layer.weights), key=lambda v: v.path)
    for v in weights:
        shape = tuple(v.shape)
        if v.path.endswith(("moving_variance", "gamma", "scale")):
            value = rng.uniform(0.5, 1.5, shape)
        elif v.path.endswith("offset_kernel"):
            value = rng.normal(0.0, 0.3, shape)  # offsets of a few tenths of a pixel
        elif len(shape) == 4:
            value = rng.normal(0.0, (2.0 / np.prod(shape[:-1])) ** 0.5, shape)  # He scale
        else:
            value = rng.normal(0.0, 0.1, shape)
        v.assign(value.astype("float32"))
    return [v.path for v in weights]


def compiled(layers, shape):
    # Built symbolically and run by predict (one jax.jit compile instead of one per eager op).
    inputs = keras.Input(shape[1:], batch_size=shape[0])
    outputs = inputs
    for layer in layers:
        outputs = layer(outputs)
    return keras.Model(inputs, outputs)


rng = np.random.default_rng(123)
images = rng.normal(size=(2, 64, 96, 3)).astype("float32")
layers = [ResNetBackbone(depth=18, base_channels=8), FPN(16),
          GFLHead(num_classes=3, feat_channels=16, stacked_convs=2, norm_groups=4)]
network = compiled(layers, images.shape)
paths = seeded(layers, seed=0)
confidence, box_logits = network.predict(images, verbose=0)

x = rng.normal(size=(2, 11, 10, 8)).astype("float32")
dcn = DeformConv2D(6, strides=2, groups=2, deform_groups=2, modulated=True, use_bias=True, implementation="auto")
deform_network = compiled([dcn], x.shape)
paths += seeded([dcn], seed=1)
deformed = deform_network.predict(x, verbose=0)

facts = {"paths": paths, "layers": [sub.name for layer in layers for sub in sublayers(layer)],
         "loader_imported": "gflv2_keras.ops.deform_conv.loader" in sys.modules}
if keras.backend.backend() != "tensorflow":
    try:
        DeformConv2D(4, implementation="custom_op")(x[..., :4])
        facts["custom_op_error"] = None
    except ValueError as error:
        facts["custom_op_error"] = str(error)
    facts["loader_imported_after_custom_op"] = "gflv2_keras.ops.deform_conv.loader" in sys.modules
np.savez(sys.argv[1], confidence=confidence, box_logits=box_logits, deformed=deformed)
print("FACTS" + json.dumps(facts))
"""


# XLA's CPU compiler at full optimisation spends seconds on each random initializer (threefry)
# that JAX compiles while building the layers; without optimisation the run takes a third of that.
FAST_XLA = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"


def _run(backend, output):
    env = {**os.environ, "KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    if backend == "jax":
        env["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_XLA}".strip()
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(output)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process, backend):
    out, err = process.communicate(timeout=300)
    assert process.returncode == 0, f"{backend} run failed:\n{err[-4000:]}"
    line = next(line for line in out.splitlines() if line.startswith("FACTS"))
    return json.loads(line[len("FACTS"):])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """``{backend: (outputs, facts)}`` for tensorflow, jax and torch (the latter two when installed)."""
    backends = ["tensorflow"] + [name for name in ("jax", "torch") if importlib.util.find_spec(name)]
    folder = tmp_path_factory.mktemp("backends")
    processes = {b: _run(b, folder / f"{b}.npz") for b in backends}  # in parallel: imports dominate
    facts = {b: _finish(p, b) for b, p in processes.items()}
    return {b: (dict(np.load(folder / f"{b}.npz")), facts[b]) for b in backends}


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_forward_pass_matches_tensorflow(runs, backend):
    pytest.importorskip(backend)
    reference, reference_facts = runs["tensorflow"]
    outputs, facts = runs[backend]
    assert facts["paths"] == reference_facts["paths"]
    # The sublayer walk finds the same layers (PyTorch keeps sublayers apart, hence its own order).
    assert sorted(facts["layers"]) == sorted(reference_facts["layers"])
    assert len(set(facts["layers"])) == len(facts["layers"])
    assert any("backbone-layer4-1-bn2" in p for p in facts["paths"])
    for key, want in reference.items():
        got = outputs[key]
        assert got.shape == want.shape, key
        assert np.abs(want).max() > 0, key
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max(), err_msg=key)


@pytest.mark.parametrize("backend", ["jax", "torch"])
def test_deform_conv_never_loads_the_custom_op_off_tensorflow(runs, backend):
    pytest.importorskip(backend)
    _, facts = runs[backend]
    assert not facts["loader_imported"] and not facts["loader_imported_after_custom_op"]
    assert "needs the TensorFlow backend" in facts["custom_op_error"]
