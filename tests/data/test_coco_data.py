"""COCO annotation loading: filtering as the official loader, reported problems, clear errors."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from gflv2_keras.data.coco import check_image_files, load_coco


def _write(tmp_path, content, name="ann.json"):
    path = tmp_path / name
    path.write_text(json.dumps(content))
    return str(path)


def _ann(ann_id, image_id, bbox, category_id=7, **extra):
    return {"id": ann_id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "area": bbox[2] * bbox[3], **extra}


@pytest.fixture
def content():
    return {
        "images": [
            {"id": 1, "file_name": "a.jpg", "height": 100, "width": 200},
            {"id": 2, "file_name": "sub/b.jpg", "height": 50, "width": 60},
            {"id": 3, "file_name": "c.jpg", "height": 80, "width": 80},  # only a crowd box
            {"id": 4, "file_name": "d.jpg", "height": 20, "width": 300},  # under 32 px
        ],
        "categories": [{"id": 10, "name": "ten"}, {"id": 3, "name": "three"}, {"id": 7, "name": "seven"}],
        "annotations": [
            _ann(101, 1, [10, 20, 30, 40], category_id=3),
            _ann(102, 1, [0, 0, 200, 100], category_id=10),
            _ann(103, 2, [5.5, 6, 10, 12]),
            _ann(104, 3, [1, 1, 10, 10], iscrowd=1),
            _ann(105, 1, [10, 10, 0.5, 10]),  # w < 1
            _ann(106, 1, [10, 10, 10, 0.9]),  # h < 1
            {**_ann(107, 1, [10, 10, 10, 10]), "area": 0},  # area <= 0
            _ann(108, 1, [250, 10, 10, 10]),  # no intersection and far outside -> reported
            _ann(109, 1, [190, 10, 15, 10]),  # reaches 5 px beyond the right edge -> reported
            _ann(110, 1, [-0.5, 90, 200.8, 10.5]),  # within the 1 px tolerance -> kept, clipped
            _ann(115, 1, [200, 10, 1, 10]),  # past the edge within the tolerance: no intersection
            _ann(111, 1, [10, 10, 10, 10], category_id=99),  # unknown category -> reported
            _ann(112, 42, [10, 10, 10, 10]),  # unknown image -> reported
            _ann(113, 4, [10, 5, 10, 10]),
            {**_ann(114, 1, [10, 10, 10, 10]), "ignore": True},
        ],
    }


def test_training_records_follow_the_official_filters(tmp_path, content, capsys):
    ds = load_coco(_write(tmp_path, content), tmp_path / "images")
    assert ds.category_ids == [3, 7, 10]
    assert ds.class_names == ["three", "seven", "ten"]
    # Image 3 has only a crowd box, image 4 is under 32 px: both dropped for training.
    assert [r["image_id"] for r in ds.records] == [1, 2]
    first, second = ds.records
    assert first["file_name"] == os.path.join(str(tmp_path), "images", "a.jpg")
    assert second["file_name"] == os.path.join(str(tmp_path), "images", "sub", "b.jpg")
    assert (first["height"], first["width"]) == (100, 200)
    np.testing.assert_allclose(first["boxes"], [[10, 20, 40, 60], [0, 0, 200, 100], [0, 90, 200, 100]])
    np.testing.assert_array_equal(first["labels"], [0, 2, 1])
    assert first["boxes"].dtype == np.float32 and first["labels"].dtype == np.int32
    np.testing.assert_allclose(second["boxes"], [[5.5, 6, 15.5, 18]])
    assert ds.skipped["crowd/ignore boxes"] == 2
    assert ds.skipped["degenerate boxes"] == 4
    assert ds.skipped["images without boxes"] == 1
    assert ds.skipped["images under min size"] == 1
    summary = capsys.readouterr().out.strip()
    assert summary.count("\n") == 0
    assert "2 images, 4 boxes, 3 classes" in summary and "2 crowd/ignore boxes" in summary


def test_problems_name_the_annotation_image_and_field(tmp_path, content):
    ds = load_coco(_write(tmp_path, content), tmp_path, verbose=False)
    degenerate = [p for p in ds.problems if p.split(" (")[0] in {f"annotation id {i}" for i in (105, 106, 107, 115)}]
    assert len(degenerate) == 4 and len(ds.problems) == 8  # degenerate boxes are named too
    out_far, out_edge, category, image = [p for p in ds.problems if p not in degenerate]
    assert "annotation id 108" in out_far and "image id 1" in out_far and "'bbox'" in out_far
    assert "annotation id 109" in out_edge and "outside" in out_edge
    assert "annotation id 111" in category and "'category_id' 99" in category
    assert "annotation id 112" in image and "'image_id' 42" in image
    assert ds.skipped["out-of-image boxes"] == 2
    assert ds.skipped["boxes with unknown category"] == 1
    assert ds.skipped["boxes of unknown images"] == 1


def test_evaluation_records_keep_every_image(tmp_path, content):
    ds = load_coco(_write(tmp_path, content), tmp_path, for_training=False, verbose=False)
    assert [r["image_id"] for r in ds.records] == [1, 2, 3, 4]
    assert ds.records[2]["boxes"].shape == (0, 4) and ds.records[2]["labels"].shape == (0,)
    assert not ds.for_training


@pytest.mark.parametrize("field", ["images", "annotations", "categories"])
def test_missing_top_level_field_is_a_clear_error(tmp_path, content, field):
    del content[field]
    path = _write(tmp_path, content)
    with pytest.raises(ValueError, match=f"{path}.*'{field}'"):
        load_coco(path, tmp_path)


def test_unreadable_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json.*not valid JSON"):
        load_coco(str(bad), tmp_path)
    with pytest.raises(ValueError, match="missing.json.*does not exist"):
        load_coco(str(tmp_path / "missing.json"), tmp_path)


def test_malformed_entries_are_reported(tmp_path, content):
    content["images"].append({"id": 5, "file_name": "e.jpg", "height": 40})
    content["annotations"].append({"id": 200, "image_id": 1, "category_id": 3})
    content["annotations"].append({"id": 201, "image_id": 1, "category_id": 3, "bbox": [1, 2, 3]})
    ds = load_coco(_write(tmp_path, content), tmp_path, verbose=False)
    text = "\n".join(ds.problems)
    assert "image id 5" in text and "'width'" in text
    assert "annotation id 200: missing field 'bbox'" in text
    assert "annotation id 201" in text and "'bbox' is not 4 numbers" in text
    assert ds.skipped["malformed entries"] == 3


def test_check_image_files_finds_missing_empty_and_truncated_files(tmp_path):
    images = []
    for i, kind in enumerate(["good", "missing", "empty", "garbage", "truncated", "resized"], 1):
        images.append({"id": i, "file_name": f"{kind}.jpg", "height": 40, "width": 50})
        array = np.full((40, 50, 3), 120, np.uint8)
        if kind in ("good", "truncated"):
            Image.fromarray(array).save(tmp_path / f"{kind}.jpg")
        if kind == "truncated":
            data = (tmp_path / "truncated.jpg").read_bytes()
            (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
        if kind == "empty":
            (tmp_path / "empty.jpg").write_bytes(b"")
        if kind == "garbage":
            (tmp_path / "garbage.jpg").write_bytes(b"this is not an image" * 10)
        if kind == "resized":
            Image.fromarray(array[:35]).save(tmp_path / "resized.jpg")
    content = {
        "images": images,
        "categories": [{"id": 1, "name": "x"}],
        "annotations": [_ann(i, i, [1, 1, 5, 5], category_id=1) for i in range(1, 7)],
    }
    ds = load_coco(_write(tmp_path, content), tmp_path, verbose=False)
    usable = check_image_files(ds)
    assert [r["image_id"] for r in usable] == [1, 6]
    assert ds.unreadable[2] == "file is missing"
    assert ds.unreadable[3] == "file is empty"
    assert "not a JPEG" in ds.unreadable[4]
    assert "truncated JPEG" in ds.unreadable[5]
    assert any("image id 6" in p and "50x35" in p for p in ds.problems)
