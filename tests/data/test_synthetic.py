"""Synthetic shapes dataset: valid COCO, tight boxes, deterministic, command line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from gflv2_keras.data.coco import check_image_files, load_coco
from gflv2_keras.data.synthetic import CLASS_NAMES, image_rng, make_synthetic_coco, render_image


@pytest.fixture(scope="module")
def png_dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_coco(root, num_train=12, num_val=4, seed=5, image_format="png")


def test_files_form_a_clean_coco_dataset(png_dataset):
    for split, count in (("train", 12), ("val", 4)):
        ds = load_coco(png_dataset[f"{split}_annotations"], png_dataset[f"{split}_images"], verbose=False)
        assert ds.problems == [] and not any(ds.skipped.values())
        assert len(ds.records) == count
        assert ds.class_names == list(CLASS_NAMES) and ds.category_ids == [1, 2, 3, 4, 5]
        assert [r["image_id"] for r in check_image_files(ds)] == [r["image_id"] for r in ds.records]
        for record in ds.records:
            assert 224 <= record["height"] <= 288 and 224 <= record["width"] <= 288
            assert 1 <= len(record["labels"]) <= 6


def test_boxes_are_the_tight_extents_of_the_drawn_pixels(png_dataset):
    with open(png_dataset["train_annotations"]) as f:
        content = json.load(f)
    for image_info in content["images"][:6]:
        index = image_info["id"] - 1
        pixels = np.asarray(Image.open(os.path.join(png_dataset["train_images"], image_info["file_name"])))
        image, objects = render_image(image_rng(5, "train", index))
        np.testing.assert_array_equal(pixels, image)  # the file is exactly the re-rendered image
        annotations = [a for a in content["annotations"] if a["image_id"] == image_info["id"]]
        assert len(annotations) == len(objects)
        for ann, obj in zip(annotations, objects):
            rows, cols = np.nonzero(np.all(pixels == obj["color"], axis=-1))
            x, y, w, h = ann["bbox"]
            assert [x, y, x + w, y + h] == [cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]
            assert ann["area"] == rows.size
            assert ann["category_id"] == obj["class_index"] + 1


def test_same_seed_same_data_other_seed_other_data(tmp_path):
    a = make_synthetic_coco(tmp_path / "a", num_train=3, num_val=1, seed=1)
    b = make_synthetic_coco(tmp_path / "b", num_train=3, num_val=1, seed=1)
    c = make_synthetic_coco(tmp_path / "c", num_train=3, num_val=1, seed=2)
    read = lambda p: open(p, "rb").read()  # noqa: E731
    assert read(a["train_annotations"]) == read(b["train_annotations"])
    assert read(os.path.join(a["train_images"], "000002.jpg")) == read(os.path.join(b["train_images"], "000002.jpg"))
    assert json.load(open(a["train_annotations"]))["annotations"] != json.load(open(c["train_annotations"]))["annotations"]


def test_shapes_vary_in_class_size_and_overlap():
    classes, sizes, overlaps = [], [], 0
    for index in range(60):
        _, objects = render_image(image_rng(0, "train", index))
        boxes = np.array([o["box"] for o in objects], float)
        classes += [o["class_index"] for o in objects]
        sizes += list(np.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])))
        for i in range(len(boxes)):
            for j in range(i):
                lt = np.maximum(boxes[i, :2], boxes[j, :2])
                rb = np.minimum(boxes[i, 2:], boxes[j, 2:])
                overlaps += bool(np.all(rb > lt))
    assert set(classes) == set(range(len(CLASS_NAMES)))
    assert min(sizes) < 24 and max(sizes) > 90 and 30 < np.median(sizes) < 90
    assert overlaps >= 5


def test_command_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "gflv2_keras.data.synthetic", str(tmp_path), "--num-train", "2", "--num-val", "1"],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "wrote 3 images" in result.stdout
    assert len(json.load(open(tmp_path / "annotations" / "val.json"))["images"]) == 1
    assert sorted(os.listdir(tmp_path / "train")) == ["000001.jpg", "000002.jpg"]
