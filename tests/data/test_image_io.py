"""The one image reader (``data.image_io``): EXIF orientation, the same pixels on every path, the size check."""

import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from gflv2_keras.data.coco import check_image_files, load_coco
from gflv2_keras.data.image_io import (
    decode_image_tf,
    read_header,
    read_image,
    read_record_image,
    resize_problem,
)
from gflv2_keras.data.pipeline import build_dataset
from gflv2_keras.data.records import leave_out_unresizable
from gflv2_keras.data.yolo import load_yolo
from gflv2_keras.models import preprocessing as preprocess

from exif_images import SHOW, known_image as _known_image, write_oriented as _write


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_read_in_the_displayed_frame(tmp_path, orientation):
    displayed = _known_image()
    stored = _write(tmp_path / "lossless.png", displayed, orientation)
    loaded = read_image(tmp_path / "lossless.png")
    np.testing.assert_array_equal(loaded.pixels, displayed)  # lossless: exactly the known picture
    assert loaded.orientation == orientation and loaded.stored_size == stored.size
    header = read_header(tmp_path / "lossless.png")
    assert header.orientation == orientation and header.displayed_size == (80, 48)

    _write(tmp_path / "photo.jpg", displayed, orientation, quality=95)
    pixels = read_image(tmp_path / "photo.jpg").pixels
    assert pixels.shape == displayed.shape
    assert np.abs(pixels.astype(int) - displayed).mean() < 2  # the known picture, up to JPEG loss
    with Image.open(tmp_path / "photo.jpg") as raw:  # Pillow's own transpose of the same decode
        expected = raw.convert("RGB").transpose(SHOW[orientation]) if orientation > 1 else raw.convert("RGB")
        np.testing.assert_array_equal(pixels, np.asarray(expected))


def _coco(root, images):
    """A COCO file over ``images`` = [(file name, height, width)], one box each."""
    content = {
        "images": [{"id": i, "file_name": name, "height": h, "width": w} for i, (name, h, w) in enumerate(images, 1)],
        "annotations": [
            {"id": i, "image_id": i, "category_id": 1, "bbox": [2, 3, 10, 12], "area": 120}
            for i in range(1, len(images) + 1)
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (root / "ann.json").write_text(json.dumps(content))
    return load_coco(str(root / "ann.json"), str(root), for_training=False, verbose=False)


def test_pipeline_predict_and_evaluation_read_the_same_pixels(tmp_path):
    _write(tmp_path / "turned.jpg", _known_image(), 6, quality=90)  # stored 48x80 (w x h), shown 80x48
    Image.fromarray(_known_image(40, 56)).save(tmp_path / "plain.jpg", quality=90)
    dataset = _coco(tmp_path, [("turned.jpg", 48, 80), ("plain.jpg", 40, 56)])
    assert check_image_files(dataset) and not dataset.problems
    scale = (96, 64)
    images = [x[0].numpy() for x, _ in build_dataset(dataset, batch_size=1, scale=scale, training=False)]
    for record, image in zip(dataset.records, images):
        predicted = read_image(record["file_name"]).pixels  # what `gflv2 predict` runs on
        np.testing.assert_array_equal(read_record_image(record), predicted)  # what evaluation runs on
        graph = tf.data.Dataset.from_tensors(record["file_name"]).map(
            lambda name: decode_image_tf(name, record["height"], record["width"])
        )
        np.testing.assert_array_equal(next(iter(graph)).numpy(), predicted)
        expected = preprocess.preprocess_images(predicted[None], scale)[0][0].numpy()
        np.testing.assert_allclose(image[: expected.shape[0], : expected.shape[1]], expected, atol=1e-5)
    assert read_image(tmp_path / "turned.jpg").pixels.shape == (48, 80, 3)


def test_an_annotation_in_the_stored_frame_is_followed_and_named(tmp_path):
    stored = _write(tmp_path / "turned.jpg", _known_image(), 6, quality=95)  # stored 48 wide, 80 high
    dataset = _coco(tmp_path, [("turned.jpg", 80, 48)])  # a tool that ignored EXIF: the stored frame
    check_image_files(dataset)
    (problem,) = dataset.problems
    assert "image id 1" in problem and "turned.jpg" in problem and "EXIF orientation 6" in problem
    assert "stored frame" in problem
    pixels = read_record_image(dataset.records[0])
    np.testing.assert_array_equal(pixels, np.asarray(Image.open(tmp_path / "turned.jpg").convert("RGB")))
    assert pixels.shape[:2] == (stored.height, stored.width) == (80, 48)
    x, _ = next(iter(build_dataset(dataset, batch_size=1, scale=(160, 96), training=False)))
    rows = np.flatnonzero(np.any(x[0, ..., 0].numpy() != 0, axis=1))
    cols = np.flatnonzero(np.any(x[0, ..., 0].numpy() != 0, axis=0))
    assert (rows.max() + 1, cols.max() + 1) == (160, 96)  # portrait, as the annotation says


def test_yolo_records_are_in_the_displayed_frame(tmp_path):
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "labels" / "train").mkdir(parents=True)
    _write(tmp_path / "images" / "train" / "a.jpg", _known_image(), 6)  # shown 80 wide, 48 high
    (tmp_path / "labels" / "train" / "a.txt").write_text("0 0.25 0.5 0.5 0.5\n")
    (tmp_path / "data.yaml").write_text("names: [thing]\ntrain: images/train\n")
    (record,) = load_yolo(str(tmp_path), verbose=False).records
    assert (record["width"], record["height"]) == (80, 48)
    np.testing.assert_allclose(record["boxes"], [[0, 12, 40, 36]])
    assert read_record_image(record).shape == (48, 80, 3)


def test_resize_problem_is_the_one_size_check():
    assert resize_problem(3, 20000, (1333, 800)) == (
        "20000x3 image (width x height) would be resized to 1333x0 px at scale (1333, 800): a side under 1 px"
    )
    assert resize_problem(3, 20000) is not None  # the official scale by default
    assert resize_problem(8, 20000, (1333, 800)) is None  # 0.53 px rounds to 1
    assert resize_problem(800, 1333, (1333, 800)) is None
    assert "at scale (16, 20)" in resize_problem(2, 100, (16, 20))  # either order, as rescale_size


def test_readers_leave_out_and_name_images_too_thin_to_resize(tmp_path):
    Image.fromarray(np.full((3, 20000, 3), 90, np.uint8)).save(tmp_path / "thin.png")
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(tmp_path / "ok.png")
    Image.fromarray(np.full((2, 100, 3), 90, np.uint8)).save(tmp_path / "narrow.png")
    dataset = _coco(tmp_path, [("thin.png", 3, 20000), ("ok.png", 40, 50), ("narrow.png", 2, 100)])
    assert [r["image_id"] for r in dataset.records] == [2, 3]
    assert any("image id 1" in p and "thin.png" in p and "under 1 px" in p for p in dataset.problem_lines())
    # A caller that knows a smaller scale (a preset's input_scale) leaves out what it cannot run.
    leave_out_unresizable(dataset, (20, 16))
    assert [r["image_id"] for r in dataset.records] == [2]
    assert any("image id 3" in p and "narrow.png" in p for p in dataset.problems)


def test_deeply_nested_json_and_yaml_are_one_clear_error(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=r"deep.json: JSON nested too deeply"):
        load_coco(str(deep), str(tmp_path))
    (tmp_path / "data.yaml").write_text("names: " + "[" * 100_000 + "]" * 100_000 + "\ntrain: .\n")
    with pytest.raises(ValueError, match=r"data.yaml: YAML nested too deeply"):
        load_yolo(str(tmp_path))


def test_deeply_nested_annotations_end_evaluate_in_one_line(tmp_path, capsys):
    from gflv2_keras.cli import main

    (tmp_path / "deep.json").write_text('{"images": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert main(["evaluate", "--data", str(tmp_path / "deep.json"), "--preset", "gflv2_test_r18_nano"]) == 2
    err = capsys.readouterr().err
    assert "deep.json: JSON nested too deeply" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
