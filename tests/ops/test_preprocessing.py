"""Test-time preprocessing (``models.preprocessing``) vs a float64 NumPy reference and TensorFlow.

The reference is the half-pixel bilinear formula written independently, in float64:
``src = (i + 0.5) * in / out - 0.5`` clamped to the image, ``(1 - w) * a + w * b`` along each
axis; then rounding to the uint8 grid, ``(x - mean) / std``, zero padding at the bottom/right.
"""

import numpy as np
import pytest
from keras import ops

from gflv2_keras.models.preprocessing import MEAN, STD, bilinear_resize, canvas_size, preprocess_images

SIZES = [((90, 150), (480, 800)), ((480, 640), (800, 1067)), ((37, 53), (19, 27)), ((333, 500), (800, 1201)),
         ((64, 64), (128, 128)), ((200, 301), (100, 150)), ((1, 7), (3, 20))]  # fmt: skip


def ref_resize(images, new_h, new_w):
    def axis_table(size, new):
        src = np.clip((np.arange(new) + 0.5) * size / new - 0.5, 0, size - 1)
        low = np.floor(src).astype(int)
        return low, np.minimum(low + 1, size - 1), src - low

    images = np.float64(images)
    y0, y1, wy = axis_table(images.shape[1], new_h)
    x0, x1, wx = axis_table(images.shape[2], new_w)
    rows = images[:, y0] * (1 - wy)[:, None, None] + images[:, y1] * wy[:, None, None]
    return rows[:, :, x0] * (1 - wx)[:, None] + rows[:, :, x1] * wx[:, None]


def near_half(values, tol):
    """Where float64 values are within ``tol`` of a rounding boundary ``k + 0.5``."""
    return np.abs(values - np.floor(values) - 0.5) < tol


@pytest.mark.parametrize("src,dst", SIZES)
def test_bilinear_resize_matches_float64_reference(src, dst):
    images = np.random.default_rng(sum(src)).integers(0, 256, (2, *src, 3), dtype=np.uint8)
    got = ops.convert_to_numpy(bilinear_resize(ops.cast(images, "float32"), *dst)).astype(np.float64)
    ref = ref_resize(images, *dst)
    assert got.shape == ref.shape
    # TF's float32 source coordinates (up to ~1000 px, error ~1e-4 px) times gradients up to 255.
    np.testing.assert_allclose(got, ref, atol=3e-2)
    flipped = np.round(got) != np.round(ref)
    assert not np.any(flipped & ~near_half(ref, 3e-2))  # rounding may differ only at a boundary


@pytest.mark.parametrize("src,dst", SIZES)
def test_bilinear_resize_equals_tf_image_resize(src, dst):
    tf = pytest.importorskip("tensorflow")
    images = np.random.default_rng(sum(dst)).integers(0, 256, (1, *src, 3), dtype=np.uint8).astype(np.float32)
    expected = tf.image.resize(images, dst, method="bilinear", antialias=False).numpy()
    np.testing.assert_array_equal(ops.convert_to_numpy(bilinear_resize(images, *dst)), expected)  # bit for bit


@pytest.mark.parametrize(
    "hw,canvas", [((90, 150), None), ((480, 640), None), ((333, 500), "canvas"), ((700, 90), None)]
)
def test_preprocess_images_matches_reference(hw, canvas):
    images = np.random.default_rng(hw[0]).integers(0, 256, (2, *hw, 3), dtype=np.uint8)
    scale = (1333, 800)
    if canvas:
        canvas = canvas_size(*hw, scale)
        canvas = (canvas[0] + 32, canvas[1] + 64)  # larger than needed: padded to it
    inputs, info = preprocess_images(images, scale, canvas=canvas)
    inputs = ops.convert_to_numpy(inputs)
    info = {k: ops.convert_to_numpy(v) for k, v in info.items()}

    factor = min(1333 / max(hw), 800 / min(hw))
    new_h, new_w = int(hw[0] * factor + 0.5), int(hw[1] * factor + 0.5)
    padded = canvas or (-(-new_h // 32) * 32, -(-new_w // 32) * 32)
    assert inputs.shape == (2, *padded, 3) and inputs.dtype == np.float32
    np.testing.assert_array_equal(info["image_shape"], [[new_h, new_w]] * 2)
    np.testing.assert_allclose(info["scale_factor"], [[new_h / hw[0], new_w / hw[1]]] * 2, rtol=1e-7)

    ref = ref_resize(images, new_h, new_w)
    expected = (np.round(np.clip(ref, 0, 255)) - np.array(MEAN)) / np.array(STD)
    got = inputs[:, :new_h, :new_w]
    safe = ~near_half(ref, 3e-2)
    np.testing.assert_allclose(got[safe], expected[safe], atol=1e-5)
    assert np.all(np.abs(got - expected) <= 1.0 / min(STD) + 1e-5)  # at most one grey level anywhere
    assert np.all(inputs[:, new_h:] == 0) and np.all(inputs[:, :, new_w:] == 0)


@pytest.mark.parametrize("hw", [(90, 150), (333, 500)])
def test_static_and_dynamic_graph_paths_agree(hw):
    """keras.ops (static sizes) and the TensorFlow ops of unknown-size graphs give the same inputs."""
    tf = pytest.importorskip("tensorflow")
    images = np.random.default_rng(7).integers(0, 256, (2, *hw, 3), dtype=np.uint8)
    canvas = canvas_size(*hw)
    outputs = {}
    for name, spec in (("static", [None, *hw, 3]), ("dynamic", [None, None, None, 3])):
        for with_canvas in (False, True):
            fn = tf.function(
                lambda x, c=with_canvas: preprocess_images(x, canvas=canvas if c else None),
                input_signature=[tf.TensorSpec(spec, tf.uint8)],
                autograph=False,
            )
            outputs[name, with_canvas] = fn(images)
    eager, eager_info = preprocess_images(images)
    for (name, with_canvas), (inputs, info) in outputs.items():
        assert tuple(inputs.shape) == (2, *canvas, 3), (name, with_canvas)
        # Grappler's rewrite of (x - mean) / std may move the last bit of a graph's result.
        np.testing.assert_allclose(inputs.numpy(), ops.convert_to_numpy(eager), rtol=0, atol=1e-6)
        for key in info:
            np.testing.assert_array_equal(info[key].numpy(), ops.convert_to_numpy(eager_info[key]))
    np.testing.assert_array_equal(outputs["static", False][0].numpy(), outputs["dynamic", False][0].numpy())
