"""One dataset in COCO, VOC and YOLO layouts reads back the same; the layout is recognised from the path."""

import json

import numpy as np
import pytest

from gflv2_keras.data.formats import detect_format, load_detection_dataset
from gflv2_keras.data.layouts import write_voc, write_yolo
from gflv2_keras.data.synthetic import CLASS_NAMES, image_rng, make_synthetic_coco, render_image

SPARSE_IDS = (3, 7, 20, 41, 42)  # category id of CLASS_NAMES[i]
SYNTHETIC = dict(num_train=6, num_val=0, image_size=(48, 80), object_size=(10, 30), max_objects=4, seed=3)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    """The synthetic train split as COCO (sparse category ids, listed out of order), VOC and YOLO."""
    root = tmp_path_factory.mktemp("layouts")
    paths = make_synthetic_coco(root / "coco", **SYNTHETIC)
    with open(paths["train_annotations"]) as f:
        content = json.load(f)
    for ann in content["annotations"]:
        ann["category_id"] = SPARSE_IDS[ann["category_id"] - 1]
    content["categories"] = [
        {"id": SPARSE_IDS[i], "name": name} for i, name in reversed(list(enumerate(CLASS_NAMES)))
    ]
    coco_file = root / "coco" / "train" / "sparse.json"  # next to its images: the default folder
    coco_file.write_text(json.dumps(content))
    coco = load_detection_dataset(str(coco_file), verbose=False)
    return {
        "coco": coco,
        "coco_file": str(coco_file),
        "voc": write_voc(coco, root / "voc"),
        "yolo": write_yolo(coco, root / "yolo"),
    }


def _reference_objects(index):
    """Class indices and boxes drawn by the generator itself (independent of every reader)."""
    _, objects = render_image(
        image_rng(SYNTHETIC["seed"], "train", index),
        SYNTHETIC["image_size"],
        SYNTHETIC["max_objects"],
        SYNTHETIC["object_size"],
    )
    return [o["class_index"] for o in objects], np.array([o["box"] for o in objects], np.float32)


def test_coco_with_sparse_category_ids_maps_them_to_contiguous_labels(layouts):
    coco = layouts["coco"]
    assert coco.category_ids == list(SPARSE_IDS) and coco.class_names == list(CLASS_NAMES)
    assert len(coco) == SYNTHETIC["num_train"]
    for index, record in enumerate(coco.records):
        labels, boxes = _reference_objects(index)
        np.testing.assert_array_equal(record["labels"], labels)
        np.testing.assert_array_equal(record["boxes"], boxes)


@pytest.mark.parametrize("kind, atol", [("voc", 0.0), ("yolo", 1e-3)])
def test_voc_and_yolo_layouts_read_back_the_same_records(layouts, kind, atol):
    coco = layouts["coco"]
    class_names = coco.class_names if kind == "voc" else None  # VOC's default order is tested below
    other = load_detection_dataset(layouts[kind], class_names=class_names, verbose=False)
    assert other.format == kind and other.class_names == coco.class_names
    assert len(other) == len(coco)
    for expected, record in zip(coco.records, other.records):
        for key in ("image_id", "height", "width"):
            assert record[key] == expected[key]
        assert record["name"] == expected["file_name"].rsplit("/", 1)[1].split(".")[0]
        np.testing.assert_array_equal(record["labels"], expected["labels"])
        assert record["labels"].dtype == np.int32 and record["boxes"].dtype == np.float32
        np.testing.assert_allclose(record["boxes"], expected["boxes"], rtol=0, atol=atol)
        with open(record["file_name"], "rb") as a, open(expected["file_name"], "rb") as b:
            assert a.read() == b.read()
    assert other.problems == []


def test_voc_default_classes_are_the_sorted_names_with_the_same_objects(layouts):
    coco, voc = layouts["coco"], load_detection_dataset(layouts["voc"], verbose=False)
    assert voc.class_names == sorted(CLASS_NAMES)
    for expected, record in zip(coco.records, voc.records):
        assert [voc.class_names[i] for i in record["labels"]] == [coco.class_names[i] for i in expected["labels"]]


def test_layout_is_recognised_from_the_path(layouts, tmp_path):
    assert detect_format(layouts["coco_file"]) == "coco"
    assert detect_format(layouts["voc"]) == "voc"
    assert detect_format(layouts["yolo"]) == "yolo"
    yolo_folder = layouts["yolo"].rsplit("/", 1)[0]
    assert detect_format(yolo_folder) == "yolo"
    assert len(load_detection_dataset(yolo_folder, verbose=False)) == SYNTHETIC["num_train"]
    (tmp_path / "notes.txt").write_text("hello")
    for path in (tmp_path, tmp_path / "notes.txt"):
        with pytest.raises(ValueError, match="not a dataset layout.*COCO.*Pascal VOC.*YOLO"):
            load_detection_dataset(str(path))
    with pytest.raises(ValueError, match="missing.json does not exist"):
        load_detection_dataset(str(tmp_path / "missing.json"))


def test_class_names_must_agree_and_yolo_takes_no_images_folder(layouts):
    with pytest.raises(ValueError, match="sparse.json: its classes .* differ from the class_names given"):
        load_detection_dataset(layouts["coco_file"], class_names=["a", "b"], verbose=False)
    with pytest.raises(ValueError, match="do not pass an images folder"):
        load_detection_dataset(layouts["yolo"], images="/tmp", verbose=False)


def test_coco_without_usable_training_image_is_an_error(tmp_path):
    content = {"images": [{"id": 1, "file_name": "a.jpg", "height": 64, "width": 64}], "annotations": [],
               "categories": [{"id": 5, "name": "x"}]}
    path = tmp_path / "empty.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match="empty.json: no usable training image"):
        load_detection_dataset(str(path), verbose=False)
    assert len(load_detection_dataset(str(path), for_training=False, verbose=False)) == 1


def test_writers_never_replace_existing_files(layouts):
    coco = layouts["coco"]
    with pytest.raises(ValueError, match="exists; pass overwrite=True"):
        write_voc(coco, layouts["voc"])
    with pytest.raises(ValueError, match="exists; pass overwrite=True"):
        write_yolo(coco, layouts["yolo"].rsplit("/", 1)[0])


def test_records_feed_the_input_pipeline(layouts):
    import tensorflow as tf

    from gflv2_keras.data.pipeline import build_dataset

    yolo = load_detection_dataset(layouts["yolo"], verbose=False)
    images, targets = next(iter(build_dataset(yolo, batch_size=2, training=False, scale=(96, 64))))
    assert images.shape[0] == 2 and images.dtype == tf.float32
    counts = [len(r["labels"]) for r in yolo.records[:2]]
    for row, count in enumerate(counts):
        assert int(tf.reduce_sum(tf.cast(targets["boxes"][row, :, 0] >= 0, tf.int32))) == count  # -1 is padding


def test_coco_images_folder_and_non_finite_boxes(tmp_path):
    content = {
        "images": [{"id": 9, "file_name": "a.jpg", "height": 64, "width": 64}],
        "annotations": [
            {"id": 1, "image_id": 9, "category_id": 5, "bbox": [1, 2, 10, 10]},
            {"id": 2, "image_id": 9, "category_id": 5, "bbox": [1, float("nan"), 10, 10]},
            {"id": 3, "image_id": 9, "category_id": 5, "bbox": [1, 2, float("inf"), 10], "area": 10},
        ],
        "categories": [{"id": 5, "name": "x"}],
    }
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(content))  # writes NaN / Infinity, which json.load reads back
    ds = load_detection_dataset(str(path), images=str(tmp_path / "pictures"), verbose=False)
    assert ds.records[0]["file_name"] == str(tmp_path / "pictures" / "a.jpg")
    np.testing.assert_array_equal(ds.records[0]["boxes"], [[1, 2, 11, 12]])
    assert len(ds.problems) == 2
    assert all(f"annotation id {i} (image id 9)" in p and "non-finite" in p for i, p in zip((2, 3), ds.problems))
