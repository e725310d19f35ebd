"""Res2Net v1d backbone: official parameter count, shapes, layer names, config, and numerics vs NumPy.

The NumPy reference follows MMDetection's ``Res2Net`` / ``Bottle2neck`` forward pass
(``mmdet/models/backbones/res2net.py``) with PyTorch pooling semantics written out directly (``-inf`` max-pool padding,
``count_include_pad`` averaging, ``ceil_mode`` windows), in float64 on tiny shapes.
"""


import keras
import numpy as np
import pytest

from gflv2_keras.layers.naming import module_path
from gflv2_keras.layers.norm import BatchNorm
from gflv2_keras.layers.padded_conv import PaddedConv2D
from gflv2_keras.layers.walk import sublayers
from gflv2_keras.models.backbones import build_backbone
from gflv2_keras.models.backbones.res2net import Bottle2neck, Res2NetBackbone

PRESET = "gflv2_r2_101_dcn_fpn_ms2x_coco"
OFFICIAL_PARAMS = 53_580_319
# DCNv1 conv_offset (18 x w x 3 x 3 weight + 18 bias) on the 3 ``convs.i`` of each c4-c5 block.
OFFSET_PARAMS = 23 * 3 * (104 * 18 * 9 + 18) + 3 * 3 * (208 * 18 * 9 + 18)
EPS = 1e-5


# ----------------------------------------------------------------------------- NumPy reference
def ref_conv(x, kernel, stride, pad):
    """nn.Conv2d (no bias) on NHWC ``x`` with a Keras ``(kh, kw, cin, cout)`` kernel."""
    kh, kw = kernel.shape[:2]
    xp = np.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    ho = (xp.shape[1] - kh) // stride + 1
    wo = (xp.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, kernel.shape[3]))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
            out[:, i, j] = np.einsum("nhwc,hwco->no", patch, kernel)
    return out


def ref_bn(x, p):
    gamma, beta, mean, var = p
    return (x - mean) / np.sqrt(var + EPS) * gamma + beta


def relu(x):
    return np.maximum(x, 0.0)


def ref_max_pool_3x3s2p1(x):
    """nn.MaxPool2d(3, 2, padding=1): padding is -inf."""
    xp = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)], constant_values=-np.inf)
    ho, wo = (x.shape[1] - 1) // 2 + 1, (x.shape[2] - 1) // 2 + 1
    out = np.zeros((x.shape[0], ho, wo, x.shape[3]))
    for i in range(ho):
        for j in range(wo):
            out[:, i, j] = xp[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max(axis=(1, 2))
    return out


def ref_avg_pool_include_pad(x, stride):
    """nn.AvgPool2d(3, stride, padding=1), count_include_pad=True: divisor always 9."""
    xp = np.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)])
    ho, wo = (x.shape[1] - 1) // stride + 1, (x.shape[2] - 1) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, x.shape[3]))
    for i in range(ho):
        for j in range(wo):
            out[:, i, j] = xp[:, i * stride : i * stride + 3, j * stride : j * stride + 3].sum(axis=(1, 2)) / 9.0
    return out


def ref_avg_pool_ceil_exclude(x, k):
    """nn.AvgPool2d(k, k, ceil_mode=True, count_include_pad=False): clipped windows, own divisor."""

    def size(n):
        out = -(-(n - k) // k) + 1  # ceil((n - k) / k) + 1
        return out - 1 if (out - 1) * k >= n else out  # a window must start inside the input

    ho, wo = size(x.shape[1]), size(x.shape[2])
    out = np.zeros((x.shape[0], ho, wo, x.shape[3]))
    for i in range(ho):
        for j in range(wo):
            rows, cols = slice(i * k, min(i * k + k, x.shape[1])), slice(j * k, min(j * k + k, x.shape[2]))
            out[:, i, j] = x[:, rows, cols].mean(axis=(1, 2))
    return out


def ref_bottle2neck(x, P, prefix, stride, stage_type, scales, has_downsample):
    """``Bottle2neck.forward`` of MMDetection, from the official module names in ``P``."""
    out = relu(ref_bn(ref_conv(x, P[f"{prefix}.conv1"], 1, 0), P[f"{prefix}.bn1"]))
    width = out.shape[-1] // scales
    spx = [out[..., i * width : (i + 1) * width] for i in range(scales)]
    sp = relu(ref_bn(ref_conv(spx[0], P[f"{prefix}.convs.0"], stride, 1), P[f"{prefix}.bns.0"]))
    outs = [sp]
    for i in range(1, scales - 1):
        sp = spx[i] if stage_type == "stage" else sp + spx[i]
        sp = relu(ref_bn(ref_conv(sp, P[f"{prefix}.convs.{i}"], stride, 1), P[f"{prefix}.bns.{i}"]))
        outs.append(sp)
    if stage_type == "normal" or stride == 1:
        outs.append(spx[-1])
    else:
        outs.append(ref_avg_pool_include_pad(spx[-1], stride))
    out = ref_bn(ref_conv(np.concatenate(outs, -1), P[f"{prefix}.conv3"], 1, 0), P[f"{prefix}.bn3"])
    identity = x
    if has_downsample:
        identity = ref_avg_pool_ceil_exclude(x, stride)  # k = s = 1 is the identity
        identity = ref_bn(ref_conv(identity, P[f"{prefix}.downsample.1"], 1, 0), P[f"{prefix}.downsample.2"])
    return relu(out + identity)


def ref_res2net50(x, P, scales):
    """Deep stem, max-pool, layers 1-4 (3, 4, 6, 3 blocks); returns [C3, C4, C5]."""
    for index, stride in ((0, 2), (3, 1), (6, 1)):
        x = relu(ref_bn(ref_conv(x, P[f"backbone.stem.{index}"], stride, 1), P[f"backbone.stem.{index + 1}"]))
    x = ref_max_pool_3x3s2p1(x)
    outputs = []
    for layer, blocks in enumerate((3, 4, 6, 3), start=1):
        for b in range(blocks):
            stride = 2 if (layer > 1 and b == 0) else 1
            stage_type = "stage" if b == 0 else "normal"
            x = ref_bottle2neck(x, P, f"backbone.layer{layer}.{b}", stride, stage_type, scales, b == 0)
        outputs.append(x)
    return outputs[1:]


# ----------------------------------------------------------------------------- helpers
def named_layers(layer):
    """``{official module path: sublayer}`` (naming rule of ``gflv2_keras.layers.naming``)."""
    return {module_path(sub.name): sub for sub in sublayers(layer)}


def randomize(layer, rng):
    """Random conv kernels (He scale) and random BN affine + statistics, so BN matters."""
    for var in layer.weights:
        shape = tuple(var.shape)
        if var.name in ("gamma", "moving_variance"):
            value = rng.uniform(0.5, 1.5, shape)
        elif var.name in ("beta", "moving_mean"):
            value = rng.normal(0.0, 0.3, shape)
        else:
            value = rng.normal(0.0, np.sqrt(2.0 / np.prod(shape[:-1])), shape)
        var.assign(value.astype(var.dtype))


def numpy_params(layer):
    """Official module name → float64 kernel (convs) or (gamma, beta, mean, var) (BN)."""
    params = {}
    for name, sub in named_layers(layer).items():
        if isinstance(sub, PaddedConv2D):
            params[name] = np.asarray(sub.kernel, np.float64)
        elif isinstance(sub, BatchNorm):
            params[name] = tuple(np.asarray(w, np.float64) for w in sub.get_weights())
    return params


class default_dtype:
    """Layers created inside use ``dtype`` (Keras caches its global policy, so set both)."""

    def __init__(self, dtype):
        self.dtype = dtype

    def __enter__(self):
        self.previous = keras.config.floatx(), keras.config.dtype_policy()
        keras.config.set_floatx(self.dtype)
        keras.config.set_dtype_policy(self.dtype)

    def __exit__(self, *exc):
        keras.config.set_floatx(self.previous[0])
        keras.config.set_dtype_policy(self.previous[1])


@pytest.fixture
def float64():
    with default_dtype("float64"):
        yield


def halvings(n, times):
    for _ in range(times):
        n = (n + 1) // 2
    return n


# ----------------------------------------------------------------------------- full size
@pytest.fixture(scope="module")
def r2_101_no_dcn():
    """The preset with DCN switched off, built on a tiny input (building only)."""
    from gflv2_keras.models.detector import GFLV2Detector
    from gflv2_keras.presets import preset_info

    backbone = {**preset_info(PRESET)["config"]["backbone"], "stage_with_dcn": [False] * 4}
    detector = GFLV2Detector.from_preset(PRESET, load_weights=False, backbone=backbone)
    return detector.build_for_inference(size=(32, 32))


def test_param_count_without_dcn_matches_official_minus_offsets(r2_101_no_dcn):
    assert OFFSET_PARAMS == 1_467_180
    assert r2_101_no_dcn.count_params_official() == OFFICIAL_PARAMS - OFFSET_PARAMS == 52_113_139


@pytest.mark.slow  # builds 52M parameters and 78 deformable convs (about a minute on 2 CPU cores)
def test_param_count_of_dcn_preset_matches_official():
    from gflv2_keras.models.detector import GFLV2Detector

    from gflv2_keras.layers.deform_conv2d import DeformConv2D

    detector = GFLV2Detector.from_preset(PRESET, load_weights=False).build_for_inference(size=(32, 32))
    assert detector.count_params_official() == OFFICIAL_PARAMS
    layers = named_layers(detector.backbone.image_encoder)
    deformable = sorted(name for name, layer in layers.items() if isinstance(layer, DeformConv2D))
    assert len(deformable) == 78 and all(n.startswith(("backbone.layer3.", "backbone.layer4.")) for n in deformable)
    assert all(".convs." in n for n in deformable)


def official_backbone_keys():
    """``backbone.*`` state-dict keys and PyTorch shapes of Res2Net-101 26w4s (``Res2Net.state_dict`` of the official code), no DCN."""
    keys = {}

    def conv(name, cout, cin, k):
        keys[f"{name}.weight"] = (cout, cin, k, k)

    def bn(name, c):
        for suffix in ("weight", "bias", "running_mean", "running_var"):
            keys[f"{name}.{suffix}"] = (c,)

    for index, (cin, cout) in zip((0, 3, 6), ((3, 32), (32, 32), (32, 64))):
        conv(f"backbone.stem.{index}", cout, cin, 3)
        bn(f"backbone.stem.{index + 1}", cout)
    inplanes = 64
    for layer, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 23, 3)), start=1):
        width = planes * 26 // 64
        for b in range(blocks):
            p = f"backbone.layer{layer}.{b}"
            conv(f"{p}.conv1", 4 * width, inplanes, 1)
            bn(f"{p}.bn1", 4 * width)
            for i in range(3):
                conv(f"{p}.convs.{i}", width, width, 3)
                bn(f"{p}.bns.{i}", width)
            conv(f"{p}.conv3", 4 * planes, 4 * width, 1)
            bn(f"{p}.bn3", 4 * planes)
            if b == 0:
                conv(f"{p}.downsample.1", 4 * planes, inplanes, 1)
                bn(f"{p}.downsample.2", 4 * planes)
            inplanes = 4 * planes
    return keys


def test_layer_names_and_shapes_are_the_official_state_dict(r2_101_no_dcn):
    bn_keys = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}
    ours = {}
    for name, layer in named_layers(r2_101_no_dcn.backbone.image_encoder).items():
        if isinstance(layer, PaddedConv2D):
            kh, kw, cin, cout = layer.kernel.shape
            ours[f"{name}.weight"] = (cout, cin, kh, kw)
        elif isinstance(layer, BatchNorm):
            for var in layer.weights:
                ours[f"{name}.{bn_keys[var.name]}"] = tuple(var.shape)
    expected = official_backbone_keys()
    assert sorted(set(expected) - set(ours)) == []
    assert sorted(set(ours) - set(expected)) == []
    assert {k: ours[k] for k in expected} == expected
    # Spot checks, and the modules Res2Net deletes or does not have.
    assert ours["backbone.layer3.0.convs.0.weight"] == (104, 104, 3, 3)
    assert ours["backbone.layer1.0.downsample.1.weight"] == (256, 64, 1, 1)
    names = set(named_layers(r2_101_no_dcn.backbone.image_encoder))
    for name in ("backbone.stem.0", "backbone.stem.7", "backbone.layer1.0.bns.2", "backbone.layer4.2.bn3"):
        assert name in names
    assert not [n for n in names if ".conv2" in n or ".bn2" in n or "downsample.0" in n]
    assert "backbone.conv1" not in names and "backbone.bn1" not in names
    assert sum(np.prod(s) for k, s in expected.items() if "running" not in k) == 43_176_920


@pytest.mark.parametrize("height,width", [(37, 50), (64, 96)])
def test_full_size_output_shapes(r2_101_no_dcn, height, width):
    encoder = r2_101_no_dcn.backbone.image_encoder
    c3, c4, c5 = encoder(np.zeros((1, height, width, 3), np.float32))
    assert tuple(c3.shape) == (1, halvings(height, 3), halvings(width, 3), 512)
    assert tuple(c4.shape) == (1, halvings(height, 4), halvings(width, 4), 1024)
    assert tuple(c5.shape) == (1, halvings(height, 5), halvings(width, 5), 2048)
    assert encoder.out_channels == [512, 1024, 2048]


# ----------------------------------------------------------------------------- numerics
@pytest.mark.parametrize(
    "stage_type,stride,in_channels,height,width",
    [
        ("stage", 2, 16, 7, 6),  # first block of layers 2-4: odd and even sizes
        ("stage", 2, 16, 5, 9),
        ("stage", 1, 8, 5, 6),  # first block of layer1: identity pools, projection shortcut
        ("normal", 1, 32, 6, 5),  # hierarchical adds, identity shortcut
    ],
)
def test_bottle2neck_matches_numpy(float64, rng, stage_type, stride, in_channels, height, width):
    # planes 8, base_width 26 at base_channels 64: w = floor(8 * 26 / 64) = 3, conv1 gives 12.
    block = Bottle2neck(in_channels, 8, stride, stage_type=stage_type, frozen_stats=True, prefix="b", name="b")
    x = rng.normal(size=(2, height, width, in_channels))
    block(x)
    assert block.width == 3
    assert (block.downsample is not None) == (stage_type == "stage")
    randomize(block, rng)
    got = np.asarray(block(x, training=True))  # frozen statistics: training changes nothing
    want = ref_bottle2neck(x, numpy_params(block), "b", stride, stage_type, 4, stage_type == "stage")
    assert got.shape == (2, -(-height // stride), -(-width // stride), 32)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10 * np.abs(want).max())


def test_tiny_res2net50_matches_numpy(rng):
    """Deep stem, max-pool and all 16 blocks of a narrow Res2Net-50 (w = 4, 8, 16, 32), float32.

    Odd and even sizes occur at every level (35 x 30 → 18 x 15 → 9 x 8 → 5 x 4 → 3 x 2 → 2 x 1).
    """
    height, width = 35, 30
    backbone = Res2NetBackbone(depth=50, base_channels=8, base_width=4)
    x = rng.normal(size=(1, height, width, 3))
    backbone(x.astype("float32"))
    randomize(backbone, rng)
    P = numpy_params(backbone)

    stem = x
    for index, stride in ((0, 2), (3, 1), (6, 1)):
        stem = relu(ref_bn(ref_conv(stem, P[f"backbone.stem.{index}"], stride, 1), P[f"backbone.stem.{index + 1}"]))
    got_stem = np.asarray(backbone.run_stem(x.astype("float32"), training=False), np.float64)
    assert got_stem.shape == stem.shape == (1, 18, 15, 8)
    np.testing.assert_allclose(got_stem, stem, rtol=0, atol=1e-5 * np.abs(stem).max())

    got = backbone(x.astype("float32"), training=True)  # norm_eval: training changes nothing
    want = ref_res2net50(x, P, scales=4)
    assert [block.width for block in backbone.stages[3]] == [32, 32, 32]
    for level, (g, w) in enumerate(zip(got, want)):
        g = np.asarray(g, np.float64)
        assert g.shape == w.shape == (1, halvings(height, level + 3), halvings(width, level + 3), 64 * 2**level)
        np.testing.assert_allclose(g, w, rtol=0, atol=2e-5 * np.abs(w).max())


@pytest.mark.parametrize("frozen_stats", [True, False])
def test_norm_eval_freezes_bn_statistics(rng, frozen_stats):
    block = Bottle2neck(8, 4, 2, base_width=32, stage_type="stage", frozen_stats=frozen_stats, prefix="b", name="b")
    x = rng.normal(size=(2, 6, 6, 8)).astype("float32")
    block(x)
    randomize(block, rng)
    before = [np.asarray(v) for v in block.non_trainable_weights]
    same = np.array_equal(np.asarray(block(x, training=True)), np.asarray(block(x, training=False)))
    unchanged = all(np.array_equal(a, np.asarray(b)) for a, b in zip(before, block.non_trainable_weights))
    assert same == unchanged == frozen_stats


def test_frozen_stages_and_bn_modes():
    backbone = Res2NetBackbone(depth=50, base_channels=8, base_width=4, frozen_stages=1, norm_eval=True)
    assert all(not layer.trainable for layer in backbone.stem)
    assert all(not block.trainable for block in backbone.stages[0])
    assert all(block.trainable for stage in backbone.stages[1:] for block in stage)
    norms = [layer for layer in named_layers(backbone).values() if isinstance(layer, BatchNorm)]
    assert len(norms) == 3 + 16 * 5 + 4 * 1 and all(layer.frozen_stats for layer in norms)
    live = Res2NetBackbone(depth=50, base_channels=8, base_width=4, frozen_stages=-1, norm_eval=False)
    assert all(layer.trainable for layer in named_layers(live).values())
    assert not any(layer.frozen_stats for layer in named_layers(live).values() if isinstance(layer, BatchNorm))


def architecture(layer):
    """Every sublayer's name and config (weights follow from these and the input channels)."""
    return {
        name: {k: v for k, v in sub.get_config().items() if k != "dtype"} for name, sub in named_layers(layer).items()
    }


def test_get_config_round_trip():
    config = {
        "depth": 50, "scales": 3, "base_width": 6, "base_channels": 8, "frozen_stages": 0, "norm_eval": False,
        "stage_with_dcn": [False, False, False, False], "dcn": None, "prefix": "backbone",
    }  # fmt: skip
    backbone = build_backbone({"type": "res2net", **config})
    assert isinstance(backbone, Res2NetBackbone)
    saved = backbone.get_config()
    assert {k: saved[k] for k in config} == config and "groups" not in saved
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(backbone))
    assert type(restored) is Res2NetBackbone and restored.get_config() == saved
    assert architecture(restored) == architecture(backbone)
    block = backbone.stages[1][0]
    assert block.width == 16 * 6 // 8 and block.stage_type == "stage" and len(block.convs) == 2
    names = architecture(backbone)
    assert "backbone.layer2.0.convs.1" in names and "backbone.layer2.0.convs.2" not in names
    clone = Bottle2neck.from_config(block.get_config())
    assert clone.get_config() == block.get_config() and architecture(clone) == architecture(block)


def test_rejects_unsupported_settings():
    with pytest.raises(ValueError, match="depth"):
        Res2NetBackbone(depth=34)
    with pytest.raises(ValueError, match="scales"):
        Bottle2neck(16, 8, scales=1)
