"""``predict`` / ``detect`` on what users pass: clear errors for wrong pixels, lists of sizes work."""

import numpy as np
import pytest


@pytest.fixture(scope="module")
def detector(nano_factory):
    return nano_factory(seed=4, test_config={"score_threshold": 0.0, "max_detections": 7})


@pytest.fixture(scope="module")
def pictures():
    rng = np.random.default_rng(3)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((40, 60, 3), (64, 32, 3))]


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p[0][None].astype("float32") / 255.0, r"uint8 pixels 0-255, got float32 \(these look like \[0, 1\]"),
        (lambda p: p[0][None].astype("float64"), r"uint8 pixels 0-255, got float64 \(convert with np.clip"),
        (lambda p: np.zeros((0, 40, 60, 3), np.uint8), r"empty batch"),
        (lambda p: p[0], r"one image without its batch axis .*image\[None\] or use detect"),
        (lambda p: np.zeros((1, 40, 60, 4), np.uint8), r"shape \[B, H, W, 3\], got shape \(1, 40, 60, 4\) \(4 channels"),
    ],
)
def test_predict_refuses_what_it_cannot_use_with_a_clear_message(detector, pictures, make, message):
    with pytest.raises(ValueError, match=message):
        detector.predict(make(pictures))


def test_detect_refuses_a_batch_and_floats(detector, pictures):
    with pytest.raises(ValueError, match=r"image: a batch of shape .*use predict"):
        detector.detect(np.stack([pictures[0], pictures[0]]))
    with pytest.raises(ValueError, match=r"image: expected uint8"):
        detector.detect(pictures[0] / 255.0)


def test_a_list_of_differently_sized_images_runs_image_by_image(detector, pictures):
    batch = detector.predict(pictures)
    assert batch["boxes"].shape == (2, 7, 4) and batch["num_detections"].shape == (2,)
    for i, picture in enumerate(pictures):
        single = detector.detect(picture)
        count = int(batch["num_detections"][i])
        assert count == len(single["boxes"]) > 0
        np.testing.assert_allclose(batch["boxes"][i, :count], single["boxes"], atol=1e-4)
        np.testing.assert_array_equal(batch["labels"][i, :count], single["labels"])


def test_predict_and_detect_return_the_same_dtypes(detector, pictures):
    batch = detector.predict(pictures[0][None])
    single = detector.detect(pictures[0])
    for key in ("boxes", "confidence", "labels"):
        assert batch[key].dtype == single[key].dtype, key
