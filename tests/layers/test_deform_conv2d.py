"""Tests of DeformConv2D (mmcv DCNv1/DCNv2) against independent references.

The references here are written from mmcv's CUDA kernels (``deformable_im2col_bilinear`` with
the outer ``h > -1 && w > -1 && h < H && w < W`` check), in float64 NumPy with explicit
loops, sharing no code with the implementations under test.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

from gflv2_keras.layers.deform_conv2d import (  # noqa: E402
    DeformConv2D,
    deform_conv2d,
    force_portable,
    portable_forced,
    portable_tracing,
)
from gflv2_keras.ops.deform_conv import build as op_build  # noqa: E402
from gflv2_keras.ops.deform_conv import loader as op_loader  # noqa: E402

IMPLEMENTATIONS = ["portable", "custom_op"]


# --------------------------------------------------------------------------------------------
# NumPy references
# --------------------------------------------------------------------------------------------
def np_bilinear(img, h, w):
    """mmcv ``deformable_im2col_bilinear`` (plus its caller's range check) for an (H, W, C) image."""
    height, width, channels = img.shape
    zero = np.zeros(channels)
    if not (h > -1 and w > -1 and h < height and w < width):
        return zero
    h_low, w_low = int(np.floor(h)), int(np.floor(w))
    h_high, w_high = h_low + 1, w_low + 1
    lh, lw = h - h_low, w - w_low
    hh, hw = 1 - lh, 1 - lw
    v1 = img[h_low, w_low] if h_low >= 0 and w_low >= 0 else zero
    v2 = img[h_low, w_high] if h_low >= 0 and w_high <= width - 1 else zero
    v3 = img[h_high, w_low] if h_high <= height - 1 and w_low >= 0 else zero
    v4 = img[h_high, w_high] if h_high <= height - 1 and w_high <= width - 1 else zero
    return hh * hw * v1 + hh * lw * v2 + lh * hw * v3 + lh * lw * v4


def np_deform_conv(x, offset, weight, mask=None, stride=(1, 1), pad=(1, 1), dil=(1, 1), groups=1):
    """mmcv deform_conv2d in NHWC: x (B,H,W,C), offset (B,Ho,Wo,2GK), weight (kh,kw,C/groups,F)."""
    batch, _, _, channels = x.shape
    kh, kw, cin_g, filters = weight.shape
    taps = kh * kw
    _, out_h, out_w, offset_channels = offset.shape
    dgroups = offset_channels // (2 * taps)
    cd, fg = channels // dgroups, filters // groups
    out = np.zeros((batch, out_h, out_w, filters))
    for b in range(batch):
        for ho in range(out_h):
            for wo in range(out_w):
                cols = np.zeros((kh, kw, channels))
                for g in range(dgroups):
                    for i in range(kh):
                        for j in range(kw):
                            k = i * kw + j
                            dy = offset[b, ho, wo, 2 * (g * taps + k)]
                            dx = offset[b, ho, wo, 2 * (g * taps + k) + 1]
                            y = ho * stride[0] - pad[0] + i * dil[0] + dy
                            xx = wo * stride[1] - pad[1] + j * dil[1] + dx
                            m = 1.0 if mask is None else mask[b, ho, wo, g * taps + k]
                            cols[i, j, g * cd:(g + 1) * cd] = m * np_bilinear(x[b, :, :, g * cd:(g + 1) * cd], y, xx)
                for q in range(groups):
                    out[b, ho, wo, q * fg:(q + 1) * fg] = np.einsum(
                        "ijc,ijcf->f", cols[:, :, q * cin_g:(q + 1) * cin_g], weight[..., q * fg:(q + 1) * fg])
    return out


def np_conv(x, weight, stride, pad, dil):
    """Plain zero-padded (ungrouped) convolution, NHWC, for the offset branch."""
    kh, kw, _, _ = weight.shape
    xp = np.pad(x, ((0, 0), (pad[0], pad[0]), (pad[1], pad[1]), (0, 0)))
    out_h = (xp.shape[1] - dil[0] * (kh - 1) - 1) // stride[0] + 1
    out_w = (xp.shape[2] - dil[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((x.shape[0], out_h, out_w, weight.shape[3]))
    for ho in range(out_h):
        for wo in range(out_w):
            patch = xp[:, ho * stride[0]:ho * stride[0] + dil[0] * (kh - 1) + 1:dil[0],
                       wo * stride[1]:wo * stride[1] + dil[1] * (kw - 1) + 1:dil[1]]
            out[:, ho, wo] = np.einsum("bijc,ijcf->bf", patch, weight)
    return out


def keras_grouped_conv(x, kernel, stride, pad, dil, groups):
    """Zero-padded grouped conv from per-group ``keras.ops.conv`` calls (stride applied by subsampling,
    since TF rejects stride > 1 with dilation > 1)."""
    xp = ops.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    cin_g, fg = kernel.shape[2], kernel.shape[3] // groups
    outs = [ops.conv(xp[..., q * cin_g:(q + 1) * cin_g], kernel[..., q * fg:(q + 1) * fg],
                     strides=1, padding="valid", dilation_rate=dil) for q in range(groups)]
    return np.concatenate([ops.convert_to_numpy(o) for o in outs], axis=-1)[:, ::stride, ::stride]


def out_size(size, k, stride, pad, dil):
    return (size + 2 * pad - dil * (k - 1) - 1) // stride + 1


def base_positions(out_h, out_w, kh, kw, stride, pad, dil):
    """Undeformed sampling positions, each (out_h, out_w, kh*kw)."""
    ho, wo, i, j = np.meshgrid(np.arange(out_h), np.arange(out_w), np.arange(kh), np.arange(kw), indexing="ij")
    y = ho * stride[0] - pad[0] + i * dil[0]
    x = wo * stride[1] - pad[1] + j * dil[1]
    return y.reshape(out_h, out_w, -1), x.reshape(out_h, out_w, -1)


def offsets_for(targets_y, targets_x, base_y, base_x):
    """Offsets (B,Ho,Wo,G*K*2) in mmcv's interleaved layout that move taps to the targets (B,Ho,Wo,G,K)."""
    dy = targets_y - base_y[None, :, :, None, :]
    dx = targets_x - base_x[None, :, :, None, :]
    return np.stack([dy, dx], axis=-1).reshape(*dy.shape[:3], -1)


def tricky_targets(rng, shape, size):
    """Sample positions mixing exact integers, the border cases of the zero rule and far-away points."""
    special = np.array([-3.0, -1.0, -0.5, 0.0, 0.25, size - 1.0, size - 0.5, size, size + 0.5, 2.0])
    mixed = np.where(rng.random(shape) < 0.4, rng.choice(special, shape), rng.uniform(-2.0, size + 1.0, shape))
    return np.where(rng.random(shape) < 0.1, rng.integers(-3, size + 3, shape).astype(float), mixed)


def smooth_targets(rng, shape, size):
    """Positions with fractional parts in [0.1, 0.9]: no cell edges nearby, so finite differences are exact."""
    return np.floor(rng.uniform(-3.0, size + 2.0, shape)) + rng.uniform(0.1, 0.9, shape)


def make_problem(rng, targets_fn, batch=2, height=6, width=7, channels=8, filters=8, kernel_size=(3, 3),
                 stride=(1, 1), pad=(1, 1), dil=(1, 1), groups=1, dgroups=1, modulated=False):
    kh, kw = kernel_size
    out_h = out_size(height, kh, stride[0], pad[0], dil[0])
    out_w = out_size(width, kw, stride[1], pad[1], dil[1])
    base_y, base_x = base_positions(out_h, out_w, kh, kw, stride, pad, dil)
    shape = (batch, out_h, out_w, dgroups, kh * kw)
    offset = offsets_for(targets_fn(rng, shape, height), targets_fn(rng, shape, width), base_y, base_x)
    return dict(
        x=rng.standard_normal((batch, height, width, channels)),
        offset=offset,
        weight=rng.standard_normal((kh, kw, channels // groups, filters)),
        mask=rng.uniform(0.1, 1.0, shape[:3] + (dgroups * kh * kw,)) if modulated else None,
        conv_args=dict(stride=stride, pad=pad, dil=dil, groups=groups),
    )


def run_impl(implementation, p, dtype="float64"):
    a = p["conv_args"]
    cast = lambda v: None if v is None else ops.convert_to_tensor(v, dtype)  # noqa: E731
    return ops.convert_to_numpy(deform_conv2d(
        cast(p["x"]), cast(p["offset"]), cast(p["weight"]), cast(p["mask"]), strides=a["stride"],
        padding=a["pad"], dilation_rate=a["dil"], groups=a["groups"], implementation=implementation))


def impl_gradients(implementation, p, cotangent, dtype="float64"):
    """Gradients of sum(output * cotangent) wrt x, offset, mask (None if v1) and weight."""
    a = p["conv_args"]
    names = [n for n in ("x", "offset", "mask", "weight") if p[n] is not None]
    tensors = {n: tf.constant(p[n], dtype) for n in names}
    with tf.GradientTape() as tape:
        tape.watch(list(tensors.values()))
        out = deform_conv2d(tensors["x"], tensors["offset"], tensors["weight"], tensors.get("mask"),
                            strides=a["stride"], padding=a["pad"], dilation_rate=a["dil"], groups=a["groups"],
                            implementation=implementation)
        loss = tf.reduce_sum(out * tf.constant(cotangent, dtype))
    grads = tape.gradient(loss, [tensors[n] for n in names])
    return {n: g.numpy() for n, g in zip(names, grads)}


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def custom_op():
    if op_build.find_compiler() is None and not op_build.library_path().exists():
        pytest.skip("no C++ compiler found ($CXX, g++, c++, clang++): cannot build the GflDeformConv2d custom op")
    module = op_loader.load_deform_conv_op(build_if_missing=True)
    assert module is not None, op_loader.unavailable_reason()
    return module


@pytest.fixture(params=IMPLEMENTATIONS)
def implementation(request):
    if request.param == "custom_op":
        request.getfixturevalue("custom_op")
    return request.param


def random_layer(rng, input_shape, dtype="float32", offset_scale=0.3, **kwargs):
    """A built layer whose offset conv and bias are random (a fresh layer would have zero offsets)."""
    layer = DeformConv2D(dtype=dtype, **kwargs)
    layer.build(input_shape)
    for var in layer.weights:
        scale = offset_scale if var.path.endswith(("offset_kernel", "offset_bias")) else 1.0
        var.assign(rng.standard_normal(var.shape) * scale)
    return layer


# --------------------------------------------------------------------------------------------
# (a) zero offsets == plain zero-padded convolution
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("stride,dil,groups", [(1, 1, 1), (2, 1, 1), (1, 2, 1), (2, 2, 4), (1, 1, 4)])
def test_zero_offsets_equal_padded_conv(implementation, stride, dil, groups):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 9, 10, 8)).astype("float32")
    layer = DeformConv2D(8, strides=stride, padding=dil, dilation_rate=dil, groups=groups,
                         implementation=implementation)
    got = ops.convert_to_numpy(layer(x))
    want = keras_grouped_conv(x, ops.convert_to_numpy(layer.kernel), stride, dil, dil, groups)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_modulated_mask_at_init_is_half_and_saturated_mask_is_one(implementation, stride):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 8, 7, 8)).astype("float32")
    layer = DeformConv2D(4, strides=stride, modulated=True, deform_groups=2, implementation=implementation)
    at_init = ops.convert_to_numpy(layer(x))
    conv = keras_grouped_conv(x, ops.convert_to_numpy(layer.kernel), stride, 1, 1, 1)
    np.testing.assert_allclose(at_init, 0.5 * conv, atol=2e-5, rtol=1e-5)
    n = layer.deform_groups * layer.taps
    layer.offset_bias.assign(np.concatenate([np.zeros(2 * n), np.full(n, 40.0)]).astype("float32"))
    np.testing.assert_allclose(ops.convert_to_numpy(layer(x)), conv, atol=2e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# (b) random offsets and masks against the float64 NumPy reference
# --------------------------------------------------------------------------------------------
CASES = [
    dict(),
    dict(stride=(2, 2), modulated=True),
    dict(dil=(2, 2), pad=(2, 2), groups=4, dgroups=2),
    dict(stride=(2, 2), dil=(2, 2), groups=4, dgroups=2, modulated=True),
    dict(dgroups=2, modulated=True),
    dict(stride=(2, 1), groups=4, kernel_size=(2, 3), pad=(0, 1)),
    dict(dgroups=4, groups=2, modulated=True),  # deform groups straddling conv groups
]


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_random_offsets_match_numpy(implementation, case):
    p = make_problem(np.random.default_rng(2), tricky_targets, **case)
    got = run_impl(implementation, p)
    want = np_deform_conv(p["x"], p["offset"], p["weight"], p["mask"], **p["conv_args"])
    assert np.abs(want).max() > 1  # the sample must not be degenerate
    np.testing.assert_allclose(got, want, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("modulated,dgroups,groups", [(False, 1, 1), (True, 2, 1), (True, 1, 4)])
def test_layer_offset_branch_matches_numpy(implementation, modulated, dgroups, groups):
    """Offset conv, v2 chunking (o1, o2, m) and sigmoid mask, checked end to end in float64."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 7, 6, 8))
    layer = random_layer(rng, x.shape, dtype="float64", filters=8, strides=2, modulated=modulated,
                         deform_groups=dgroups, groups=groups, use_bias=True, implementation=implementation)
    raw = np_conv(x, layer.offset_kernel.numpy(), (2, 2), (1, 1), (1, 1)) + layer.offset_bias.numpy()
    mask = None
    if modulated:
        o1, o2, m = np.split(raw, 3, axis=-1)
        raw, mask = np.concatenate([o1, o2], axis=-1), 1 / (1 + np.exp(-m))
    assert np.abs(raw).max() > 1  # offsets large enough to leave the integer grid
    want = np_deform_conv(x, raw, layer.kernel.numpy(), mask, stride=(2, 2), groups=groups) + layer.bias.numpy()
    np.testing.assert_allclose(ops.convert_to_numpy(layer(x)), want, atol=1e-11, rtol=1e-11)


# --------------------------------------------------------------------------------------------
# (c) gradients against finite differences of the NumPy reference (float64)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", [dict(modulated=True, dgroups=2),
                                  dict(stride=(2, 2), dil=(2, 2), pad=(2, 2), groups=2, modulated=True),
                                  dict(groups=4)], ids=["v2-dg2", "v2-s2d2g2", "v1-g4"])
def test_gradients_match_finite_differences(implementation, case):
    rng = np.random.default_rng(4)
    p = make_problem(rng, smooth_targets, batch=1, height=5, width=6, **case)
    cotangent = rng.standard_normal(np_deform_conv(p["x"], p["offset"], p["weight"], p["mask"], **p["conv_args"]).shape)
    grads = impl_gradients(implementation, p, cotangent)

    def loss(**changed):
        q = {**p, **changed}
        return np.sum(np_deform_conv(q["x"], q["offset"], q["weight"], q["mask"], **p["conv_args"]) * cotangent)

    eps = 1e-4  # the reference is piecewise bilinear away from cell edges: central differences are exact
    for name, grad in grads.items():
        for _ in range(2):
            v = rng.standard_normal(p[name].shape)
            numeric = (loss(**{name: p[name] + eps * v}) - loss(**{name: p[name] - eps * v})) / (2 * eps)
            analytic = np.sum(grad * v)
            assert abs(numeric) > 1e-3, name
            np.testing.assert_allclose(analytic, numeric, rtol=1e-7, err_msg=name)


def test_offset_gradient_at_integer_positions_follows_mmcv(implementation):
    """On cell edges mmcv differentiates with the cell [floor(p), floor(p) + 1], i.e. takes the
    right derivative, except at p == -1 where the sample is zero and so is its gradient."""
    rng = np.random.default_rng(5)
    p = make_problem(rng, lambda r, s, n: r.integers(-2, n + 2, s).astype(float), batch=1, height=5, width=5,
                     modulated=True)
    cotangent = rng.standard_normal((1, 5, 5, 8))
    grad = impl_gradients(implementation, p, cotangent)["offset"]
    base = np.stack(base_positions(5, 5, 3, 3, (1, 1), (1, 1), (1, 1)), axis=-1)  # (Ho, Wo, K, 2)
    positions = p["offset"].reshape(1, 5, 5, 9, 2) + base[None]
    at_minus_one = (positions == -1).reshape(p["offset"].shape)
    assert at_minus_one.sum() > 5
    np.testing.assert_array_equal(grad[at_minus_one], 0)
    v = rng.uniform(0.5, 1.0, p["offset"].shape) * ~at_minus_one  # move the other positions down/right
    eps = 1e-6

    def loss(off):
        return np.sum(np_deform_conv(p["x"], off, p["weight"], p["mask"], **p["conv_args"]) * cotangent)

    np.testing.assert_allclose(np.sum(grad * v), (loss(p["offset"] + eps * v) - loss(p["offset"])) / eps, rtol=1e-5)


# --------------------------------------------------------------------------------------------
# (d) custom op == portable, forward and backward, float32
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("modulated,stride,groups,dgroups", [(False, 1, 1, 1), (True, 2, 4, 2), (False, 2, 4, 1),
                                                             (True, 1, 1, 2)])
def test_custom_op_matches_portable_float32(custom_op, modulated, stride, groups, dgroups):
    rng = np.random.default_rng(6)
    x = tf.constant(rng.standard_normal((2, 13, 11, 16)), "float32")
    kwargs = dict(filters=8, strides=stride, groups=groups, deform_groups=dgroups, modulated=modulated, use_bias=True)
    portable = random_layer(rng, x.shape, offset_scale=0.2, implementation="portable", **kwargs)
    op = DeformConv2D(implementation="custom_op", **kwargs)
    op.build(x.shape)
    op.set_weights(portable.get_weights())

    def forward_and_grads(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = layer(x)
            loss = tf.reduce_sum(out * tf.reshape(tf.sin(tf.range(tf.size(out), dtype="float32") * 0.37), out.shape))
        return out.numpy(), [g.numpy() for g in tape.gradient(loss, [x] + layer.trainable_weights)]

    out_p, grads_p = forward_and_grads(portable)
    out_o, grads_o = forward_and_grads(op)
    scale = np.abs(out_p).max()
    assert np.abs(out_o - out_p).max() <= 2e-6 * scale
    for name, gp, go in zip(["input"] + [w.name for w in portable.trainable_weights], grads_p, grads_o):
        assert np.abs(gp).max() > 0, name
        assert np.abs(go - gp).max() <= 2e-5 * np.abs(gp).max(), name


def test_force_portable_keeps_custom_op_out_of_graphs(custom_op):
    layer = DeformConv2D(4, implementation="custom_op")
    layer.build((1, 6, 6, 4))

    def op_types():
        fn = tf.function(lambda t: layer(t)).get_concrete_function(tf.TensorSpec((1, 6, 6, 4), "float32"))
        return {node.type for node in fn.graph.get_operations()}

    assert "GflDeformConv2d" in op_types()
    with force_portable():
        assert "GflDeformConv2d" not in op_types()
    assert "GflDeformConv2d" in op_types()


def test_missing_compiler_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("GFLV2_KERAS_OPS_DIR", str(tmp_path))
    monkeypatch.setattr(op_build, "find_compiler", lambda: None)
    with pytest.raises(op_build.CompilerNotFoundError, match="No C\\+\\+ compiler found"):
        op_build.build_deform_conv_op(verbose=False)


def test_auto_never_builds_and_falls_back_to_portable(monkeypatch, tmp_path):
    """With an empty op cache and nothing loaded, "auto" logs why and runs the portable path."""
    monkeypatch.setenv("GFLV2_KERAS_OPS_DIR", str(tmp_path))
    monkeypatch.setattr(op_loader, "_module", None)
    monkeypatch.setattr(op_loader, "_build_failure", None)
    monkeypatch.setattr(op_build, "build_deform_conv_op", lambda **_: pytest.fail("auto must not build"))
    x = np.random.default_rng(7).standard_normal((1, 5, 5, 4)).astype("float32")
    layer = DeformConv2D(4, implementation="auto")
    np.testing.assert_allclose(ops.convert_to_numpy(layer(x)),
                               keras_grouped_conv(x, ops.convert_to_numpy(layer.kernel), 1, 1, 1, 1), atol=2e-5)
    assert "not built" in op_loader.unavailable_reason()


# --------------------------------------------------------------------------------------------
# (e) serialisation
# --------------------------------------------------------------------------------------------
def test_config_round_trip_and_keras_file(tmp_path):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((1, 9, 8, 8)).astype("float32")
    layer = random_layer(rng, x.shape, filters=6, kernel_size=(3, 3), strides=2, padding=2, dilation_rate=2,
                         groups=2, deform_groups=2, modulated=True, use_bias=True, implementation="portable",
                         kernel_regularizer="l2", name="dcn")
    config = layer.get_config()
    clone = DeformConv2D.from_config(config)
    assert clone.get_config() == config
    clone.build(x.shape)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(ops.convert_to_numpy(clone(x)), ops.convert_to_numpy(layer(x)))

    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is DeformConv2D and restored.get_config() == config

    inputs = keras.Input((None, None, 8))
    model = keras.Model(inputs, layer(inputs))
    path = tmp_path / "dcn.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert sorted(w.path for w in loaded.weights) == sorted(w.path for w in model.weights)
    np.testing.assert_allclose(ops.convert_to_numpy(loaded(x)), ops.convert_to_numpy(model(x)), atol=1e-6)


def test_weight_names_and_shapes():
    v1 = DeformConv2D(8, groups=4, deform_groups=2)
    v1.build((None, None, None, 16))
    assert {w.path.split("/")[-1]: tuple(w.shape) for w in v1.weights} == {
        "kernel": (3, 3, 4, 8), "offset_kernel": (3, 3, 16, 36), "offset_bias": (36,)}
    v2 = DeformConv2D(8, kernel_size=(1, 3), modulated=True, use_bias=True)
    v2.build((None, None, None, 16))
    assert {w.path.split("/")[-1]: tuple(w.shape) for w in v2.weights} == {
        "kernel": (1, 3, 16, 8), "bias": (8,), "offset_kernel": (1, 3, 16, 9), "offset_bias": (9,)}
    assert v2.compute_output_shape((2, 10, 11, 16)) == (2, 12, 11, 8)


def test_invalid_arguments_raise_named_errors():
    with pytest.raises(ValueError, match="implementation"):
        DeformConv2D(4, implementation="cuda")
    with pytest.raises(ValueError, match="divisible by groups"):
        DeformConv2D(6, groups=4)
    with pytest.raises(ValueError, match="deform_groups"):
        DeformConv2D(4, deform_groups=3).build((1, 5, 5, 8))
    with pytest.raises(ValueError, match="offset has 10 channels"):
        deform_conv2d(np.zeros((1, 5, 5, 4), "float32"), np.zeros((1, 5, 5, 10), "float32"),
                      np.zeros((3, 3, 4, 4), "float32"), padding=1)


# --------------------------------------------------------------------------------------------
# (f) XLA
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("modulated,groups,stride", [(False, 1, 1), (True, 4, 2)])
def test_portable_under_xla_matches_eager(modulated, groups, stride):
    rng = np.random.default_rng(9)
    x = tf.constant(rng.standard_normal((2, 10, 9, 8)), "float32")
    layer = random_layer(rng, x.shape, filters=8, strides=stride, groups=groups, modulated=modulated,
                         deform_groups=2, implementation="portable")

    def forward_and_grads(t):
        with tf.GradientTape() as tape:
            tape.watch(t)
            out = layer(t)
            loss = tf.reduce_sum(out * out)
        return [out] + tape.gradient(loss, [t] + layer.trainable_weights)

    eager = forward_and_grads(x)
    compiled = tf.function(forward_and_grads, jit_compile=True)(x)
    for e, c in zip(eager, compiled):
        np.testing.assert_allclose(c.numpy(), e.numpy(), atol=2e-5 * np.abs(e.numpy()).max(), rtol=1e-4)


def test_custom_op_in_xla_needs_force_portable(custom_op):
    """XLA compilation is the caller's to declare: the op has no XLA kernel, force_portable() keeps it out."""
    x = tf.constant(np.random.default_rng(10).standard_normal((1, 6, 6, 4)), "float32")
    explicit = DeformConv2D(4, implementation="custom_op")
    explicit.build(x.shape)
    with pytest.raises(tf.errors.InvalidArgumentError, match="GflDeformConv2d"):
        tf.function(lambda t: explicit(t), jit_compile=True)(x)

    forced = tf.function(portable_tracing(lambda t: explicit(t)), jit_compile=True)(x)
    assert not portable_forced()  # only while tracing
    auto = DeformConv2D(4, implementation="auto")
    auto.build(x.shape)
    auto.set_weights(explicit.get_weights())
    np.testing.assert_allclose(tf.function(portable_tracing(lambda t: auto(t)), jit_compile=True)(x).numpy(),
                               forced.numpy(), atol=1e-6)
    np.testing.assert_allclose(explicit(x).numpy(), forced.numpy(), atol=1e-5)
