"""Pascal VOC reader: box convention, classes, difficult objects, and every bad input reported."""

import numpy as np
import pytest
from PIL import Image

from gflv2_keras.data.voc import load_voc


def _object(name, box, difficult=None):
    difficult = "" if difficult is None else f"<difficult>{difficult}</difficult>"
    corners = "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
    return f"<object><name>{name}</name>{difficult}<bndbox>{corners}</bndbox></object>"


def _xml(objects, size=(200, 100)):
    size_tag = "" if size is None else f"<size><width>{size[0]}</width><height>{size[1]}</height></size>"
    return f"<annotation><filename>x.jpg</filename>{size_tag}{''.join(objects)}</annotation>"


def _write_voc(root, annotations, split="train", images=()):
    """``annotations``: {image id: XML text or None (no file)}; ``images``: {id: (w, h)} written as JPEG."""
    (root / "Annotations").mkdir(parents=True)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for name, text in annotations.items():
        if text is not None:
            (root / "Annotations" / f"{name}.xml").write_text(text)
    for name, (w, h) in dict(images).items():
        Image.fromarray(np.zeros((h, w, 3), np.uint8)).save(root / "JPEGImages" / f"{name}.jpg")
    (root / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(f"{n}\n" for n in annotations))
    return root


def test_boxes_are_pixel_edges_and_classes_sorted_names(tmp_path):
    root = _write_voc(
        tmp_path,
        {
            "a": _xml([_object("dog", (1, 1, 10, 20)), _object("cat", (50.5, 2, 200, 100))]),
            "b": _xml([_object("cat", (5, 6, 7, 8))], size=(40, 40)),
        },
    )
    ds = load_voc(root, verbose=False)
    assert ds.class_names == ["cat", "dog"] and ds.category_ids == [0, 1] and ds.format == "voc"
    first, second = ds.records
    # 1-based inclusive corners: column 1..10 are pixel edges 0..10.
    np.testing.assert_array_equal(first["boxes"], [[0, 0, 10, 20], [49.5, 1, 200, 100]])
    np.testing.assert_array_equal(first["labels"], [1, 0])
    assert first["boxes"].dtype == np.float32 and first["labels"].dtype == np.int32
    assert (first["image_id"], first["name"], first["width"], first["height"]) == (1, "a", 200, 100)
    assert first["file_name"] == str(root / "JPEGImages" / "a.jpg")
    assert (second["image_id"], second["name"]) == (2, "b")
    assert ds.problems == []


def test_given_class_names_set_the_order_and_other_names_are_reported(tmp_path):
    root = _write_voc(tmp_path, {"a": _xml([_object("dog", (1, 1, 10, 10)), _object("cow", (1, 1, 10, 10))])})
    ds = load_voc(root, class_names=["person", "dog"], verbose=False)
    np.testing.assert_array_equal(ds.records[0]["labels"], [1])
    assert len(ds.problems) == 1
    assert "a.xml: object #2 'cow'" in ds.problems[0] and "not one of the classes" in ds.problems[0]


def test_difficult_objects_become_ignore_boxes(tmp_path):
    root = _write_voc(
        tmp_path,
        {
            "a": _xml([_object("dog", (1, 1, 10, 10), 0), _object("cat", (11, 21, 30, 40), 1)]),
            "b": _xml([_object("dog", (1, 1, 10, 10), 1)]),  # only difficult: no box to train on
        },
    )
    ds = load_voc(root, verbose=False)
    assert [r["name"] for r in ds.records] == ["a"]
    record = ds.records[0]
    np.testing.assert_array_equal(record["boxes"], [[0, 0, 10, 10]])
    np.testing.assert_array_equal(record["ignore_boxes"], [[10, 20, 30, 40]])
    np.testing.assert_array_equal(record["ignore_labels"], [0])
    assert ds.skipped["images without boxes"] == 1
    evaluation = load_voc(root, for_training=False, verbose=False)
    assert [len(r["labels"]) for r in evaluation.records] == [1, 0]
    assert [len(r["ignore_labels"]) for r in evaluation.records] == [1, 1]


def test_malformed_xml_and_missing_file_skip_the_image(tmp_path):
    root = _write_voc(
        tmp_path,
        {"good": _xml([_object("dog", (1, 1, 10, 10))]), "broken": "<annotation><object>", "absent": None},
    )
    ds = load_voc(root, verbose=False)
    assert [r["name"] for r in ds.records] == ["good"]
    broken, absent = ds.problems
    assert "broken.xml: malformed XML" in broken and "line 1" in broken and "'broken' skipped" in broken
    assert "absent.xml: annotation file does not exist" in absent
    assert ds.skipped["images with a missing or unreadable XML"] == 2


_NO_NAME = "<object><name>{}</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>5</xmax><ymax>5</ymax></bndbox></object>"


@pytest.mark.parametrize(
    "obj, expected",
    [
        (_NO_NAME.format(""), "object #2: empty or missing <name>"),
        (_NO_NAME.replace("<name>{}</name>", ""), "object #2: empty or missing <name>"),
        (_object("dog", (1, "abc", 5, 5)), "<bndbox> has no numeric <ymin>"),
        (_object("dog", (1, 1, "nan", 5)), "(1, 1, nan, 5): non-finite"),
        (_object("dog", (1, 1, 5, "inf")), "(1, 1, 5, inf): non-finite"),
        (_object("dog", (10, 5, 9, 9)), "(10, 5, 9, 9): zero or sub-pixel size"),
        (_object("dog", (1, 1, 205, 50)), "(1, 1, 205, 50) reaches outside the 200x100 image"),
    ],
)
def test_bad_objects_are_reported_by_file_and_object_and_skipped(tmp_path, obj, expected):
    root = _write_voc(tmp_path, {"a": _xml([_object("dog", (1, 1, 10, 10)), obj])})
    ds = load_voc(root, verbose=False)
    assert len(ds.problems) == 1, ds.problems
    assert "a.xml: object #2" in ds.problems[0] and expected in ds.problems[0] and "skipped" in ds.problems[0]
    np.testing.assert_array_equal(ds.records[0]["boxes"], [[0, 0, 10, 10]])


def test_one_pixel_box_is_valid(tmp_path):
    root = _write_voc(tmp_path, {"a": _xml([_object("dog", (5, 5, 5, 9))])})
    ds = load_voc(root, verbose=False)
    assert ds.problems == []
    np.testing.assert_array_equal(ds.records[0]["boxes"], [[4, 4, 5, 9]])


def test_missing_size_falls_back_to_the_image_header(tmp_path):
    root = _write_voc(
        tmp_path,
        {name: _xml([_object("dog", (1, 1, 10, 10))], size=None) for name in ("a", "b")},
        images={"a": (48, 36)},
    )
    ds = load_voc(root, verbose=False)
    assert [(r["name"], r["width"], r["height"]) for r in ds.records] == [("a", 48, 36)]
    assert len(ds.problems) == 1 and "b.xml: no usable <size>" in ds.problems[0]


def test_split_errors_and_no_usable_image(tmp_path):
    root = _write_voc(tmp_path, {"a": _xml([_object("dog", (1, 1, 10, 10), 1)])})
    with pytest.raises(ValueError, match=r"ImageSets/Main/val.txt does not exist \(splits found: \['train'\]\)"):
        load_voc(root, split="val")
    with pytest.raises(ValueError, match="train.txt: no usable training image"):
        load_voc(root, verbose=False)
    assert len(load_voc(root, for_training=False, verbose=False)) == 1
