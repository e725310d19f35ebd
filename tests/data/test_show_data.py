"""``gflv2 show-data`` / ``data.show``: the pictures show exactly the boxes of the annotation file, and
``labels.png`` plots the file's numbers."""

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gflv2_keras.cli import main as cli_main
from gflv2_keras.data.formats import load_detection_dataset
from gflv2_keras.data.layouts import write_voc, write_yolo
from gflv2_keras.data.records import DetectionDataset, make_record
from gflv2_keras.data.show import (
    CENTRE_GRID,
    draw_ground_truth,
    draw_label_statistics,
    label_statistics,
    show_data,
)
from gflv2_keras.data.synthetic import make_synthetic_coco
from gflv2_keras.inference.draw import class_colour

GREY = (150, 150, 150)


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """Six synthetic images (COCO JSON) plus one crowd region, and the file's own reading of it."""
    root = tmp_path_factory.mktemp("show")
    paths = make_synthetic_coco(str(root / "coco"), num_train=6, num_val=0, seed=11, image_size=(96, 128),
                                object_size=(16, 48), max_objects=4)
    content = json.loads(Path(paths["train_annotations"]).read_text())
    content["annotations"].append({"id": 999, "image_id": 2, "category_id": content["categories"][1]["id"],
                                   "bbox": [3, 4, 30, 20], "area": 600, "iscrowd": 1})
    Path(paths["train_annotations"]).write_text(json.dumps(content))
    return {**paths, "content": content}


def file_boxes(content):
    """``{file stem: [(x1, y1, x2, y2, class name, crowd)]}`` read straight from the COCO JSON."""
    names = {c["id"]: c["name"] for c in content["categories"]}
    stems = {i["id"]: Path(i["file_name"]).stem for i in content["images"]}
    boxes = {stem: [] for stem in stems.values()}
    for a in content["annotations"]:
        x, y, w, h = a["bbox"]
        boxes[stems[a["image_id"]]].append((x, y, x + w, y + h, names[a["category_id"]], bool(a["iscrowd"])))
    return boxes


def test_labels_png_plots_the_class_counts_of_the_file(coco, tmp_path):
    dataset = load_detection_dataset(coco["train_annotations"], images=coco["train_images"], for_training=False,
                                     verbose=False)
    content = coco["content"]
    names = {c["id"]: c["name"] for c in content["categories"]}
    counts = Counter(names[a["category_id"]] for a in content["annotations"] if not a["iscrowd"])
    crowd = Counter(names[a["category_id"]] for a in content["annotations"] if a["iscrowd"])

    written = show_data(dataset, tmp_path, num_images=0)
    stats = written["statistics"]
    assert dict(zip(stats.class_names, stats.class_counts.tolist())) == {n: counts.get(n, 0) for n in names.values()}
    assert dict(zip(stats.class_names, stats.ignored_counts.tolist())) == {n: crowd.get(n, 0) for n in names.values()}
    boxes = sum(counts.values())
    assert stats.num_boxes == boxes and stats.num_images == 6
    for histogram in (stats.width_counts, stats.height_counts, stats.aspect_counts, stats.centre_counts):
        assert histogram.sum() == boxes
    with Image.open(written["labels"]) as image:
        assert image.format == "PNG" and image.width >= 900 and image.height >= 500
        image.verify()
    assert written["ground_truth"] is None and not (tmp_path / "ground_truth").exists()


def test_label_statistics_put_each_box_in_its_bins():
    """Hand-computed bins: a 200x100 image; box 50x100 px at the left edge, box 20x10 px centred at (150, 25)."""
    record = make_record(1, "a.png", height=100, width=200, boxes=[[0, 0, 50, 100], [140, 20, 160, 30]], labels=[1, 0])
    stats = label_statistics(DetectionDataset("a.json", ".", [record], [1, 2], ["cat", "dog"]))
    assert stats.class_counts.tolist() == [1, 1]
    # widths 50 / 200 = 0.25 and 20 / 200 = 0.1; heights 100 / 100 = 1.0 (last bin) and 10 / 100 = 0.1 (20 bins of 0.05)
    assert np.flatnonzero(stats.width_counts).tolist() == [2, 5]
    assert np.flatnonzero(stats.height_counts).tolist() == [2, 19]
    # aspect log2(50 / 100) = -1 and log2(20 / 10) = 1 over 24 bins of 0.25 from -3
    assert np.flatnonzero(stats.aspect_counts).tolist() == [8, 16]
    # centres (25 / 200, 50 / 100) = (0.125, 0.5) and (0.75, 0.25) on a 32 x 32 grid (rows: y)
    assert sorted(zip(*np.nonzero(stats.centre_counts))) == [(8, 24), (16, 4)]
    assert CENTRE_GRID == 32 and stats.median_size == (35.0, 55.0)
    draw_label_statistics(stats)  # a single image draws


def test_the_picture_holds_exactly_the_boxes_of_the_file(coco):
    """Drawn on a black image, 1 px lines: the coloured pixels are the outlines of the file's boxes, nothing else."""
    dataset = load_detection_dataset(coco["train_annotations"], images=coco["train_images"], for_training=False,
                                     verbose=False)
    names = list(dataset.class_names)
    truth = file_boxes(coco["content"])
    record = next(r for r in dataset.records if r["image_id"] == 2)  # the image with the crowd region
    black = np.zeros((record["height"], record["width"], 3), np.uint8)
    picture, drawn = draw_ground_truth(black, record, names, hide_labels=True, line_width=1)

    expected = black.copy()
    ordered = [b for b in truth[Path(record["file_name"]).stem] if not b[5]] + \
              [b for b in truth[Path(record["file_name"]).stem] if b[5]]  # the crowd regions are drawn last
    for x1, y1, x2, y2, name, crowd in ordered:
        colour = GREY if crowd else class_colour(names.index(name))
        x2, y2 = min(x2, record["width"] - 1), min(y2, record["height"] - 1)  # edges past the image are clipped
        expected[y1, x1:x2 + 1] = expected[y2, x1:x2 + 1] = colour
        expected[y1:y2 + 1, x1] = expected[y1:y2 + 1, x2] = colour
    np.testing.assert_array_equal(np.asarray(picture), expected)
    assert drawn["ignored"].tolist() == [b[5] for b in ordered]
    np.testing.assert_array_equal(drawn["boxes"], [b[:4] for b in ordered])
    assert [names[i] for i in drawn["labels"]] == [b[4] for b in ordered]


@pytest.mark.parametrize("layout", ["coco", "voc", "yolo"])
def test_show_data_draws_the_boxes_of_each_layout(layout, coco, tmp_path):
    source = load_detection_dataset(coco["train_annotations"], images=coco["train_images"], for_training=False,
                                     verbose=False)
    path = {"coco": lambda: coco["train_annotations"], "voc": lambda: write_voc(source, str(tmp_path / "voc")),
            "yolo": lambda: write_yolo(source, str(tmp_path / "yolo"))}[layout]()
    images = coco["train_images"] if layout == "coco" else None
    dataset = load_detection_dataset(path, "train", images=images, for_training=False, verbose=False)
    written = show_data(dataset, tmp_path / "out", num_images=4, seed=3)
    assert len(written["pictures"]) == 4 and not written["skipped"]
    assert sorted(os.listdir(tmp_path / "out" / "ground_truth")) == sorted(
        os.path.basename(p["picture"]) for p in written["pictures"])
    truth = file_boxes(coco["content"])
    for picture in written["pictures"]:
        expected = truth[Path(picture["file_name"]).stem]
        if layout == "yolo":  # YOLO has no crowd / difficult objects
            expected = [b for b in expected if not b[5]]
        expected = sorted(expected, key=lambda b: b[5])  # drawn: trained objects, then ignored ones
        tolerance = 1e-3 if layout == "yolo" else 0  # 6 decimals of relative coordinates
        np.testing.assert_allclose(picture["boxes"], [b[:4] for b in expected], atol=tolerance * 128)
        assert picture["class_names"] == [b[4] for b in expected]
        assert picture["ignored"] == [b[5] for b in expected]
        with Image.open(picture["picture"]) as image:
            assert image.format == "JPEG"
            assert max(image.size) >= 480  # a 96..128 px image is enlarged to be readable


def test_the_command_never_writes_into_the_data_nor_over_its_own_outputs(coco, tmp_path, capsys):
    data, images = coco["train_annotations"], ["--images", coco["train_images"]]
    out = tmp_path / "pictures"
    for inside in (Path(coco["train_images"]) / "x", Path(data).parent):
        assert cli_main(["show-data", "--data", data, *images, "--output", str(inside)]) == 2
        assert "inside the input folder" in capsys.readouterr().err
        assert not (inside / "labels.png").exists()
    with pytest.raises(SystemExit) as refused:  # argparse, before anything runs
        cli_main(["show-data", "--data", data, *images, "--output", str(out), "--num-images", "-1"])
    assert refused.value.code == 2 and "--num-images" in capsys.readouterr().err

    assert cli_main(["show-data", "--data", data, *images, "--output", str(out), "--num-images", "3"]) == 0
    printed = capsys.readouterr().out
    assert "labels.png" in printed and "3 images with their boxes" in printed
    assert len(os.listdir(out / "ground_truth")) == 3
    before = (out / "labels.png").stat().st_mtime_ns
    assert cli_main(["show-data", "--data", data, *images, "--output", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err and (out / "labels.png").stat().st_mtime_ns == before
    assert cli_main(["show-data", "--data", data, *images, "--output", str(out), "--overwrite", "--num-images", "2"]) == 0
    assert len(os.listdir(out / "ground_truth")) == 2 and (out / "labels.png").stat().st_mtime_ns != before
