"""GFLV2Detector: shapes, official parameter counts, head numerics, presets, compiled inference."""

import json

import numpy as np
import pytest
import tensorflow as tf

from gflv2_keras import GFLV2Detector
from gflv2_keras.layers.naming import module_path
from gflv2_keras.layers.norm import BatchNorm
from gflv2_keras.layers.walk import sublayers
from gflv2_keras.models.gfl_head import GFLHead
from gflv2_keras.ops.boxes import level_sizes
from gflv2_keras.presets import PRESETS, list_presets

NANO = "gflv2_test_r18_nano"


@pytest.mark.parametrize("hw", [(64, 64), (96, 160), (100, 70), (37, 53)])
def test_output_shapes_for_odd_and_even_sizes(nano, hw):
    out = nano(np.zeros((2,) + hw + (3,), np.float32))
    n = sum(h * w for h, w in level_sizes(*hw))
    assert out["confidence"].shape == (2, n, 4)  # 3 classes + the official background column
    assert out["box_logits"].shape == (2, n, 68)
    # The per-level feature maps really have the sizes the points are laid on.
    feats = nano.backbone(np.zeros((1,) + hw + (3,), np.float32))
    assert [tuple(f.shape[1:3]) for f in feats] == level_sizes(*hw)


@pytest.mark.parametrize(
    "preset, expected",
    [
        ("gflv2_r50_fpn_1x_coco", 32_444_251),
        # The 101-layer presets build ~50M parameters each: slow run (R-50 stays in the default run).
        pytest.param("gflv2_r101_fpn_ms2x_coco", 51_436_379, marks=pytest.mark.slow),
        pytest.param("gflv2_r101_dcn_fpn_ms2x_coco", 52_722_551, marks=pytest.mark.slow),
        pytest.param("gflv2_x101_32x4d_dcn_fpn_ms2x_coco", 53_470_767, marks=pytest.mark.slow),
    ],
)
def test_official_parameter_counts(preset, expected):
    detector = GFLV2Detector.from_preset(preset, load_weights=False).build_for_inference((32, 32))
    assert detector.count_params_official() == expected
    assert detector.head.gfl_cls.kernel.shape == (3, 3, 256, 81)  # official 81-channel classifier


def test_gflv1_head_has_no_quality_branch_and_plain_classes():
    head = GFLHead(num_classes=5, feat_channels=16, stacked_convs=1, norm_groups=4, use_dgqp=False)
    scores, logits = head([np.zeros((1, s, s, 16), np.float32) for s in (4, 2, 1, 1, 1)])
    assert scores.shape == (1, 16 + 4 + 3, 5) and logits.shape[-1] == 68
    assert not any("reg_conf" in w.path for w in head.weights)


def test_dgqp_and_joint_score_match_numpy(rng):
    head = GFLHead(num_classes=3, feat_channels=8, stacked_convs=1, norm_groups=2)
    feat = rng.normal(size=(1, 3, 5, 8)).astype(np.float32)
    head([feat] * 5)
    for w in head.weights:
        w.assign(rng.normal(0, 0.5, w.shape).astype(np.float32))
    scores, box_logits = head.level_forward(feat, 2)
    bl = np.asarray(box_logits, np.float64)
    z = bl.reshape(1, 3, 5, 4, 17)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    top = -np.sort(-p, -1)[..., :4]
    stats = np.concatenate([top, top.mean(-1, keepdims=True)], -1).reshape(1, 3, 5, 20)
    c0, c2 = head.reg_conf
    hidden = np.maximum(stats @ np.asarray(c0.kernel)[0, 0] + np.asarray(c0.bias), 0)
    quality = 1 / (1 + np.exp(-(hidden @ np.asarray(c2.kernel)[0, 0] + np.asarray(c2.bias))))
    cls_logit = np.asarray(head.gfl_cls(head._run_tower(head.cls_convs, feat)), np.float64)
    expected = quality / (1 + np.exp(-cls_logit))
    np.testing.assert_allclose(np.asarray(scores), expected, atol=1e-5)
    # The level Scale multiplies the regression logits.
    raw = np.asarray(head.gfl_reg(head._run_tower(head.reg_convs, feat)))
    np.testing.assert_allclose(bl, raw * float(head.scales[2].scale.numpy()), atol=1e-5)


def test_initial_scores_follow_prior(nano):
    fresh = GFLV2Detector.from_preset(NANO, load_weights=False).build_for_inference()
    scores = np.asarray(fresh(np.zeros((1, 64, 64, 3), np.float32))["confidence"])
    # sigmoid(-4.595) * quality(~0.5): the official ~0.005 at initialisation
    assert 0.003 < scores.mean() < 0.007


def test_preset_round_trip_gives_identical_outputs(nano, tmp_path):
    images = (np.random.default_rng(3).uniform(0, 255, (1, 90, 120, 3))).astype(np.uint8)
    nano.save_to_preset(tmp_path / "p", metadata={"note": "test"})
    assert json.loads((tmp_path / "p" / "metadata.json").read_text())["note"] == "test"
    loaded = GFLV2Detector.from_preset(str(tmp_path / "p"))
    x = np.random.default_rng(4).normal(size=(1, 64, 96, 3)).astype(np.float32)
    for key in ("confidence", "box_logits"):
        np.testing.assert_array_equal(np.asarray(nano(x)[key]), np.asarray(loaded(x)[key]))
    a, b = nano.predict(images, verbose=0), loaded.predict(images, verbose=0)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_missing_weights_error_says_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setenv("GFLV2_KERAS_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="gflv2 convert --checkpoint"):
        GFLV2Detector.from_preset("gflv2_r50_fpn_1x_coco")
    with pytest.raises(ValueError, match="Unknown preset"):
        GFLV2Detector.from_preset("no_such_preset", load_weights=False)


def test_every_seed_row_has_a_preset_with_metadata():
    rows = [n for n in list_presets() if n.endswith("_coco")]
    assert len(rows) == 6
    for name in rows:
        meta = PRESETS[name]["metadata"]
        assert meta["coco_box_ap_minival"] > 40 and meta["fps_rtx2080ti_batch1"] > 10
        assert meta["official_params"] > 30_000_000


def test_compiled_inference_equals_eager(nano):
    x = np.random.default_rng(5).normal(size=(2, 64, 96, 3)).astype(np.float32)
    eager = nano(x)
    graph = tf.function(lambda t: nano(t))(x)
    xla = tf.function(lambda t: nano(t), jit_compile=True)(x)
    for key in eager:
        np.testing.assert_allclose(np.asarray(graph[key]), np.asarray(eager[key]), atol=1e-6)
        np.testing.assert_allclose(np.asarray(xla[key]), np.asarray(eager[key]), atol=1e-4)
    images = np.random.default_rng(6).uniform(0, 255, (1, 70, 50, 3)).astype(np.uint8)
    eager_det = nano.detect_batch(images)
    graph_det = tf.function(nano.detect_batch)(images)
    for key in eager_det:
        np.testing.assert_allclose(np.asarray(graph_det[key]), np.asarray(eager_det[key]), atol=1e-4)


def test_predict_maps_boxes_to_original_pixels(nano_factory):
    detector = nano_factory(seed=2, test_config={"score_threshold": 0.0})
    detector.build_for_inference()
    image = np.random.default_rng(7).uniform(0, 255, (150, 60, 3)).astype(np.uint8)  # scaled x0.64 to 96 x 38
    out = detector.detect(image)
    assert len(out["boxes"]) > 0
    assert out["boxes"][:, [0, 2]].max() <= 60 + 1e-3 and out["boxes"][:, [1, 3]].max() <= 150 + 1e-3
    batch = detector.predict(image[None], verbose=0)
    assert set(batch) == {"boxes", "confidence", "labels", "num_detections"}
    np.testing.assert_allclose(batch["boxes"][0, : len(out["boxes"])], out["boxes"], atol=1e-4)


def test_frozen_stages_and_frozen_bn_statistics():
    detector = GFLV2Detector({"type": "resnet", "depth": 18, "base_channels": 8}, num_classes=2, fpn_channels=16,
                             head={"feat_channels": 16, "stacked_convs": 1, "norm_groups": 4})
    detector.build_for_inference()
    names = {module_path(layer.name) for layer in sublayers(detector) if layer.trainable_weights}
    assert "backbone.conv1" not in names and "backbone.layer1.0.conv1" not in names
    assert "backbone.layer2.0.conv1" in names and "backbone.layer2.0.bn1" in names  # affine still trained
    bn = [layer for layer in sublayers(detector.backbone) if isinstance(layer, BatchNorm)][-1]
    before = np.asarray(bn.moving_mean).copy()
    detector(np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32), training=True)
    np.testing.assert_array_equal(np.asarray(bn.moving_mean), before)


def test_bad_image_arguments_are_named():
    detector = GFLV2Detector.from_preset(NANO, load_weights=False)
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(np.zeros((10, 10, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[H, W, 3\]"):
        detector.detect(np.zeros((10, 10), np.uint8))
