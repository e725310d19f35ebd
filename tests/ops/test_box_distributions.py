"""Box side distributions and quality of the kept detections vs float64 NumPy references.

The kept points are found independently of ``match_candidates``: every point of the raw head
output is decoded in float64 and the one reproducing the returned box (and, for its class, the
returned score) is taken; its raw logits give the reference statistics.
"""

import json

import numpy as np
import pytest
from PIL import Image

from gflv2_keras import GFLV2Detector
from gflv2_keras.models.preprocessing import preprocess_images
from gflv2_keras.ops.box_distributions import side_statistics

TEST_CONFIG = {"score_threshold": 0.0, "max_detections": 12}
EXTRA_KEYS = ("classification", "side_offsets", "side_std", "side_topk_mass", "side_distributions", "bin_widths",
              "anchor_points")  # fmt: skip


def ref_softmax(logits, reg_max):
    z = np.asarray(logits, np.float64).reshape(np.shape(logits)[:-1] + (4, reg_max + 1))
    p = np.exp(z - z.max(-1, keepdims=True))
    return p / p.sum(-1, keepdims=True)


def ref_statistics(logits, reg_max, topk):
    p = ref_softmax(logits, reg_max)
    bins = np.arange(reg_max + 1)
    mean = (p * bins).sum(-1)
    std = np.sqrt((p * (bins - mean[..., None]) ** 2).sum(-1))
    mass = np.sort(p, -1)[..., ::-1][..., :topk].sum(-1)
    return p, mean, std, mass


def ref_quality(detector, logits):
    """DGQP in float64 from the head's weights (``GFocalHead.forward_single``)."""
    head = detector.head
    p = ref_softmax(logits, head.reg_max)
    top = np.sort(p, -1)[..., ::-1][..., : head.reg_topk]
    stats = np.concatenate([top, top.mean(-1, keepdims=True)], -1).reshape(len(logits), -1)
    w1, b1 = (np.asarray(v, np.float64) for v in head.reg_conf[0].get_weights())
    w2, b2 = (np.asarray(v, np.float64) for v in head.reg_conf[1].get_weights())
    hidden = np.maximum(stats @ w1.reshape(w1.shape[-2:]) + b1, 0.0)
    return 1.0 / (1.0 + np.exp(-(hidden @ w2.reshape(w2.shape[-2:]) + b2)[:, 0]))


def sharpen_regression(detector, seed=0):
    """Random, varied side distributions (the init gives near-uniform ones)."""
    rng = np.random.default_rng(seed)
    kernel, bias = detector.head.gfl_reg.get_weights()
    detector.head.gfl_reg.set_weights([rng.normal(0, 0.05, kernel.shape).astype(np.float32),
                                       rng.normal(0, 2.0, bias.shape).astype(np.float32)])  # fmt: skip
    return detector


@pytest.fixture(scope="module")
def detector():
    d = GFLV2Detector.from_preset("gflv2_test_r18_nano", load_weights=False, test_config=TEST_CONFIG)
    return sharpen_regression(d.build_for_inference())


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(1).integers(0, 255, (90, 150, 3), dtype=np.uint8)


def reference_for(detector, image, found):
    """Per kept detection: (kept point's raw logits, stride, anchor point) found in float64."""
    inputs, info = preprocess_images(image[None], detector.input_scale)
    raw = {k: np.asarray(v, np.float64)[0] for k, v in detector(inputs, training=False).items()}
    _, points, strides = detector.points_for(inputs.shape[1], inputs.shape[2])
    points, strides = np.asarray(points, np.float64), np.asarray(strides, np.float64)
    fy, fx = np.asarray(info["scale_factor"], np.float64)[0]
    h, w = np.asarray(info["image_shape"], np.float64)[0]
    dist = ref_statistics(raw["box_logits"], detector.reg_max, 4)[1] * strides[:, None]
    boxes = np.stack([points[:, 0] - dist[:, 0], points[:, 1] - dist[:, 1],
                      points[:, 0] + dist[:, 2], points[:, 1] + dist[:, 3]], -1)  # fmt: skip
    boxes = np.clip(boxes, 0, [w, h, w, h]) / [fx, fy, fx, fy]
    out = []
    for box, score, label in zip(found["boxes"], found["confidence"], found["labels"]):
        gap = np.abs(boxes - box).max(-1) + np.abs(raw["confidence"][:, label] - score)
        i = int(np.argmin(gap))
        assert gap[i] < 1e-3, f"no point reproduces detection {box}"
        out.append((raw["box_logits"][i], strides[i], points[i] / [fx, fy], raw["confidence"][i, label]))
    return out, (fy, fx)


def test_side_statistics_match_float64_reference():
    logits = np.random.default_rng(0).normal(0, 3, (5, 7, 4 * 17)).astype(np.float32)
    stats = {k: np.asarray(v) for k, v in side_statistics(logits, 16, topk=4).items()}
    probs, mean, std, mass = ref_statistics(logits, 16, 4)
    np.testing.assert_allclose(stats["probs"], probs, atol=1e-6)
    np.testing.assert_allclose(stats["expected"], mean, atol=2e-5)
    np.testing.assert_allclose(stats["std"], std, atol=2e-5)
    np.testing.assert_allclose(stats["topk_mass"], mass, atol=2e-6)
    assert std.min() > 0.05 and std.max() > 1.0  # the input covers peaked and flat distributions


def test_kept_statistics_equal_reference_of_the_kept_points(detector, image):
    found = detector.detect(image, return_box_distributions=True)
    plain = detector.detect(image)
    assert set(plain) == {"boxes", "confidence", "labels"}  # off by default
    for key in ("boxes", "confidence", "labels"):
        np.testing.assert_array_equal(found[key], plain[key])  # the default outputs are unchanged
    assert len(found["boxes"]) >= 5
    refs, (fy, fx) = reference_for(detector, image, found)
    factor = np.array([fx, fy, fx, fy])
    for i, (logits, stride, anchor, score) in enumerate(refs):
        probs, mean, std, mass = ref_statistics(logits, detector.reg_max, detector.head.reg_topk)
        np.testing.assert_allclose(found["side_distributions"][i], probs, atol=5e-6)
        np.testing.assert_allclose(found["side_offsets"][i], mean * stride / factor, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(found["side_std"][i], std * stride / factor, rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(found["side_topk_mass"][i], mass, atol=5e-6)
        np.testing.assert_allclose(found["bin_widths"][i], stride / factor, rtol=1e-6)
        np.testing.assert_allclose(found["anchor_points"][i], anchor, rtol=1e-6, atol=1e-5)
    logits = np.stack([r[0] for r in refs])
    np.testing.assert_allclose(found["quality"], ref_quality(detector, logits), rtol=1e-5)
    np.testing.assert_allclose(found["classification"] * found["quality"], found["confidence"], rtol=1e-5)
    assert np.all((found["classification"] > 0) & (found["classification"] <= 1))


def test_expected_offsets_reproduce_the_returned_boxes(detector, image):
    found = detector.detect(image, return_box_distributions=True)
    x, y = found["anchor_points"][:, 0], found["anchor_points"][:, 1]
    o = found["side_offsets"].astype(np.float64)
    rebuilt = np.stack([x - o[:, 0], y - o[:, 1], x + o[:, 2], y + o[:, 3]], -1)
    rebuilt = np.clip(rebuilt, 0, [150, 90, 150, 90])  # the decoded boxes are clipped to the image
    np.testing.assert_allclose(rebuilt, found["boxes"], atol=2e-4)


def test_batch_padding_rows_and_predict(detector, image):
    other = np.random.default_rng(2).integers(0, 255, (90, 150, 3), dtype=np.uint8)
    batch = np.stack([image, other])
    out = detector.predict(batch, verbose=0, return_box_distributions=True)
    assert out["side_distributions"].shape == (2, 12, 4, detector.reg_max + 1)
    for b, img in enumerate(batch):
        single = detector.detect(img, return_box_distributions=True)
        n = int(out["num_detections"][b])
        for key in EXTRA_KEYS + ("quality",):
            np.testing.assert_allclose(out[key][b, :n], single[key], rtol=1e-5, atol=1e-5, err_msg=key)
            assert np.all(out[key][b, n:] == -1.0), key
    assert "side_std" not in detector.predict(batch, verbose=0)  # and off again


def test_gflv1_returns_classification_without_quality(image):
    v1 = GFLV2Detector.from_preset("gflv2_test_r18_nano", load_weights=False, head={"use_dgqp": False},
                                   test_config=TEST_CONFIG)  # fmt: skip
    found = sharpen_regression(v1.build_for_inference()).detect(image, return_box_distributions=True)
    assert "quality" not in found and len(found["boxes"]) > 0
    np.testing.assert_array_equal(found["classification"], found["confidence"])
    refs, _ = reference_for(v1, image, found)
    for i, (logits, *_rest) in enumerate(refs):
        np.testing.assert_allclose(found["side_topk_mass"][i], ref_statistics(logits, v1.reg_max, 4)[3], atol=5e-6)


def test_saved_model_extra_outputs_equal_predict(detector, image, tmp_path):
    import tensorflow as tf

    from gflv2_keras.export import export_saved_model

    path = export_saved_model(detector, tmp_path / "m", box_distributions=True)
    signature = tf.saved_model.load(str(path)).signatures["image_tensor"]
    served = {k: v.numpy() for k, v in signature(image_tensor=tf.constant(image[None])).items()}
    expected = detector.predict(image[None], verbose=0, return_box_distributions=True)
    for key in EXTRA_KEYS + ("quality",):
        np.testing.assert_allclose(served[f"detection_{key}"], expected[key], rtol=1e-5, atol=1e-5, err_msg=key)
    np.testing.assert_allclose(served["detection_boxes"], expected["boxes"], atol=1e-4)


def test_predict_cli_box_uncertainty_and_explain(detector, image, tmp_path, capsys):
    from gflv2_keras.cli import main

    detector.save_to_preset(tmp_path / "preset")
    Image.fromarray(image).save(tmp_path / "a.png")
    code = main(["predict", str(tmp_path / "a.png"), "--preset", str(tmp_path / "preset"), "--output",
                 str(tmp_path / "o"), "--box-uncertainty", "--box-distributions", "--explain", "1"])  # fmt: skip
    assert code == 0
    dets = json.loads((tmp_path / "o" / "a.json").read_text())["detections"]
    direct = detector.detect(image, return_box_distributions=True)
    assert len(dets) == len(direct["boxes"])
    for i, det in enumerate(dets):
        np.testing.assert_allclose(det["quality"], direct["quality"][i], atol=1e-5)
        std = [det["sides"][s]["std"] for s in ("left", "top", "right", "bottom")]
        np.testing.assert_allclose(std, direct["side_std"][i], atol=1e-3)
        assert len(det["sides"]["left"]["distribution"]) == detector.reg_max + 1
    assert Image.open(tmp_path / "o" / "a_explain.png").size[0] > 100
    # An exported model has no distributions: one error line, exit 2.
    code = main(["predict", str(tmp_path / "a.png"), "--model", str(tmp_path / "none"), "--box-uncertainty"])
    assert code == 2 and "need --preset" in capsys.readouterr().err
