"""COCO evaluation: same numbers as pycocotools, id mapping, unreadable images, callback."""

import contextlib
import copy
import io
import json

import numpy as np
import pytest
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from gflv2_keras.data.coco import load_coco
from gflv2_keras.evaluation.callback import CocoEvaluationCallback
from gflv2_keras.evaluation.coco_evaluator import evaluate, evaluate_detections, run_detector

IMAGES = [(1, 100, 100), (2, 80, 120), (3, 60, 60)]  # (id, height, width); image 3 has no object
CATEGORY_IDS = [3, 8]
GROUND_TRUTH = [  # (image id, category id, [x, y, w, h])
    (1, 3, [10, 10, 30, 40]),
    (1, 8, [50, 50, 20, 20]),
    (2, 3, [0, 0, 60, 40]),
    (2, 3, [70, 20, 30, 30]),
    (2, 8, [5, 45, 10, 12]),
]


@pytest.fixture
def gt_file(tmp_path):
    content = {
        "images": [{"id": i, "file_name": f"{i}.png", "height": h, "width": w} for i, h, w in IMAGES],
        "categories": [{"id": c, "name": f"class{c}"} for c in CATEGORY_IDS],
        "annotations": [
            {"id": k, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3], "iscrowd": 0}
            for k, (i, c, b) in enumerate(GROUND_TRUTH, 1)
        ],
    }
    for image_id, height, width in IMAGES:
        Image.fromarray(np.full((height, width, 3), 40 * image_id, np.uint8)).save(tmp_path / f"{image_id}.png")
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(content))
    return str(path)


def _perfect():
    return [{"image_id": i, "category_id": c, "bbox": list(b), "score": 0.9} for i, c, b in GROUND_TRUTH]


def _pycocotools_stats(gt_file, detections):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_file)
        coco_eval = COCOeval(gt, gt.loadRes(copy.deepcopy(detections)), "bbox")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return list(coco_eval.stats)


def test_perfect_detections_score_one(gt_file):
    results = evaluate_detections(gt_file, _perfect(), verbose=False)
    assert results["AP"] == results["AP50"] == results["AP75"] == pytest.approx(1.0)
    assert results["num_detections"] == 5


def test_numbers_are_pycocotools_numbers(gt_file, tmp_path, capsys):
    rng = np.random.default_rng(0)
    detections = []
    for image_id, category_id, (x, y, w, h) in GROUND_TRUTH:
        for _ in range(3):
            jitter = rng.normal(0, 4, 4)
            detections.append(
                {
                    "image_id": image_id,
                    "category_id": category_id,
                    "bbox": [x + jitter[0], y + jitter[1], max(w + jitter[2], 1), max(h + jitter[3], 1)],
                    "score": float(rng.uniform()),
                }
            )
    detections.append({"image_id": 3, "category_id": 8, "bbox": [1, 1, 20, 20], "score": 0.95})  # false positive
    original = copy.deepcopy(detections)
    output = tmp_path / "out" / "detections.json"
    results = evaluate_detections(gt_file, detections, output_json=str(output))
    expected = _pycocotools_stats(gt_file, detections)
    # The default backend (faster-coco-eval when installed) agrees to the last bits; pycocotools exactly.
    np.testing.assert_allclose(results["stats"], expected, rtol=0, atol=1e-12)
    assert evaluate_detections(gt_file, detections, verbose=False, backend="pycocotools")["stats"] == expected
    assert [results[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")] == results["stats"][:6]
    assert 0.1 < results["AP"] < 0.9
    assert detections == original  # pycocotools' loadRes must not have written into the caller's dicts
    assert json.loads(output.read_text()) == original
    assert "Average Precision" in capsys.readouterr().out
    assert evaluate_detections(gt_file, str(output), verbose=False)["stats"] == results["stats"]


def test_a_shifted_box_scores_the_known_lower_ap(gt_file):
    # GT [0, 0, 60, 40] of image 2 vs a box 58% as tall: IoU 0.58, a match at IoU 0.50 and 0.55
    # only, so AP = 2/10 for that one image and category.
    detection = {"image_id": 2, "category_id": 3, "bbox": [0, 0, 60, 40 * 0.58], "score": 0.8}
    gt = COCO(gt_file)
    gt.dataset["annotations"] = [a for a in gt.dataset["annotations"] if a["id"] == 3]
    gt.dataset["categories"] = [c for c in gt.dataset["categories"] if c["id"] == 3]
    gt.createIndex()
    results = evaluate_detections(gt, [detection], image_ids=[2], verbose=False)
    assert results["AP"] == pytest.approx(0.2)
    assert results["AP50"] == pytest.approx(1.0) and results["AP75"] == pytest.approx(0.0)


def test_no_detection_gives_zeros(gt_file, tmp_path):
    results = evaluate_detections(gt_file, [], output_json=str(tmp_path / "empty.json"), verbose=False)
    assert results["AP"] == 0.0 and results["stats"] == [0.0] * 12
    assert json.loads((tmp_path / "empty.json").read_text()) == []


def test_ids_outside_the_file_are_errors(gt_file):
    bad_image = [{"image_id": 99, "category_id": 3, "bbox": [0, 0, 5, 5], "score": 0.5}]
    with pytest.raises(ValueError, match="'image_id'.*gt.json"):
        evaluate_detections(gt_file, bad_image, verbose=False)
    contiguous = [{"image_id": 1, "category_id": 0, "bbox": [0, 0, 5, 5], "score": 0.5}]
    with pytest.raises(ValueError, match="'category_id'.*mapped to category ids"):
        evaluate_detections(gt_file, contiguous, verbose=False)


class FakeDetector:
    """Returns fixed xyxy boxes in original pixels and records the images it was given."""

    def __init__(self, outputs):
        self.outputs = outputs
        self.images = []

    def detect(self, image):
        self.images.append(image)
        return self.outputs(image)


def test_run_detector_maps_labels_and_keeps_original_pixels(gt_file, tmp_path, caplog):
    (tmp_path / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    dataset = load_coco(gt_file, tmp_path, for_training=False, verbose=False)
    detector = FakeDetector(
        lambda image: {
            "boxes": np.array([[10.5, 20.0, 30.5, 60.0], [0, 0, image.shape[1], image.shape[0]], [1, 1, 2, 2]], np.float32),
            "confidence": np.array([0.9, 0.4, 0.3], np.float32),
            "labels": np.array([1, 0, -1]),
        }
    )
    results = run_detector(detector, dataset, progress=False)
    assert [im.shape for im in detector.images] == [(100, 100, 3), (80, 120, 3)]
    assert all(im.dtype == np.uint8 for im in detector.images)
    assert detector.images[1][0, 0].tolist() == [80, 80, 80]
    assert results[:2] == [
        {"image_id": 1, "category_id": 8, "bbox": [10.5, 20.0, 20.0, 40.0], "score": pytest.approx(0.9)},
        {"image_id": 1, "category_id": 3, "bbox": [0.0, 0.0, 100.0, 100.0], "score": pytest.approx(0.4)},
    ]
    assert results[3]["bbox"] == [0.0, 0.0, 120.0, 80.0] and len(results) == 4
    assert 3 in dataset.unreadable and "3.png" in caplog.text and "image id 3" in caplog.text
    json.dumps(results)  # plain python types


def test_run_detector_reads_the_detector_bounding_box_format(gt_file, tmp_path):
    dataset = load_coco(gt_file, tmp_path, for_training=False, verbose=False)
    expected = run_detector(_ground_truth_detector(), dataset, progress=False)

    def rel_yxyx(image):  # float64 NumPy: xyxy pixels → (y1, x1, y2, x2) / (h, w, h, w)
        out = _ground_truth_detector().outputs(image)
        h, w = image.shape[:2]
        out["boxes"] = out["boxes"].astype(np.float64)[:, [1, 0, 3, 2]] / [h, w, h, w]
        return out

    relative = FakeDetector(rel_yxyx)
    relative.bounding_box_format = "rel_yxyx"
    results = run_detector(relative, dataset, progress=False)
    assert [r["category_id"] for r in results] == [r["category_id"] for r in expected] and len(results) == 5
    np.testing.assert_allclose([r["bbox"] for r in results], [r["bbox"] for r in expected], atol=1e-4)


def test_run_detector_rejects_out_of_range_labels(gt_file, tmp_path):
    dataset = load_coco(gt_file, tmp_path, for_training=False, verbose=False)
    detector = FakeDetector(lambda image: {"boxes": np.zeros((1, 4)), "confidence": np.ones(1), "labels": np.array([2])})
    with pytest.raises(ValueError, match="image id 1.*label 2.*2 categories"):
        run_detector(detector, dataset, progress=False)


def _ground_truth_detector():
    by_size = {(h, w): i for i, h, w in IMAGES}

    def outputs(image):
        image_id = by_size[image.shape[:2]]
        rows = [(CATEGORY_IDS.index(c), b) for i, c, b in GROUND_TRUTH if i == image_id]
        return {
            "boxes": np.array([[x, y, x + w, y + h] for _, (x, y, w, h) in rows], np.float32).reshape(-1, 4),
            "confidence": np.full(len(rows), 0.8, np.float32),
            "labels": np.array([c for c, _ in rows], np.int32),
        }

    return FakeDetector(outputs)


def test_evaluate_end_to_end_and_on_a_subset(gt_file, tmp_path):
    output = tmp_path / "dets.json"
    results = evaluate(_ground_truth_detector(), gt_file, tmp_path, output_json=str(output), progress=False, verbose=False)
    assert results["AP"] == pytest.approx(1.0) and results["num_images"] == 3
    assert len(json.loads(output.read_text())) == 5
    # Scoring only the images that were run: image 2's objects are not counted as misses.
    subset = evaluate(_ground_truth_detector(), gt_file, tmp_path, max_images=1, progress=False, verbose=False)
    assert subset["AP"] == pytest.approx(1.0) and subset["num_images"] == 1


def test_callback_adds_metrics_to_logs(gt_file, tmp_path, capsys):
    callback = CocoEvaluationCallback(
        gt_file, tmp_path, every_n_epochs=2, detector=_ground_truth_detector(), output_json=str(tmp_path / "e{epoch}.json")
    )
    logs = {"loss": 1.0}
    callback.on_epoch_end(0, logs)
    assert logs == {"loss": 1.0} and not (tmp_path / "e1.json").exists()
    callback.on_epoch_end(1, logs)
    assert logs["val_AP"] == pytest.approx(1.0) and logs["val_AP50"] == pytest.approx(1.0)
    assert {"val_AP75", "val_APs", "val_APm", "val_APl"} <= set(logs)
    assert (tmp_path / "e2.json").exists()
    assert "Epoch 2: COCO bbox on 3 images: val_AP 1.0000" in capsys.readouterr().out
