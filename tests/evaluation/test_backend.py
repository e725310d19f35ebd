"""COCOeval backends: faster-coco-eval and pycocotools give the same 12 numbers; one function chooses."""

import contextlib
import copy
import io

import numpy as np
import pytest
from pycocotools.cocoeval import COCOeval

from gflv2_keras.evaluation import backend
from gflv2_keras.evaluation.backend import FASTER, PYCOCOTOOLS, choose_backend, coco_score, summary_lines
from gflv2_keras.evaluation.benchmark import synthetic_case
from gflv2_keras.evaluation.coco_evaluator import evaluate_detections

needs_faster = pytest.mark.skipif(not backend.faster_coco_eval_available(), reason="faster-coco-eval not installed")


@pytest.fixture(scope="module")
def case():
    # 6 classes, crowd regions, small / medium / large boxes, duplicates, wrong classes, background boxes.
    coco_gt, results = synthetic_case(num_images=120, detections=25, num_classes=6, objects=5, crowd_fraction=0.1,
                                      seed=3)
    assert sum(a["iscrowd"] for a in coco_gt.dataset["annotations"]) >= 10
    return coco_gt, results


def _pycocotools_reference(coco_gt, results, image_ids=None):
    """Plain pycocotools, as its README runs it (the independent reference)."""
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        coco_eval = COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(results)), "bbox")
        if image_ids is not None:
            coco_eval.params.imgIds = image_ids
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval, printed.getvalue()


@needs_faster
def test_both_backends_give_the_same_12_stats_and_precision(case):
    coco_gt, results = case
    reference, _ = _pycocotools_reference(coco_gt, results)
    fast, slow = coco_score(coco_gt, results, backend=FASTER), coco_score(coco_gt, results, backend=PYCOCOTOOLS)
    assert (fast.backend, slow.backend) == (FASTER, PYCOCOTOOLS)
    assert len(fast.stats) == len(slow.stats) == 12
    np.testing.assert_allclose(fast.stats, slow.stats, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(slow.stats, reference.stats)
    assert 0.2 < fast.stats[0] < 0.8 and all(s > 0 for s in fast.stats)  # a case that exercises every number
    assert fast.precision.shape == slow.precision.shape == (10, 101, 6, 4, 3)
    np.testing.assert_allclose(fast.precision, slow.precision, rtol=0, atol=1e-9)


@needs_faster
def test_both_backends_agree_on_a_subset_of_images_and_through_evaluate_detections(case):
    coco_gt, results = case
    subset = list(range(1, 121, 3))
    reference, _ = _pycocotools_reference(coco_gt, results, subset)
    for name in (FASTER, PYCOCOTOOLS):
        scored = evaluate_detections(coco_gt, results, image_ids=subset, verbose=False, backend=name)
        assert scored["backend"] == name
        np.testing.assert_allclose(scored["stats"], reference.stats, rtol=0, atol=1e-6)


def test_pycocotools_alone_matches_the_reference_exactly(case):
    coco_gt, results = case
    reference, _ = _pycocotools_reference(coco_gt, results)
    np.testing.assert_array_equal(coco_score(coco_gt, results, backend=PYCOCOTOOLS).stats, reference.stats)
    assert results == synthetic_case(num_images=120, detections=25, num_classes=6, objects=5, crowd_fraction=0.1,
                                     seed=3)[1]  # the caller's dicts were not modified


def test_summary_lines_are_pycocotools_lines(case):
    coco_gt, results = case
    reference, printed = _pycocotools_reference(coco_gt, results)
    expected = [line for line in printed.splitlines() if line.lstrip().startswith("Average")]
    assert summary_lines(reference.stats) == expected


def test_one_function_chooses(monkeypatch):
    assert choose_backend("pycocotools") == PYCOCOTOOLS
    monkeypatch.setattr(backend, "faster_coco_eval_available", lambda: True)
    assert choose_backend() == choose_backend("auto") == FASTER
    monkeypatch.setattr(backend, "faster_coco_eval_available", lambda: False)
    assert choose_backend("auto") == PYCOCOTOOLS
    with pytest.raises(ValueError, match=r"not installed \(pip install \"gflv2-keras\[fasteval\]\"\)"):
        choose_backend(FASTER)
    with pytest.raises(ValueError, match="unknown COCO evaluation backend 'cocoapi'"):
        choose_backend("cocoapi")
