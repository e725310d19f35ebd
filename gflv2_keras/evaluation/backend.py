"""The COCOeval implementation that scores detections: faster-coco-eval when installed, else pycocotools.

``choose_backend`` is the one place that decides; ``coco_score`` runs the chosen COCOeval
(``evaluate`` + ``accumulate`` + ``summarize``) on a ground truth and COCO result dicts and
returns the 12 summary numbers and the ``eval["precision"]`` array. faster-coco-eval
(``pip install "gflv2-keras[fasteval]"``) reimplements the per-image matching and the
accumulation of pycocotools in C++; on the same input both give the same 12 numbers (tested to
1e-6; in practice bit for bit) several times faster (``BENCHMARKS.md``, "COCO evaluation backends").

Formats: ground truth and detections are COCO dicts, ``bbox`` = ``[x, y, w, h]`` pixels
(``w = x2 - x1``, no "+1"), ``area`` on every ground-truth annotation, ``iscrowd`` 1 for
regions that are neither hits nor misses.
"""

import contextlib
import copy
import importlib.util
import io
import time
from dataclasses import dataclass

import numpy as np

FASTER = "faster-coco-eval"
PYCOCOTOOLS = "pycocotools"
BACKENDS = ("auto", FASTER, PYCOCOTOOLS)

# pycocotools' summary lines, in the order of ``COCOeval.stats``: (AP or AR, IoU, area, max dets).
SUMMARY_ROWS = (
    ("Precision", "(AP)", "0.50:0.95", "all", 100),
    ("Precision", "(AP)", "0.50", "all", 100),
    ("Precision", "(AP)", "0.75", "all", 100),
    ("Precision", "(AP)", "0.50:0.95", "small", 100),
    ("Precision", "(AP)", "0.50:0.95", "medium", 100),
    ("Precision", "(AP)", "0.50:0.95", "large", 100),
    ("Recall", "(AR)", "0.50:0.95", "all", 1),
    ("Recall", "(AR)", "0.50:0.95", "all", 10),
    ("Recall", "(AR)", "0.50:0.95", "all", 100),
    ("Recall", "(AR)", "0.50:0.95", "small", 100),
    ("Recall", "(AR)", "0.50:0.95", "medium", 100),
    ("Recall", "(AR)", "0.50:0.95", "large", 100),
)


@dataclass
class CocoScore:
    """What one COCOeval run produced.

    Attributes:
        stats: the 12 summary numbers (``COCOeval.stats``: AP, AP50, AP75, APs, APm, APl, AR1,
            AR10, AR100, ARs, ARm, ARl) as python floats.
        precision: ``eval["precision"]`` float64 ``[T, R, K, A, M]``: IoU thresholds 0.50:0.05:0.95,
            101 recall points 0:0.01:1, categories in sorted id order, area ranges (all, small,
            medium, large), max detections (1, 10, 100); -1 where a category has no ground truth.
        backend: ``"faster-coco-eval"`` or ``"pycocotools"``.
        seconds: wall time of evaluate + accumulate + summarize (result loading included).
    """

    stats: list
    precision: np.ndarray
    backend: str
    seconds: float


def faster_coco_eval_available():
    """Whether the ``faster_coco_eval`` package can be imported."""
    return importlib.util.find_spec("faster_coco_eval") is not None


def choose_backend(requested="auto"):
    """The COCOeval implementation to use.

    Args:
        requested: ``"auto"`` (faster-coco-eval when installed, else pycocotools),
            ``"faster-coco-eval"`` or ``"pycocotools"``.

    Returns:
        ``"faster-coco-eval"`` or ``"pycocotools"``.

    Raises:
        ValueError: an unknown name, or faster-coco-eval asked for and not installed.
    """
    if requested not in BACKENDS:
        raise ValueError(f"unknown COCO evaluation backend {requested!r}; choose one of {', '.join(BACKENDS)}")
    if requested == "auto":
        return FASTER if faster_coco_eval_available() else PYCOCOTOOLS
    if requested == FASTER and not faster_coco_eval_available():
        raise ValueError(
            'faster-coco-eval is not installed (pip install "gflv2-keras[fasteval]"), or choose pycocotools'
        )
    return requested


def coco_score(coco_gt, detections, image_ids=None, backend="auto"):
    """Runs COCOeval bbox on non-empty ``detections`` with the chosen backend.

    Args:
        coco_gt: the ground truth, a ``pycocotools.coco.COCO`` (its ``dataset`` dict is read;
            it is not modified).
        detections: non-empty list of COCO result dicts ``{"image_id", "category_id",
            "bbox": [x, y, w, h], "score"}`` (not modified).
        image_ids: score these image ids only (default: every image of ``coco_gt``).
        backend: see ``choose_backend``.

    Returns:
        a ``CocoScore``.
    """
    name = choose_backend(backend)
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        coco_eval = _cocoeval(name, coco_gt, detections)
        if image_ids is not None:
            coco_eval.params.imgIds = sorted(int(i) for i in image_ids)
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    stats = [float(v) for v in np.asarray(coco_eval.stats)[: len(SUMMARY_ROWS)]]
    precision = np.asarray(coco_eval.eval["precision"], np.float64)
    return CocoScore(stats, precision, name, time.perf_counter() - start)


def _cocoeval(name, coco_gt, detections):
    """A bbox ``COCOeval`` of backend ``name`` on ``coco_gt`` and a copy of ``detections``."""
    if name == FASTER:
        from faster_coco_eval import COCO
        from faster_coco_eval import COCOeval_faster as COCOeval

        # faster-coco-eval indexes its own COCO object and writes into annotation dicts: give it copies.
        dataset = coco_gt.dataset
        coco_gt = COCO({**dataset, "annotations": [dict(a) for a in dataset.get("annotations", [])]})
    else:
        from pycocotools.cocoeval import COCOeval
    return COCOeval(coco_gt, coco_gt.loadRes(copy.deepcopy(detections)), "bbox")


def summary_lines(stats):
    """pycocotools' 12 summary lines (`` Average Precision  (AP) @[ IoU=0.50:0.95 | ...] = 0.123``)."""
    lines = []
    for (kind, short, iou, area, max_dets), value in zip(SUMMARY_ROWS, stats):
        where = f"IoU={iou:<9} | area={area:>6s} | maxDets={max_dets:>3d}"
        lines.append(f" {'Average ' + kind:<18} {short} @[ {where} ] = {value:0.3f}")
    return lines
