"""``gflv2 evaluate`` matches classes by name: one split written as COCO (sparse ids), Pascal VOC (sorted
names) and YOLO (a third order) gives one AP for the same detector, and a data class the preset lacks
is one error line (issue 20: a preset fine-tuned on YOLO data scored 0.050 instead of 0.477 on VOC)."""

import hashlib
import json
import os

import numpy as np
import pytest

from gflv2_keras import cli
from gflv2_keras.data.formats import load_detection_dataset
from gflv2_keras.data.image_io import read_record_image
from gflv2_keras.evaluation import cli as evaluate_cli
from gflv2_keras.evaluation.coco_evaluator import evaluate, evaluation_category_ids

from three_layouts import CLASSES, write_three_layouts

DETECTOR_ORDER = ["cross", "ellipse", "triangle", "star"]  # a fourth order, and a class the data lacks
LAYOUTS = ("coco", "voc", "yolo")


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    """Five 100x100 images (YOLO's 6 decimals then hold every box exactly) in the three layouts."""
    paths = write_three_layouts(tmp_path_factory.mktemp("class_order"), num_val=5, seed=12, image_size=(100, 100),
                                object_size=(14, 40))
    return {"coco": ["--data", paths["coco"], "--images", paths["images"]],
            "voc": ["--data", paths["voc"], "--split", "val"],
            "yolo": ["--data", paths["yolo"], "--split", "val"],
            "coco_file": paths["coco"], "images": paths["images"]}


def _load(split, kind):
    args = dict(zip(split[kind][::2], split[kind][1::2]))
    return load_detection_dataset(args["--data"], "val", images=args.get("--images"), for_training=False,
                                  verbose=False)


class NamedDetector:
    """Knows each image by its pixels: the ground-truth boxes, jittered, with labels of ``DETECTOR_ORDER``,
    one box relabelled to another class and one box of a class the data lacks."""

    class_names = DETECTOR_ORDER
    num_classes = len(DETECTOR_ORDER)
    input_scale = (1333, 800)
    bounding_box_format = "xyxy"

    def __init__(self, dataset):
        rng = np.random.default_rng(0)
        self.outputs = {}
        for record in dataset.records:
            names = [dataset.class_names[i] for i in record["labels"]]
            labels = np.array([DETECTOR_ORDER.index(n) for n in names], np.int64)
            labels[:1] = (labels[:1] + 2) % len(DETECTOR_ORDER)
            boxes = record["boxes"].astype(np.float64) + rng.normal(0, 1.5, record["boxes"].shape)
            boxes = np.concatenate([boxes, [[2, 2, 30, 30]]])
            labels = np.concatenate([labels, [DETECTOR_ORDER.index("ellipse")]])
            self.outputs[_key(read_record_image(record))] = {
                "boxes": boxes, "confidence": rng.uniform(0.3, 1.0, len(boxes)), "labels": labels}

    def detect(self, image):
        return self.outputs[_key(image)]


def _key(image):
    return hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()


def test_one_split_in_three_layouts_gives_one_ap(split, tmp_path, monkeypatch, capsys):
    detector = NamedDetector(_load(split, "coco"))
    monkeypatch.setattr(evaluate_cli, "load_detector", lambda preset, dtype: detector)
    scores = {}
    for kind in LAYOUTS:
        metrics = tmp_path / f"{kind}.json"
        assert cli.main(["evaluate", "--preset", "fake", *split[kind], "--metrics", str(metrics), "--no-plots"]) == 0
        assert "the preset's classes ['ellipse'] are not in the data" in capsys.readouterr().out
        scores[kind] = json.loads(metrics.read_text())
    for kind in LAYOUTS:
        per_class = {row["class"]: row["AP"] for row in scores[kind]["per_class"]}
        assert sorted(per_class) == sorted(CLASSES)  # the per-class table names the classes
        assert per_class == {row["class"]: row["AP"] for row in scores["coco"]["per_class"]}, kind
        for name in ("AP", "AP50", "AP75"):
            assert scores[kind][name] == scores["coco"][name], (kind, name)
    assert 0.3 < scores["coco"]["AP"] < 0.95  # a real score: one box per image is of the wrong class


def test_a_detector_gives_the_same_detections_by_name_in_every_layout(split, nano_factory, tmp_path):
    # A real GFLv2 (random weights, every score kept) for the data's classes in a fourth order.
    detector = nano_factory(seed=3, class_names=["star", "triangle", "cross"], test_config={"score_threshold": 0.0})
    found, aps = {}, {}
    for kind in LAYOUTS:
        dataset = _load(split, kind)
        output = tmp_path / f"{kind}_detections.json"
        aps[kind] = evaluate(detector, dataset, output_json=str(output), progress=False, verbose=False)["AP"]
        name_of = dict(zip(evaluation_category_ids(dataset), dataset.class_names))
        stem = {r["image_id"]: os.path.splitext(os.path.basename(r["file_name"]))[0] for r in dataset.records}
        found[kind] = sorted((stem[d["image_id"]], name_of[d["category_id"]], *np.round(d["bbox"], 3), d["score"])
                             for d in json.loads(output.read_text()))
    assert len(found["coco"]) > 20  # scores above 0 only: detections of every class
    assert found["voc"] == found["coco"] and found["yolo"] == found["coco"]
    assert aps["voc"] == aps["coco"] == aps["yolo"]


def test_a_data_class_the_preset_lacks_is_one_error_line(split, monkeypatch, capsys):
    detector = NamedDetector(_load(split, "coco"))
    detector.class_names, detector.num_classes = ["star", "cross", "ellipse"], 3
    monkeypatch.setattr(evaluate_cli, "load_detector", lambda preset, dtype: detector)
    assert cli.main(["evaluate", "--preset", "fake", *split["voc"]]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1, error
    assert error.startswith("gflv2 evaluate: error: ") and "classes ['triangle'] are not classes of the detector" \
        in error and "matched by name" in error
