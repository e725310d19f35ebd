"""Every data problem is named (image id / file, annotation id, the box) or ends a command in one line (issue 20).

Degenerate COCO boxes and duplicate annotation ids are named by the reader (``data.coco``); images
whose boxes exceed ``max_boxes`` are named by ``records.report_boxes_over``; a preset whose
``config.json`` is nested too deeply is one error line in every command that loads it.
"""

import json
import os

import numpy as np
from PIL import Image

from gflv2_keras.cli import main
from gflv2_keras.data.coco import load_coco
from gflv2_keras.data.pipeline import build_dataset
from gflv2_keras.data.records import DEGENERATE, OVER_MAX_BOXES, SHOWN_IDS, largest_box_count, report_boxes_over


def _write_coco(tmp_path, images, annotations, name="ann.json", pixels=True):
    """A COCO file of ``images`` ``(file_name, height, width)`` (ids 1..n) and one category id 1."""
    content = {
        "images": [{"id": i, "file_name": f, "height": h, "width": w} for i, (f, h, w) in enumerate(images, 1)],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "thing"}],
    }
    path = tmp_path / name
    path.write_text(json.dumps(content))
    if pixels:
        for file_name, h, w in images:
            Image.fromarray(np.full((h, w, 3), 100, np.uint8)).save(tmp_path / file_name)
    return str(path)


def _ann(ann_id, bbox, image_id=1, **extra):
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "bbox": bbox, "area": bbox[2] * bbox[3], **extra}


def test_degenerate_coco_boxes_are_named_with_image_file_annotation_and_box(tmp_path):
    degenerate = {
        101: [10, 10, 0, 20],  # zero width
        102: [10, 10, 20, -5],  # negative height
        103: [10, 10, 0.5, 10],  # under 1 px wide
        105: [200, 10, 1, 10],  # just past the right edge (within the tolerance): no area inside
    }
    annotations = [_ann(i, b) for i, b in degenerate.items()]
    annotations += [
        {**_ann(104, [10, 10, 10, 10]), "area": 0},  # area 0
        _ann(106, [300, 10, 10, 10], iscrowd=1),  # a crowd region entirely outside the image
        _ann(107, [1, 1, 10, 10]),  # fine
    ]
    path = _write_coco(tmp_path, [("a.png", 100, 200)], annotations, pixels=False)
    ds = load_coco(path, str(tmp_path), for_training=False, verbose=False)
    image_file = os.path.join(str(tmp_path), "a.png")
    for ann_id, bbox in {**degenerate, 104: [10, 10, 10, 10], 106: [300, 10, 10, 10]}.items():
        lines = [p for p in ds.problems if p.startswith(f"annotation id {ann_id} ")]
        assert len(lines) == 1, (ann_id, ds.problems)
        assert f"(image id 1) on {image_file}: field 'bbox' {bbox}" in lines[0], lines[0]
    assert "'area' 0 is not positive" in next(p for p in ds.problems if p.startswith("annotation id 104 "))
    assert ds.skipped[DEGENERATE] == 5
    np.testing.assert_allclose(ds.records[0]["boxes"], [[1, 1, 11, 11]])
    assert len(ds.problems) == 6  # nothing else is reported: the fine box and the image are not


def test_a_voc_box_just_past_the_edge_is_named_too(tmp_path):
    from gflv2_keras.data.voc import load_voc

    (tmp_path / "Annotations").mkdir()
    (tmp_path / "ImageSets" / "Main").mkdir(parents=True)
    (tmp_path / "ImageSets" / "Main" / "train.txt").write_text("a\n")
    box = "<bndbox><xmin>201</xmin><ymin>5</ymin><xmax>201</xmax><ymax>20</ymax></bndbox>"  # the column after the last
    (tmp_path / "Annotations" / "a.xml").write_text(
        "<annotation><size><width>200</width><height>100</height></size>"
        f"<object><name>cat</name>{box}</object>"
        f"<object><name>cat</name>{box.replace('201', '20')}</object></annotation>"
    )
    ds = load_voc(str(tmp_path), for_training=False, verbose=False)
    assert ds.skipped[DEGENERATE] == 1 and len(ds.records[0]["labels"]) == 1
    assert len(ds.problems) == 1 and "a.xml: object #1 'cat'" in ds.problems[0]
    assert "(201, 5, 201, 20): no area inside the 200x100 image" in ds.problems[0]


def test_duplicate_annotation_ids_are_one_line_listing_the_ids(tmp_path):
    annotations = [_ann(5, [1, 1, 5, 5]), _ann(5, [2, 2, 5, 5]), _ann(8, [3, 3, 5, 5])]
    annotations += [_ann(7, [4, 4, 5, 5]) for _ in range(3)]
    annotations += [_ann(100 + i, [5, 5, 5, 5]) for i in range(SHOWN_IDS) for _ in range(2)]
    path = _write_coco(tmp_path, [("a.png", 40, 50)], annotations, pixels=False)
    ds = load_coco(path, str(tmp_path), for_training=False, verbose=False)
    lines = [p for p in ds.problems if "used more than once" in p]
    assert len(lines) == 1 and len(ds.problems) == 1, ds.problems
    line = lines[0]
    assert f"{SHOWN_IDS + 2} ids, {2 * SHOWN_IDS + 5} entries" in line
    assert line.index("5 (2x)") < line.index("7 (3x)") < line.index("100 (2x)")
    assert f"{100 + SHOWN_IDS - 3} (2x), ..." in line and f"{100 + SHOWN_IDS - 1} (2x)" not in line  # capped
    assert len(ds.records[0]["labels"]) == len(annotations)  # every entry kept


def test_images_over_max_boxes_are_named_once_and_counted(tmp_path, caplog):
    counts = {1: 3, 2: 7, 3: 5}
    annotations = [
        _ann(100 * image_id + k, [k, k, 4, 4], image_id=image_id) for image_id, n in counts.items() for k in range(n)
    ]
    images = [(f"{i}.png", 40, 48) for i in counts]
    ds = load_coco(_write_coco(tmp_path, images, annotations), str(tmp_path), verbose=False)
    assert largest_box_count(ds.records) == 7
    assert report_boxes_over(ds, 7) == {} and not ds.problems  # the default max_boxes drops nothing
    dropped = report_boxes_over(ds, 4, why=" (the recipe's max_boxes)")
    assert dropped == {2: 3, 3: 1}
    assert ds.problems == [
        f"image id 2 ({tmp_path / '2.png'}): 7 boxes but max_boxes is 4 (the recipe's max_boxes): the last 3 "
        "(annotation order) are not trained on",
        f"image id 3 ({tmp_path / '3.png'}): 5 boxes but max_boxes is 4 (the recipe's max_boxes): the last 1 "
        "(annotation order) are not trained on",
    ]
    assert ds.skipped[OVER_MAX_BOXES] == 4 and "skipped 4 boxes over max_boxes" in ds.summary()
    # The pipeline reports through the same function: nothing is added twice, and it drops exactly those.
    stream = build_dataset(ds, batch_size=3, scale=(64, 48), training=False, max_boxes=4, check_files=None)
    assert len(ds.problems) == 2 and ds.skipped[OVER_MAX_BOXES] == 4
    _, targets = next(iter(stream))
    np.testing.assert_array_equal((targets["labels"].numpy() >= 0).sum(1), [3, 4, 4])


def _nested_preset(tmp_path):
    folder = tmp_path / "deep_preset"
    folder.mkdir()
    (folder / "config.json").write_text('{"config": ' + "[" * 100_000 + "]" * 100_000 + "}")
    return str(folder)


def test_a_deeply_nested_preset_config_is_one_line_in_every_command(tmp_path, tiny_coco, capsys):
    preset = _nested_preset(tmp_path)
    image = tmp_path / "photo.png"
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(image)
    commands = {
        "predict": ["predict", str(image), "--preset", preset, "--output", str(tmp_path / "out")],
        "evaluate": ["evaluate", "--preset", preset, "--data", os.path.join(tiny_coco, "annotations", "val.json"),
                     "--images", os.path.join(tiny_coco, "val")],
        "train": ["train", "--preset", preset, "--data", os.path.join(tiny_coco, "annotations", "train.json"),
                  "--train-images", os.path.join(tiny_coco, "train"), "--work-dir", str(tmp_path / "w")],
    }
    for name, command in commands.items():
        capsys.readouterr()
        assert main(command) == 2, name
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, (name, err)
        assert err.startswith(f"gflv2 {name}: error: ") and "config.json" in err, (name, err)
