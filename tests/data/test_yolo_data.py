"""YOLO / Ultralytics reader: data.yaml, box convention, and every bad input reported."""

import numpy as np
import pytest
from PIL import Image

from gflv2_keras.data.yolo import label_path, load_yolo


def _write_yolo(root, labels, yaml_text="names: [cat, dog]\ntrain: images/train\n", sizes=None, split="train"):
    """``labels``: {stem: label text, or None for an image without a label file}; images 100x50 PNG."""
    (root / "images" / split).mkdir(parents=True)
    (root / "labels" / split).mkdir(parents=True)
    for stem, text in labels.items():
        w, h = (sizes or {}).get(stem, (100, 50))
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / "images" / split / f"{stem}.png")
        if text is not None:
            (root / "labels" / split / f"{stem}.txt").write_text(text)
    (root / "data.yaml").write_text(yaml_text)
    return root / "data.yaml"


def test_boxes_are_denormalised_pixel_edges(tmp_path):
    data_yaml = _write_yolo(tmp_path, {"a": "1 0.5 0.5 0.5 0.5\n0 0.1 0.2 0.2 0.4\n", "b": "0 0.5 0.5 1 1\n"})
    ds = load_yolo(data_yaml, verbose=False)
    assert ds.class_names == ["cat", "dog"] and ds.category_ids == [0, 1] and ds.format == "yolo"
    first, second = ds.records
    # 100x50 image: cx 0.5 w 0.5 -> x 25..75; cy 0.5 h 0.5 -> y 12.5..37.5.
    np.testing.assert_allclose(first["boxes"], [[25, 12.5, 75, 37.5], [0, 0, 20, 20]], atol=1e-5)
    np.testing.assert_array_equal(first["labels"], [1, 0])
    assert first["boxes"].dtype == np.float32 and first["labels"].dtype == np.int32
    assert (first["image_id"], first["name"], first["width"], first["height"]) == (1, "a", 100, 50)
    assert first["file_name"] == str(tmp_path / "images" / "train" / "a.png")
    np.testing.assert_allclose(second["boxes"], [[0, 0, 100, 50]])
    assert ds.problems == []


def test_names_as_an_index_map_and_path_key(tmp_path):
    root = tmp_path / "data"
    _write_yolo(root, {"a": "7 0.5 0.5 0.2 0.2\n2 0.5 0.5 0.2 0.2\n"}, yaml_text="")
    yaml_file = tmp_path / "custom.yml"
    yaml_file.write_text("path: data\ntrain: images/train\nnames:\n  2: cat\n  7: dog\n")
    ds = load_yolo(yaml_file, verbose=False)
    assert ds.category_ids == [2, 7] and ds.class_names == ["cat", "dog"]
    np.testing.assert_array_equal(ds.records[0]["labels"], [1, 0])


def test_label_path_follows_ultralytics():
    assert label_path("/d/images/train/sub/a.b.jpg") == "/d/labels/train/sub/a.b.txt"
    assert label_path("/d/images/x/images/train/a.jpg") == "/d/images/x/labels/train/a.txt"
    assert label_path("/d/pics/a.jpg") == "/d/pics/a.txt"


@pytest.mark.parametrize(
    "line, expected",
    [
        ("0 0.5 0.5 0.2", "expected 5 numbers 'class cx cy w h', got 4"),
        ("0 0.5 0.5 0.2 0.2 0.9", "expected 5 numbers 'class cx cy w h', got 6"),
        ("0 0.5 0.5 0.2 abc", "not 5 numbers"),
        ("2 0.5 0.5 0.2 0.2", "class 2 is not a key of 'names'"),
        ("-1 0.5 0.5 0.2 0.2", "class -1 is not a key of 'names'"),
        ("0.5 0.5 0.5 0.2 0.2", "class 0.5 is not a key of 'names'"),
        ("0 1.5 0.5 0.2 0.2", "'cx cy w h' 1.5 0.5 0.2 0.2 not normalised to [0, 1]"),
        ("0 0.5 -0.1 0.2 0.2", "not normalised to [0, 1]"),
        ("0 0.5 0.5 0 0.2", "zero size"),
        ("0 0.5 0.5 0.2 0.0", "zero size"),
        ("0 0.5 0.5 0.005 0.2", "zero or sub-pixel size"),  # 0.5 px wide on a 100 px image
        ("0 nan 0.5 0.2 0.2", "non-finite"),
        ("0 0.5 0.5 inf 0.2", "non-finite"),
    ],
)
def test_bad_lines_are_reported_by_file_and_line_and_skipped(tmp_path, line, expected):
    data_yaml = _write_yolo(tmp_path, {"a": f"1 0.5 0.5 0.5 0.5\n\n{line}\n"})
    ds = load_yolo(data_yaml, verbose=False)
    assert len(ds.problems) == 1, ds.problems
    assert "labels/train/a.txt:3: " in ds.problems[0] and expected in ds.problems[0]
    np.testing.assert_allclose(ds.records[0]["boxes"], [[25, 12.5, 75, 37.5]])


def test_image_without_labels_has_no_objects_and_labels_without_image_are_reported(tmp_path):
    data_yaml = _write_yolo(tmp_path, {"a": "0 0.5 0.5 0.5 0.5\n", "b": None})
    (tmp_path / "labels" / "train" / "ghost.txt").write_text("0 0.5 0.5 0.5 0.5\n")
    ds = load_yolo(data_yaml, for_training=False, verbose=False)
    assert [r["name"] for r in ds.records] == ["a", "b"]
    assert ds.records[1]["boxes"].shape == (0, 4) and ds.records[1]["labels"].shape == (0,)
    assert len(ds.problems) == 1 and "ghost.txt: label file without an image" in ds.problems[0]
    training = load_yolo(data_yaml, verbose=False)
    assert [r["name"] for r in training.records] == ["a"] and training.skipped["images without boxes"] == 1


def test_unreadable_and_undecodable_images_are_reported(tmp_path):
    data_yaml = _write_yolo(tmp_path, {"a": "0 0.5 0.5 0.5 0.5\n"})
    (tmp_path / "images" / "train" / "broken.jpg").write_bytes(b"not an image")
    (tmp_path / "images" / "train" / "c.webp").write_bytes(b"RIFF")
    ds = load_yolo(data_yaml, verbose=False)
    assert [r["name"] for r in ds.records] == ["a"]
    text = "\n".join(ds.problems)
    assert "broken.jpg: image header cannot be read" in text
    assert "c.webp: .webp images cannot be decoded" in text


@pytest.mark.parametrize(
    "yaml_text, expected",
    [
        ("train: images/train\n", "no 'names' key"),
        ("names: [cat]\n", "no 'train' key"),
        ("names: [cat]\ntrain: images/missing\n", "'train' points to .*images/missing, which is not a folder"),
        ("names: [cat]\npath: nowhere\ntrain: images/train\n", "'path' 'nowhere' is not a folder"),
        ("names: [cat]\ntrain: train.txt\n", "'train' is an image-list file"),
        ("names: {cat: 0}\ntrain: images/train\n", "'names' keys must be class indices"),
        ("names: []\ntrain: images/train\n", "'names' must be a non-empty list"),
        ("names: [cat]\nnc: 2\ntrain: images/train\n", "'nc' is 2 but 'names' has 1"),
        ("names: [cat\n", "not valid YAML"),
    ],
)
def test_data_yaml_errors_name_the_key_before_reading_images(tmp_path, yaml_text, expected):
    # The one image is unreadable: a ValueError about the YAML proves nothing was read first.
    data_yaml = _write_yolo(tmp_path, {}, yaml_text=yaml_text)
    (tmp_path / "images" / "train" / "broken.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match=f"data.yaml: .*{expected}"):
        load_yolo(data_yaml, verbose=False)


def test_no_usable_training_image_is_an_error(tmp_path):
    data_yaml = _write_yolo(tmp_path, {"a": "5 0.5 0.5 0.5 0.5\n", "b": None})
    with pytest.raises(ValueError, match="data.yaml: no usable training image.*class 5"):
        load_yolo(data_yaml, verbose=False)
    assert len(load_yolo(data_yaml, for_training=False, verbose=False)) == 2
