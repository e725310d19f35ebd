"""``GFLV2Detector``'s Keras vocabulary: ``bounding_box_format``, ``labels``, default ``compile``.

References are Keras' own ``keras.utils.bounding_boxes.convert_format`` applied to the default
(xyxy) detector's outputs and targets, plus a float64 NumPy conversion for the rel formats.
"""

import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from gflv2_keras import GFLV2Detector
from gflv2_keras.ops.box_formats import BOUNDING_BOX_FORMATS
from gflv2_keras.training.optimizer import CoupledSGD

NANO = "gflv2_test_r18_nano"
# A low threshold so the random-weight detector returns boxes, and a few padding rows (the
# background column's detections are dropped after NMS).
TEST_CONFIG = {"score_threshold": 0.004, "max_detections": 30}
IMAGE_H, IMAGE_W = 90, 130  # original images: not the network input size (input_scale 128 x 96)
INPUT_H, INPUT_W = 96, 128  # network-input batch of the loss tests


def _convert(boxes, source, target, height, width):
    converted = keras.utils.bounding_boxes.convert_format(
        np.asarray(boxes, np.float32), source, target, height=height, width=width
    )
    return keras.ops.convert_to_numpy(converted)


@pytest.fixture(scope="module")
def detectors(nano_factory):
    """One nano detector per format, all with the same weights; ``"xyxy"`` is the reference."""
    base = nano_factory(seed=11, test_config=TEST_CONFIG)
    out = {}
    for fmt in BOUNDING_BOX_FORMATS:
        detector = GFLV2Detector.from_preset(
            NANO, load_weights=False, test_config=TEST_CONFIG, bounding_box_format=fmt
        ).build_for_inference()
        detector.set_weights(base.get_weights())
        out[fmt] = detector
    return out


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(12).uniform(0, 255, (2, IMAGE_H, IMAGE_W, 3)).astype(np.uint8)


@pytest.fixture(scope="module")
def reference(detectors, images):
    out = detectors["xyxy"].predict(images, verbose=0)
    counts = out["num_detections"]
    # The test means something only with real detections and padding rows in the batch.
    assert counts.min() > 0 and counts.max() < TEST_CONFIG["max_detections"], counts
    return out


@pytest.mark.parametrize("fmt", BOUNDING_BOX_FORMATS)
def test_predict_and_detect_return_the_detector_format(detectors, images, reference, fmt):
    detector = detectors[fmt]
    assert detector.bounding_box_format == fmt
    got = detector.predict(images, verbose=0)
    valid = reference["labels"] >= 0
    expected = _convert(reference["boxes"], "xyxy", fmt, IMAGE_H, IMAGE_W)
    np.testing.assert_allclose(got["boxes"][valid], expected[valid], rtol=1e-5, atol=1e-4)
    assert np.all(got["boxes"][~valid] == -1)  # padding rows untouched by the conversion
    for key in ("confidence", "labels", "num_detections"):
        np.testing.assert_array_equal(got[key], reference[key])

    single = detector.detect(images[1])
    count = int(reference["num_detections"][1])
    assert single["boxes"].shape == (count, 4)
    np.testing.assert_allclose(single["boxes"], expected[1, :count], rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(single["labels"], reference["labels"][1, :count])


def test_relative_predictions_are_relative_to_the_original_image(detectors, images, reference):
    # Independent of Keras' converter: float64 NumPy rel_xywh of the xyxy reference.
    count = int(reference["num_detections"][0])
    x1, y1, x2, y2 = np.asarray(reference["boxes"][0, :count], np.float64).T
    expected = np.stack([x1 / IMAGE_W, y1 / IMAGE_H, (x2 - x1) / IMAGE_W, (y2 - y1) / IMAGE_H], -1)
    got = detectors["rel_xywh"].detect(images[0])["boxes"]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # detect() can be asked for another format than the detector's.
    np.testing.assert_allclose(
        detectors["rel_xywh"].detect(images[0], bounding_box_format="xyxy")["boxes"],
        reference["boxes"][0, :count],
        rtol=1e-6,
        atol=1e-4,
    )


def _training_batch():
    rng = np.random.default_rng(13)
    x = rng.normal(size=(2, INPUT_H, INPUT_W, 3)).astype(np.float32)
    boxes = np.full((2, 3, 4), -1.0, np.float32)
    labels = np.full((2, 3), -1, np.int32)
    boxes[0, :2], labels[0, :2] = [[8.0, 10.0, 60.0, 70.0], [70.0, 20.0, 120.0, 90.0]], [0, 2]
    boxes[1, :3], labels[1, :3] = [[4.0, 4.0, 40.0, 30.0], [30.0, 40.0, 100.0, 94.0], [90.0, 5.0, 126.0, 50.0]], [1, 1, 0]
    return x, boxes, labels


def _loss(detector, x, targets, y_pred):
    return float(detector.compute_loss(x, targets, y_pred, training=True))


@pytest.fixture(scope="module")
def training_case(detectors):
    x, boxes, labels = _training_batch()
    y_pred = detectors["xyxy"](x, training=True)
    return x, boxes, labels, y_pred, _loss(detectors["xyxy"], x, {"boxes": boxes, "labels": labels}, y_pred)


@pytest.mark.parametrize("fmt", BOUNDING_BOX_FORMATS)
def test_training_targets_in_any_format_give_the_same_loss(detectors, training_case, fmt):
    x, boxes, labels, y_pred, expected = training_case
    targets = {"boxes": _convert(boxes, "xyxy", fmt, INPUT_H, INPUT_W), "labels": labels}
    assert _loss(detectors[fmt], x, targets, y_pred) == pytest.approx(expected, rel=1e-5)


def test_targets_read_in_a_wrong_format_change_the_loss(detectors, training_case):
    # Guards the test above: the format really is applied to the targets.
    x, boxes, labels, y_pred, expected = training_case
    rel = {"boxes": _convert(boxes, "xyxy", "rel_xyxy", INPUT_H, INPUT_W), "labels": labels}
    assert abs(_loss(detectors["rel_xyxy"], x, rel, y_pred) - expected) < 1e-5 * expected
    assert abs(_loss(detectors["xyxy"], x, rel, y_pred) - expected) > 1e-2 * expected
    xywh = {"boxes": _convert(boxes, "xyxy", "xywh", INPUT_H, INPUT_W), "labels": labels}
    assert abs(_loss(detectors["xyxy"], x, xywh, y_pred) - expected) > 1e-2 * expected


def test_labels_and_classes_targets(detectors, training_case):
    x, boxes, labels, y_pred, expected = training_case
    detector = detectors["xyxy"]
    assert _loss(detector, x, {"boxes": boxes, "classes": labels}, y_pred) == expected
    with pytest.raises(ValueError, match="both 'labels' and 'classes'"):
        detector.compute_loss(x, {"boxes": boxes, "labels": labels, "classes": labels}, y_pred)
    with pytest.raises(ValueError, match="no 'labels'"):
        detector.compute_loss(x, {"boxes": boxes}, y_pred)


def test_unknown_format_is_refused_with_the_valid_ones():
    with pytest.raises(ValueError, match="unknown format 'xyxy_pixels'.*rel_center_xywh"):
        GFLV2Detector.from_preset(NANO, load_weights=False, bounding_box_format="xyxy_pixels")


def test_format_is_saved_and_old_presets_load_as_xyxy(tmp_path):
    detector = GFLV2Detector.from_preset(NANO, load_weights=False, bounding_box_format="CENTER_XYWH")
    assert detector.bounding_box_format == "center_xywh"
    assert GFLV2Detector.from_config(detector.get_config()).bounding_box_format == "center_xywh"
    detector.save_to_preset(tmp_path / "p")
    saved = json.loads((tmp_path / "p" / "task.json").read_text())
    assert saved["config"]["bounding_box_format"] == "center_xywh"
    assert GFLV2Detector.from_preset(str(tmp_path / "p")).bounding_box_format == "center_xywh"
    # A folder of the layout before keras-hub, written before the argument existed.
    old = tmp_path / "old"
    shutil.copytree(Path(__file__).resolve().parents[1] / "data" / "legacy_presets" / "nano_gflv1", old)
    config = json.loads((old / "config.json").read_text())
    assert config["config"].pop("bounding_box_format") == "rel_yxyx"
    (old / "config.json").write_text(json.dumps(config))
    assert GFLV2Detector.from_preset(str(old)).bounding_box_format == "xyxy"


def test_compile_defaults_to_the_official_optimizer(nano_factory):
    detector = nano_factory(seed=14)
    detector.compile(global_batch_size=2)
    optimizer = detector.optimizer
    assert isinstance(optimizer, CoupledSGD)
    assert float(optimizer.learning_rate) == pytest.approx(0.01 * 2 / 16)
    assert optimizer.momentum == pytest.approx(0.9) and optimizer.coupled_weight_decay == pytest.approx(1e-4)

    x, boxes, labels = _training_batch()
    before = [np.array(w) for w in detector.trainable_weights]
    assert before
    history = detector.fit(x, {"boxes": boxes, "labels": labels}, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and int(optimizer.iterations) == 1
    assert any(not np.array_equal(b, np.array(w)) for b, w in zip(before, detector.trainable_weights))

    default = GFLV2Detector.from_preset(NANO, load_weights=False)
    default.compile()
    assert float(default.optimizer.learning_rate) == pytest.approx(0.01)
    other = keras.optimizers.SGD(0.5)
    default.compile(optimizer=other)
    assert default.optimizer is other
