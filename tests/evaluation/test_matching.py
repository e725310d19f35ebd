"""Confusion matrix and per-image errors: counts of a hand-made case, greedy matching by score; detections
of one run reproduced by another (``count_reproduced``)."""

import contextlib
import io

import numpy as np
import pytest
from pycocotools.coco import COCO

from gflv2_keras.evaluation.coco_evaluator import evaluate_detections
from gflv2_keras.evaluation.matching import analyse_errors, box_iou, count_reproduced, match_image

A, B, C = 1, 2, 3  # category ids (class indices 0, 1, 2)


def _xywh(x1, y1, x2, y2):
    return [x1, y1, x2 - x1, y2 - y1]


def _coco(annotations):
    coco = COCO()
    coco.dataset = {
        "images": [{"id": 1, "height": 100, "width": 100}, {"id": 2, "height": 100, "width": 100}],
        "annotations": [{"id": k, "image_id": i, "category_id": c, "bbox": _xywh(*box), "area": 1.0, "iscrowd": crowd}
                        for k, (i, c, box, crowd) in enumerate(annotations, 1)],
        "categories": [{"id": c, "name": n} for c, n in ((C, "c"), (A, "a"), (B, "b"))],  # not in id order
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


GROUND_TRUTH = [
    (1, A, (0, 0, 10, 10), 0),     # a1: found
    (1, A, (20, 20, 30, 30), 0),   # a2: found as b
    (1, B, (40, 40, 50, 50), 0),   # b1: found (IoU 0.818)
    (1, A, (60, 60, 90, 90), 1),   # a crowd region
    (2, C, (0, 0, 20, 20), 0),     # c1: found by the lower-scored c detection, not the b one above it
    (2, B, (50, 50, 70, 70), 0),   # b2: missed
]
DETECTIONS = [  # (image, category, xyxy, score)
    (1, A, (0, 0, 10, 10), 0.9),      # a1: true positive
    (1, A, (0, 0, 10, 10), 0.8),      # duplicate of a1: false positive on background
    (1, B, (20, 20, 30, 30), 0.7),    # on a2 with the wrong class
    (1, B, (41, 40, 51, 50), 0.6),    # b1: true positive
    (1, A, (65, 65, 75, 75), 0.5),    # inside the a crowd region: ignored
    (1, C, (65, 65, 85, 85), 0.5),    # inside the crowd region of another class: false positive
    (1, C, (90, 0, 99, 9), 0.1),      # below the score threshold: not counted
    (2, B, (0, 0, 20, 12), 0.9),      # IoU 0.6 with c1, but c1 goes to its own class: background
    (2, C, (0, 0, 20, 20), 0.3),      # c1: true positive
]


def _results():
    return [{"image_id": i, "category_id": c, "bbox": _xywh(*box), "score": s} for i, c, box, s in DETECTIONS]


def test_hand_made_confusion_matrix():
    errors = analyse_errors(_coco(GROUND_TRUTH), _results(), iou_threshold=0.5, score_threshold=0.25)
    assert errors.class_names == ["a", "b", "c"] and errors.category_ids == [A, B, C]
    expected = [  # rows ground truth a, b, c, background; columns predicted a, b, c, background
        [1, 1, 0, 0],
        [0, 1, 0, 1],
        [0, 0, 1, 0],
        [1, 1, 1, 0],
    ]
    np.testing.assert_array_equal(errors.matrix, expected)
    first, second = errors.images[1], errors.images[2]
    assert (first.true_positives, first.false_positives, first.false_negatives) == (2, 3, 1)
    assert (second.true_positives, second.false_positives, second.false_negatives) == (1, 1, 1)
    assert list(first.det_status) == ["tp", "fp", "class", "tp", "ignored", "fp", "below"]
    assert list(first.gt_status) == ["tp", "class", "tp", "crowd"]
    assert list(second.gt_status) == ["tp", "fn"]
    worst, best = errors.ranked_images(1)
    assert [m.image_id for m in worst] == [1] and [m.image_id for m in best] == [2]
    record = errors.to_dict()
    assert record["classes"] == ["a", "b", "c", "background"] and record["matrix"] == expected
    assert (record["iou_threshold"], record["score_threshold"]) == (0.5, 0.25)


def test_thresholds_move_the_counts():
    strict = analyse_errors(_coco(GROUND_TRUTH), _results(), iou_threshold=0.85, score_threshold=0.05)
    # b1 (IoU 0.818) is now missed and its detection a false positive; the 0.1 c detection counts.
    assert strict.matrix[1, 1] == 0 and strict.matrix[1, 3] == 2 and strict.matrix[3, 1] == 2
    assert strict.matrix[3, 2] == 2
    assert strict.matrix.sum() == analyse_errors(_coco(GROUND_TRUTH), _results(), score_threshold=0.05).matrix.sum() + 1


def test_greedy_by_score_takes_the_best_iou_of_the_free_boxes():
    truth = [[0, 0, 10, 10], [0, 0, 10, 12]]
    detections = [[0, 0, 10, 11], [0, 0, 10, 10.5]]
    match = match_image(truth, [0, 0], detections, [0, 0], [0.4, 0.9])
    # The 0.9 detection picks first: its best box is the first (IoU 0.952 vs 0.875); the 0.4 one gets the other.
    assert list(match.det_match) == [1, 0] and match.errors == 0
    lone = match_image(truth[:1], [0], detections, [0, 0], [0.4, 0.9])
    assert list(lone.det_status) == ["fp", "tp"]


def test_box_iou_is_coco_iou():
    iou = box_iou([[0, 0, 10, 10], [5, 5, 15, 15]], [[0, 0, 10, 10], [0, 0, 20, 20]], gt_crowd=[False, True])
    np.testing.assert_allclose(iou, [[1.0, 1.0], [25 / 175, 1.0]])


def test_evaluate_detections_reports_the_matrix():
    results = evaluate_detections(_coco(GROUND_TRUTH), _results(), verbose=False)
    assert results["confusion_matrix"]["matrix"][3] == [1, 1, 1, 0]
    assert [row["class"] for row in results["per_class"]] == ["a", "b", "c"]  # sorted ids, COCOeval's K order
    assert results["per_class"][0]["num_gt"] == 2


def test_no_detection_misses_everything():
    errors = analyse_errors(_coco(GROUND_TRUTH), [])
    np.testing.assert_array_equal(errors.matrix[:, 3], [2, 2, 1, 0])
    assert errors.matrix.sum() == 5 and errors.images[1].errors == 3


@pytest.mark.parametrize("score", [0.0, 1.0])
def test_score_threshold_edges_are_inclusive(score):
    match = match_image([[0, 0, 10, 10]], [0], [[0, 0, 10, 10]], [0], [score], score_threshold=score)
    assert list(match.det_status) == ["tp"]


REFERENCE = [  # (image, category, xyxy, score): what a float32 run returned
    (1, A, (0, 0, 10, 10), 0.9),      # found again (its score there does not matter)
    (1, A, (0, 0, 10, 10.2), 0.8),    # a near-duplicate: the one found box went to the 0.9 detection
    (1, B, (20, 20, 30, 30), 0.7),    # found with another class: not reproduced
    (1, B, (40, 40, 50, 50), 0.6),    # found with IoU 100 / 104 = 0.962: reproduced
    (1, B, (60, 60, 70, 70), 0.5),    # found with IoU 100 / 106 = 0.943: not reproduced
    (2, A, (0, 0, 10, 10), 0.4),      # the same box exists on image 3 only
    (2, C, (5, 5, 25, 25), 0.2),      # reproduced, below 0.3
]
FOUND = [
    (1, A, (0, 0, 10, 10), 0.2),
    (1, C, (20, 20, 30, 30), 0.7),
    (1, B, (40, 40, 50, 50.4), 0.6),
    (1, B, (60, 60, 70, 70.6), 0.5),
    (3, A, (0, 0, 10, 10), 0.4),
    (2, C, (5, 5, 25, 25), 0.9),
]


def _as_results(rows):
    return [{"image_id": i, "category_id": c, "bbox": _xywh(*box), "score": s} for i, c, box, s in rows]


@pytest.mark.parametrize("min_score, expected", [(0.0, (3, 7)), (0.3, (2, 6)), (0.9, (1, 1)), (0.95, (0, 0))])
def test_count_reproduced_hand_made(min_score, expected):
    assert count_reproduced(_as_results(REFERENCE), _as_results(FOUND), min_score=min_score) == expected


def test_count_reproduced_threshold_and_edges():
    reference, found = _as_results(REFERENCE), _as_results(FOUND)
    assert count_reproduced(reference, found, iou_threshold=0.94) == (4, 7)  # the 0.943 box now counts
    assert count_reproduced(reference, reference) == (7, 7)
    assert count_reproduced(reference, []) == (0, 7)
    assert count_reproduced([], found) == (0, 0)
