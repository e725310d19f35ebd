"""Evaluation of a ``DetectionDataset`` of any layout: in-memory ground truth, ignore regions, per-class AP."""

import contextlib
import io
import json

import numpy as np
import pytest

from gflv2_keras.data.coco import load_coco
from gflv2_keras.data.formats import load_detection_dataset
from gflv2_keras.data.layouts import write_voc, write_yolo
from gflv2_keras.data.records import make_record
from gflv2_keras.data.synthetic import make_synthetic_coco
from gflv2_keras.evaluation.coco_evaluator import evaluate, evaluate_detections, ground_truth


class RecordDetector:
    """Returns, for the i-th image it is run on, the i-th record's boxes (jittered) with scores."""

    def __init__(self, records, jitter=0.0, seed=0):
        rng = np.random.default_rng(seed)
        self.outputs = []
        for r in records:
            boxes = r["boxes"] + rng.uniform(-jitter, jitter, r["boxes"].shape).astype(np.float32)
            self.outputs.append({"boxes": boxes, "confidence": rng.uniform(0.3, 1.0, len(boxes)),
                                 "labels": r["labels"].astype(np.int64)})
        self.calls = 0

    def detect(self, image):
        out = self.outputs[self.calls]
        self.calls += 1
        return out


@pytest.fixture(scope="module")
def layouts(tmp_path_factory):
    root = tmp_path_factory.mktemp("formats")
    coco = make_synthetic_coco(str(root / "coco"), num_train=2, num_val=6, seed=11, classes=["cross", "star", "ellipse"],
                               category_ids=[40, 7, 19])
    val = load_coco(coco["val_annotations"], coco["val_images"], for_training=False, verbose=False)
    write_voc(val, str(root / "voc"), split="val")
    yaml_path = write_yolo(val, str(root / "yolo"), split="val")
    return {"coco": coco["val_annotations"], "voc": str(root / "voc"), "yolo": yaml_path, "images": coco["val_images"]}


def _coco_eval_reference(annotation_file, detections, category=None):
    """pycocotools on the raw annotation file (the independent reference)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(annotation_file)
        ev = COCOeval(gt, gt.loadRes([dict(d) for d in detections]), "bbox")
        if category is not None:
            ev.params.catIds = [category]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def test_coco_split_scores_as_pycocotools_on_the_file_with_sparse_ids(layouts, tmp_path):
    dataset = load_detection_dataset(layouts["coco"], images=layouts["images"], for_training=False, verbose=False)
    assert dataset.category_ids == [7, 19, 40]
    output = tmp_path / "dets.json"
    results = evaluate(RecordDetector(dataset.records, jitter=4.0), dataset, output_json=str(output),
                       progress=False, verbose=False)
    detections = json.loads(output.read_text())
    assert {d["category_id"] for d in detections} <= {7, 19, 40}
    np.testing.assert_allclose(results["stats"], _coco_eval_reference(layouts["coco"], detections), atol=1e-12)
    assert 0.05 < results["AP"] < 0.99
    with open(layouts["coco"]) as f:
        counts = {c["id"]: 0 for c in json.load(f)["categories"]}
    with open(layouts["coco"]) as f:
        for ann in json.load(f)["annotations"]:
            counts[ann["category_id"]] += 1
    for row in results["per_class"]:
        reference = _coco_eval_reference(layouts["coco"], detections, category=row["category_id"])
        assert row["AP"] == pytest.approx(reference[0], abs=1e-12)
        assert row["AP50"] == pytest.approx(reference[1], abs=1e-12)
        assert row["num_gt"] == counts[row["category_id"]]
    assert [row["class"] for row in results["per_class"]] == ["star", "ellipse", "cross"]


def test_the_three_layouts_of_one_split_score_the_same(layouts):
    scores = {}
    for kind in ("coco", "voc", "yolo"):
        images = layouts["images"] if kind == "coco" else None
        dataset = load_detection_dataset(layouts[kind], "val", images=images, for_training=False, verbose=False)
        coco = load_coco(layouts["coco"], layouts["images"], for_training=False, verbose=False)
        order = [dataset.class_names.index(n) for n in coco.class_names]
        detector = RecordDetector(coco.records, jitter=4.0)  # the same detections, in the layout's class order
        for out in detector.outputs:
            out["labels"] = np.asarray(order, np.int64)[out["labels"]]
        scores[kind] = evaluate(detector, dataset, progress=False, verbose=False)
    for kind in ("voc", "yolo"):
        # YOLO stores boxes with 6 decimals of the image size, VOC 1-based corners: the same boxes.
        np.testing.assert_allclose(scores[kind]["stats"][:3], scores["coco"]["stats"][:3], atol=2e-3)


def _one_image_dataset(tmp_path, difficult):
    from PIL import Image

    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(tmp_path / "a.png")
    record = make_record(1, str(tmp_path / "a.png"), 100, 100, [[10, 10, 40, 40]], [0],
                         ignore_boxes=[[60, 60, 90, 90]] if difficult else [], ignore_labels=[0] if difficult else [])
    from gflv2_keras.data.records import DetectionDataset

    return DetectionDataset(str(tmp_path / "list.txt"), str(tmp_path), [record], [0], ["thing"], format="voc",
                            for_training=False)


def test_ignore_boxes_are_neither_hits_nor_misses(tmp_path):
    dataset = _one_image_dataset(tmp_path, difficult=True)
    coco = ground_truth(dataset)
    assert [a["iscrowd"] for a in coco.dataset["annotations"]] == [0, 1]
    assert coco.dataset["annotations"][0]["area"] == 900.0 and coco.dataset["categories"][0]["id"] == 1

    def score(boxes, confidence):
        detections = [{"image_id": 1, "category_id": 1, "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "score": s}
                      for b, s in zip(boxes, confidence)]
        return evaluate_detections(coco, detections, verbose=False)

    # A detection of the difficult object, scored above the true one, changes nothing.
    assert score([[10, 10, 40, 40]], [0.5])["AP"] == pytest.approx(1.0)
    assert score([[60, 60, 90, 90], [10, 10, 40, 40]], [0.9, 0.5])["AP"] == pytest.approx(1.0)
    # Missing it is no miss either; the same detection on an unmarked object would be a false positive.
    plain = ground_truth(_one_image_dataset(tmp_path, difficult=False))
    detections = [{"image_id": 1, "category_id": 1, "bbox": [60, 60, 30, 30], "score": 0.9},
                  {"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.5}]
    assert evaluate_detections(plain, detections, verbose=False)["AP"] < 0.9
    per_class = score([[10, 10, 40, 40]], [0.5])["per_class"]
    assert per_class == [{"class": "thing", "category_id": 1, "AP": pytest.approx(1.0), "AP50": pytest.approx(1.0),
                          "num_gt": 1}]


def test_coco_crowd_regions_are_kept_as_ignore_boxes(tmp_path):
    content = {
        "images": [{"id": 3, "file_name": "a.jpg", "height": 50, "width": 60}],
        "annotations": [
            {"id": 1, "image_id": 3, "category_id": 5, "bbox": [1, 2, 10, 20], "area": 150.0, "iscrowd": 0},
            {"id": 2, "image_id": 3, "category_id": 5, "bbox": [30, 10, 20, 30], "area": 400.0, "iscrowd": 1},
        ],
        "categories": [{"id": 5, "name": "five"}],
    }
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(content))
    record = load_coco(str(path), str(tmp_path), for_training=False, verbose=False).records[0]
    np.testing.assert_array_equal(record["ignore_boxes"], [[30, 10, 50, 40]])
    gt = ground_truth(load_coco(str(path), str(tmp_path), for_training=False, verbose=False))
    assert [(a["iscrowd"], a["area"], a["category_id"]) for a in gt.dataset["annotations"]] == [(0, 150.0, 5),
                                                                                                  (1, 400.0, 5)]
