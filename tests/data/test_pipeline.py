"""tf.data pipeline: shapes and padding, box transforms against NumPy, order, unreadable files."""

import json
import logging

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from gflv2_keras.models import preprocessing as preprocess
from gflv2_keras.data.coco import load_coco
from gflv2_keras.data.pipeline import build_dataset, steps_per_epoch

SCALE = (96, 64)
# (file name, height, width, Pillow mode written)
IMAGES = [
    ("gray.png", 40, 60, "L"),
    ("rgba.png", 50, 40, "RGBA"),
    ("image.bmp", 45, 70, "RGB"),
    ("palette.gif", 36, 36, "RGB"),
    ("photo.jpg", 64, 48, "RGB"),
]


def _pixels(rng, height, width):
    """Smooth content (JPEG-friendly) with some per-pixel detail, all channels distinct."""
    ys, xs = np.mgrid[0:height, 0:width]
    base = np.stack([xs * 200 / width, ys * 200 / height, (xs + ys) * 100 / (height + width)], -1)
    return np.clip(base + rng.integers(0, 40, (1, 1, 3)) + rng.integers(0, 8, (height, width, 3)), 0, 255).astype(np.uint8)


def _make_dataset(root, images=IMAGES, boxes_per_image=None):
    rng = np.random.default_rng(0)
    entries, annotations = [], []
    for image_id, (name, height, width, mode) in enumerate(images, 1):
        array = _pixels(rng, height, width)
        if mode == "L":
            image = Image.fromarray(array[..., 0], "L")
        elif mode == "RGBA":
            alpha = rng.integers(0, 256, (height, width, 1), dtype=np.uint8)
            image = Image.fromarray(np.concatenate([array, alpha], -1), "RGBA")
        else:
            image = Image.fromarray(array)
        image.save(root / name)
        entries.append({"id": image_id, "file_name": name, "height": height, "width": width})
        for k in range(boxes_per_image[image_id - 1] if boxes_per_image else 1 + image_id % 3):
            x1, y1 = rng.uniform(0, width - 12), rng.uniform(0, height - 12)
            w, h = rng.uniform(2, width - x1), rng.uniform(2, height - y1)
            annotations.append(
                {"id": len(annotations) + 1, "image_id": image_id, "category_id": 1 + 2 * (k % 2), "bbox": [x1, y1, w, h], "area": w * h}
            )
    content = {"images": entries, "annotations": annotations, "categories": [{"id": 1, "name": "a"}, {"id": 3, "name": "b"}]}
    path = root / "ann.json"
    path.write_text(json.dumps(content))
    return load_coco(str(path), str(root), verbose=False)


@pytest.fixture
def dataset(tmp_path):
    return _make_dataset(tmp_path)


def _reference_size(height, width, long_max, short_max):
    factor = min(long_max / max(height, width), short_max / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def _reference_boxes(record, new_h, new_w, flip):
    """mmdet Resize + RandomFlip on boxes, in float32 NumPy."""
    factors = np.array([new_w / record["width"], new_h / record["height"]] * 2, np.float32)
    boxes = record["boxes"] * factors
    boxes = np.clip(boxes, 0, np.array([new_w, new_h, new_w, new_h], np.float32))
    if flip:
        boxes = np.stack([new_w - boxes[:, 2], boxes[:, 1], new_w - boxes[:, 0], boxes[:, 3]], 1)
    return boxes


def _collect(ds):
    images, boxes, classes, shapes = [], [], [], []
    for x, y in ds:
        for i in range(x.shape[0]):
            valid = y["labels"][i].numpy() >= 0
            images.append(x[i].numpy())
            boxes.append(y["boxes"][i].numpy()[valid])
            classes.append(y["labels"][i].numpy()[valid])
            shapes.append(tuple(y["image_shape"][i].numpy()))
    return images, boxes, classes, shapes


def _unpadded_size(image):
    # Normalised pixels are never exactly 0 (the means are not integers), padding is.
    rows = np.nonzero(np.any(image[..., 0] != 0, axis=1))[0]
    cols = np.nonzero(np.any(image[..., 0] != 0, axis=0))[0]
    return rows.max() + 1, cols.max() + 1


def test_batch_shapes_dtypes_and_padding(dataset):
    x, y = next(iter(build_dataset(dataset, batch_size=3, scale=SCALE, training=False)))
    assert x.dtype == tf.float32 and x.shape[0] == 3 and x.shape[3] == 3
    assert x.shape[1] % 32 == 0 and x.shape[2] % 32 == 0
    assert y["boxes"].dtype == tf.float32 and y["labels"].dtype == tf.int32 and y["image_shape"].dtype == tf.int32
    counts = [len(r["labels"]) for r in dataset.records[:3]]
    assert y["boxes"].shape == (3, max(counts), 4) and y["labels"].shape == (3, max(counts))
    for i, record in enumerate(dataset.records[:3]):
        new_h, new_w = _reference_size(record["height"], record["width"], *SCALE)
        pad = (-(-new_h // 32) * 32, -(-new_w // 32) * 32)
        assert tuple(y["image_shape"][i].numpy()) == pad
        np.testing.assert_array_equal(y["labels"][i, counts[i] :], -1)
        np.testing.assert_array_equal(y["boxes"][i, counts[i] :], -1.0)
        np.testing.assert_array_equal(y["labels"][i, : counts[i]], record["labels"])
        image = x[i].numpy()
        assert _unpadded_size(image) == (new_h, new_w)
        assert not image[new_h:].any() and not image[:, new_w:].any()


def test_test_pipeline_matches_preprocess_and_decodes_every_format_to_rgb(dataset):
    images, boxes, _, _ = _collect(build_dataset(dataset, batch_size=2, scale=SCALE, training=False))
    assert len(images) == len(IMAGES)
    for record, image, got_boxes in zip(dataset.records, images, boxes):
        # Pillow's convert("RGB") also replicates gray and drops alpha without compositing. The
        # pipeline decodes with the reader `gflv2 predict` uses: JPEGs too give the very same pixels.
        rgb = np.asarray(Image.open(record["file_name"]).convert("RGB"))
        expected, info = preprocess.preprocess_images(rgb[None], SCALE)
        expected = expected[0].numpy()
        np.testing.assert_allclose(image[: expected.shape[0], : expected.shape[1]], expected, atol=1e-5)
        new_h, new_w = (int(v) for v in info["image_shape"][0].numpy())
        np.testing.assert_allclose(got_boxes, _reference_boxes(record, new_h, new_w, flip=False), rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("flip_prob", [0.0, 1.0])
def test_training_boxes_and_images_follow_resize_and_flip(dataset, flip_prob):
    plain, _, _, _ = _collect(build_dataset(dataset, batch_size=5, scale=SCALE, training=False))
    train = build_dataset(dataset, batch_size=5, scale=SCALE, flip_prob=flip_prob, shuffle_seed=3)
    images, boxes, classes, _ = _collect(train)
    # Training shuffles: match records by their (unique) resized size and class list.
    seen = 0
    for image, got_boxes, got_classes in zip(images, boxes, classes):
        size = _unpadded_size(image)
        (index,) = [
            i
            for i, r in enumerate(dataset.records)
            if _reference_size(r["height"], r["width"], *SCALE) == size and np.array_equal(r["labels"], got_classes)
        ]
        record, new_h, new_w = dataset.records[index], *size
        np.testing.assert_allclose(got_boxes, _reference_boxes(record, new_h, new_w, flip_prob == 1.0), rtol=1e-6, atol=1e-4)
        reference = plain[index][:new_h, :new_w]
        np.testing.assert_array_equal(image[:new_h, :new_w], reference[:, ::-1] if flip_prob == 1.0 else reference)
        seen += 1
    assert seen == len(dataset.records)


def test_multiscale_short_side_is_sampled_in_range(tmp_path):
    ds = _make_dataset(tmp_path, images=[("a.png", 40, 60, "RGB"), ("b.png", 70, 36, "RGB")])
    long_max, short_range = 120, (40, 80)
    sizes = set()
    for seed in range(6):
        images, boxes, _, _ = _collect(
            build_dataset(ds, batch_size=2, scale=(long_max, 64), multiscale_range=short_range, flip_prob=0.0, shuffle_seed=seed)
        )
        for image, got in zip(images, boxes):
            new_h, new_w = _unpadded_size(image)
            record = next(r for r in ds.records if (r["height"] > r["width"]) == (new_h > new_w))
            candidates = [
                s for s in range(short_range[0], short_range[1] + 1)
                if _reference_size(record["height"], record["width"], long_max, s) == (new_h, new_w)
            ]
            assert candidates, (record["height"], record["width"], new_h, new_w)
            assert max(new_h, new_w) <= long_max
            np.testing.assert_allclose(got, _reference_boxes(record, new_h, new_w, False), rtol=1e-6, atol=1e-4)
            sizes.add((new_h, new_w))
    assert len(sizes) >= 4


def test_rescale_size_takes_tensor_scales():
    for height, width in [(480, 640), (427, 640), (640, 359), (1000, 1000), (37, 500)]:
        for scale in [(1333, 800), (1333, 480), (1333, 961), (96, 64)]:
            expected = [int(v) for v in preprocess.rescale_size(height, width, scale)]
            got = [int(v) for v in preprocess.rescale_size(height, width, (tf.constant(scale[0]), tf.constant(scale[1])))]
            assert got == expected == list(_reference_size(height, width, *scale))


def _fingerprints(ds):
    return [(x.numpy().tobytes(), y["boxes"].numpy().tobytes()) for x, y in ds]


def test_order_is_deterministic_per_seed_and_resumable(dataset):
    def build(**kwargs):
        args = dict(batch_size=2, scale=SCALE, multiscale_range=(48, 80), shuffle_seed=11)
        return _fingerprints(build_dataset(dataset, **{**args, **kwargs}))

    two_epochs = build(num_epochs=2)
    assert len(two_epochs) == 5  # 10 images in batches of 2, across the epoch boundary
    assert build(num_epochs=2) == two_epochs
    assert build(num_epochs=2, skip_batches=3) == two_epochs[3:]
    endless = build_dataset(dataset, batch_size=2, scale=SCALE, shuffle_seed=11, multiscale_range=(48, 80), num_epochs=None)
    assert _fingerprints(endless.take(5)) == two_epochs
    assert build(epoch=1, skip_batches=0, num_epochs=1) != build(epoch=0, num_epochs=1)
    assert build(shuffle_seed=12, num_epochs=2) != two_epochs
    assert steps_per_epoch(dataset, 2) == 3 and steps_per_epoch(dataset, 2, drop_remainder=True) == 2


def test_max_boxes_gives_fixed_shapes(dataset, caplog):
    with caplog.at_level(logging.WARNING):
        ds = build_dataset(dataset, batch_size=5, scale=SCALE, training=False, max_boxes=2)
    x, y = next(iter(ds))
    assert y["boxes"].shape == (5, 2, 4) and y["labels"].shape == (5, 2)
    assert "more than max_boxes=2" in caplog.text
    counts = [min(len(r["labels"]), 2) for r in dataset.records]
    np.testing.assert_array_equal((y["labels"].numpy() >= 0).sum(1), counts)


@pytest.mark.parametrize("check_files", ["header", None])
def test_corrupt_and_missing_images_are_skipped_and_reported(tmp_path, caplog, check_files):
    ds = _make_dataset(tmp_path)
    (tmp_path / "rgba.png").unlink()  # image id 2: missing
    (tmp_path / "image.bmp").write_bytes(b"BM not really a bitmap")  # image id 3: corrupt
    data = (tmp_path / "photo.jpg").read_bytes()
    (tmp_path / "photo.jpg").write_bytes(data[: len(data) // 2])  # image id 5: truncated
    with caplog.at_level(logging.WARNING):
        images, _, classes, _ = _collect(build_dataset(ds, batch_size=2, scale=SCALE, training=False, check_files=check_files))
    assert len(images) == 2
    kept = [r for r in ds.records if r["image_id"] in (1, 4)]
    assert [c.tolist() for c in classes] == [r["labels"].tolist() for r in kept]
    if check_files:
        assert sorted(ds.unreadable) == [2, 3, 5]
        for name in ("rgba.png", "image.bmp", "photo.jpg"):
            assert name in caplog.text
        assert "3 of 5 images left out" in caplog.text
