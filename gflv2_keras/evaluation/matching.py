"""Per-image matching of detections to ground truth at one IoU and score threshold: confusion matrix and errors.

What COCO AP averages away, counted at one operating point (IoU ``iou_threshold``, detections with
``score >= score_threshold``), image by image, greedily by score:

1. detections in descending score order each take the unmatched ground-truth box *of their own
   class* with the highest IoU >= ``iou_threshold`` (true positive; COCOeval's rule at one IoU);
2. a detection left over that lies in a crowd / ignore region of its class (intersection over
   the detection's area >= ``iou_threshold``, as COCOeval) is ignored: neither hit nor miss;
3. the remaining detections, again by descending score, each take the unmatched ground-truth
   box *of another class* with the highest IoU >= ``iou_threshold`` (a class confusion);
4. detections still left are false positives on background; ground-truth boxes still left are
   missed (false negatives).

Confusion matrix ``[K + 1, K + 1]``: rows the ground-truth class, columns the predicted class,
index ``K`` the background (row ``K``: detections on no object; column ``K``: objects no
detection found; ``[K, K]`` is always 0). An image's errors are its false positives (steps 3 and
4) plus its false negatives (ground truth not found with its own class: steps 3 and 4).

Boxes are xyxy pixels of the original image (COCO ``[x, y, w, h]`` results are converted);
IoU is COCO's (``w = x2 - x1``, no "+1"). Classes are indexed in sorted category-id order, the
order of COCOeval's ``K`` axis.

``count_reproduced`` uses the same matching to compare two sets of detections instead of
detections and ground truth: how many of one model's detections (a float32 reference) another
run (a runtime, a precision, an export) returns again.
"""

from dataclasses import dataclass, field

import numpy as np

# Status of a detection / of a ground-truth box after matching.
TRUE_POSITIVE = "tp"          # detection and ground truth: matched with the same class
WRONG_CLASS = "class"         # detection and ground truth: matched with another class
FALSE_POSITIVE = "fp"         # detection: on background
MISSED = "fn"                 # ground truth: no detection found it
IGNORED = "ignored"           # detection: in a crowd / ignore region of its class
CROWD = "crowd"               # ground truth: a crowd / ignore region (never a hit or a miss)
BELOW_THRESHOLD = "below"     # detection: score below the threshold (not counted)


@dataclass
class ImageMatch:
    """One image's matching.

    Attributes:
        image_id: the image id.
        gt_boxes: float64 ``[G, 4]`` xyxy pixels; ``gt_labels`` int ``[G]`` class indices;
            ``gt_crowd`` bool ``[G]``; ``gt_status`` ``[G]`` (``tp``, ``class``, ``fn``, ``crowd``).
        det_boxes: float64 ``[D, 4]`` xyxy pixels; ``det_labels`` int ``[D]``; ``det_scores``
            ``[D]``; ``det_status`` ``[D]`` (``tp``, ``class``, ``fp``, ``ignored``, ``below``);
            ``det_match`` int ``[D]``: index of the matched ground-truth box, -1 if none.
    """

    image_id: int
    gt_boxes: np.ndarray
    gt_labels: np.ndarray
    gt_crowd: np.ndarray
    gt_status: np.ndarray
    det_boxes: np.ndarray
    det_labels: np.ndarray
    det_scores: np.ndarray
    det_status: np.ndarray
    det_match: np.ndarray

    @property
    def true_positives(self):
        return int(np.sum(self.det_status == TRUE_POSITIVE))

    @property
    def false_positives(self):
        return int(np.sum((self.det_status == FALSE_POSITIVE) | (self.det_status == WRONG_CLASS)))

    @property
    def false_negatives(self):
        return int(np.sum((self.gt_status == MISSED) | (self.gt_status == WRONG_CLASS)))

    @property
    def errors(self):
        """False positives + false negatives."""
        return self.false_positives + self.false_negatives

    def summary(self):
        return {"image_id": self.image_id, "errors": self.errors, "false_positives": self.false_positives,
                "false_negatives": self.false_negatives, "true_positives": self.true_positives}


@dataclass
class ErrorAnalysis:
    """Matching of a whole split.

    Attributes:
        matrix: int64 ``[K + 1, K + 1]`` confusion matrix (rows ground truth, columns predicted,
            index ``K`` background).
        class_names: the ``K`` class names; ``category_ids`` their ids (sorted).
        iou_threshold, score_threshold: the operating point.
        images: ``{image_id: ImageMatch}`` of every scored image.
    """

    matrix: np.ndarray
    class_names: list
    category_ids: list
    iou_threshold: float
    score_threshold: float
    images: dict = field(default_factory=dict)

    def ranked_images(self, count):
        """``(worst, best)``: up to ``count`` ``ImageMatch`` each, disjoint.

        Worst: most errors first (ties: lower image id). Best: fewest errors, then most true
        positives (an image of many found objects shows more than an empty one), then image id.
        """
        matches = list(self.images.values())
        worst = sorted((m for m in matches if m.errors), key=lambda m: (-m.errors, m.image_id))[:count]
        taken = {m.image_id for m in worst}
        best = sorted((m for m in matches if m.image_id not in taken),
                      key=lambda m: (m.errors, -m.true_positives, m.image_id))[:count]
        return worst, best

    def to_dict(self):
        """JSON-ready: thresholds, ``classes`` (names + "background"), ``matrix`` (lists), conventions."""
        return {
            "iou_threshold": self.iou_threshold,
            "score_threshold": self.score_threshold,
            "classes": list(self.class_names) + ["background"],
            "rows": "ground truth",
            "columns": "predicted",
            "matrix": self.matrix.tolist(),
        }


def box_iou(det_boxes, gt_boxes, gt_crowd=None):
    """COCO's bbox IoU ``[D, G]`` of xyxy pixel boxes; for crowd ground truth, intersection / detection area."""
    det_boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    low = np.maximum(det_boxes[:, None, :2], gt_boxes[None, :, :2])
    high = np.minimum(det_boxes[:, None, 2:], gt_boxes[None, :, 2:])
    inter = np.prod(np.clip(high - low, 0, None), axis=-1)
    det_area = np.prod(det_boxes[:, 2:] - det_boxes[:, :2], axis=-1)[:, None]
    gt_area = np.prod(gt_boxes[:, 2:] - gt_boxes[:, :2], axis=-1)[None, :]
    union = det_area + gt_area - inter
    if gt_crowd is not None:
        union = np.where(np.asarray(gt_crowd, bool)[None, :], det_area, union)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def match_image(gt_boxes, gt_labels, det_boxes, det_labels, det_scores, gt_crowd=None, iou_threshold=0.5,
                score_threshold=0.25, image_id=0):
    """Matches one image's detections to its ground truth (the four steps of the module docstring).

    Args:
        gt_boxes: ``[G, 4]`` xyxy pixels; ``gt_labels`` ``[G]`` class indices; ``gt_crowd``
            ``[G]`` bool (default none are crowd regions).
        det_boxes: ``[D, 4]`` xyxy pixels; ``det_labels`` ``[D]``; ``det_scores`` ``[D]``.
        iou_threshold: smallest IoU of a match.
        score_threshold: detections scored below it are left out (status ``below``).
        image_id: recorded in the result.

    Returns:
        an ``ImageMatch``.
    """
    gt_boxes = np.asarray(gt_boxes, np.float64).reshape(-1, 4)
    gt_labels = np.asarray(gt_labels, np.int64).reshape(-1)
    gt_crowd = np.zeros(len(gt_boxes), bool) if gt_crowd is None else np.asarray(gt_crowd, bool).reshape(-1)
    det_boxes = np.asarray(det_boxes, np.float64).reshape(-1, 4)
    det_labels = np.asarray(det_labels, np.int64).reshape(-1)
    det_scores = np.asarray(det_scores, np.float64).reshape(-1)
    gt_status = np.where(gt_crowd, CROWD, MISSED).astype(object)
    det_status = np.where(det_scores >= score_threshold, FALSE_POSITIVE, BELOW_THRESHOLD).astype(object)
    det_match = np.full(len(det_boxes), -1, np.int64)
    overlaps = box_iou(det_boxes, gt_boxes, gt_crowd)
    order = np.argsort(-det_scores, kind="stable")
    same_class = det_labels[:, None] == gt_labels[None, :]

    def assign(detection, candidates, status):
        """Gives ``detection`` the free ground-truth box of ``candidates`` with the highest IoU."""
        free = candidates & (gt_status == MISSED) & (overlaps[detection] >= iou_threshold)
        if not free.any():
            return False
        best = int(np.argmax(np.where(free, overlaps[detection], -1.0)))
        gt_status[best] = det_status[detection] = status
        det_match[detection] = best
        return True

    for d in order:
        if det_status[d] == FALSE_POSITIVE and not assign(d, same_class[d] & ~gt_crowd, TRUE_POSITIVE):
            if np.any(same_class[d] & gt_crowd & (overlaps[d] >= iou_threshold)):
                det_status[d] = IGNORED
    for d in order:
        if det_status[d] == FALSE_POSITIVE:
            assign(d, ~same_class[d] & ~gt_crowd, WRONG_CLASS)
    return ImageMatch(image_id, gt_boxes, gt_labels, gt_crowd, gt_status, det_boxes, det_labels, det_scores,
                      det_status, det_match)


def analyse_errors(coco_gt, detections, image_ids=None, iou_threshold=0.5, score_threshold=0.25):
    """Confusion matrix and per-image errors of COCO result dicts against a COCO ground truth.

    Args:
        coco_gt: ``pycocotools.coco.COCO`` (``iscrowd`` 1 annotations are ignore regions).
        detections: COCO result dicts ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``.
        image_ids: the scored image ids (default every image of ``coco_gt``); detections on
            other images are left out.
        iou_threshold, score_threshold: the operating point.

    Returns:
        an ``ErrorAnalysis``.
    """
    category_ids = sorted(coco_gt.getCatIds())
    index = {c: k for k, c in enumerate(category_ids)}
    num_classes = len(category_ids)
    scored = sorted(coco_gt.getImgIds()) if image_ids is None else sorted(int(i) for i in image_ids)
    by_image = {i: [] for i in scored}
    for det in detections:
        if det["image_id"] in by_image:
            by_image[det["image_id"]].append(det)
    matrix = np.zeros((num_classes + 1, num_classes + 1), np.int64)
    images = {}
    for image_id in scored:
        anns = coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=[image_id]))
        dets = by_image[image_id]
        match = match_image(
            _xyxy([a["bbox"] for a in anns]), [index[a["category_id"]] for a in anns],
            _xyxy([d["bbox"] for d in dets]), [index[d["category_id"]] for d in dets], [d["score"] for d in dets],
            gt_crowd=[bool(a.get("iscrowd", 0)) for a in anns], iou_threshold=iou_threshold,
            score_threshold=score_threshold, image_id=image_id,
        )
        _count(match, matrix, background=num_classes)
        images[image_id] = match
    names = [coco_gt.cats[c].get("name", str(c)) for c in category_ids]
    return ErrorAnalysis(matrix, names, category_ids, float(iou_threshold), float(score_threshold), images)


def count_reproduced(reference, found, min_score=0.0, iou_threshold=0.95):
    """How many of the ``reference`` detections ``found`` returns again: ``(reproduced, total)``.

    Both are lists of COCO result dicts ``{"image_id", "category_id", "bbox": [x, y, w, h]
    pixels, "score"}`` (what ``coco_evaluator.evaluate(..., output_json=...)`` writes), e.g. one
    model's detections from two runtimes or precisions.

    ``total``: the reference detections with ``score >= min_score``. One of them is reproduced when
    ``found`` has a detection on the same image, of the same category, with IoU >= ``iou_threshold``
    (whatever its score). One to one, greedily by descending reference score, each reference
    detection taking the free ``found`` detection of highest IoU: ``match_image`` with the
    reference in the detections' role and ``found`` in the ground truth's (its true positives).
    """
    candidates = {}
    for det in found:
        candidates.setdefault(det["image_id"], []).append(det)
    wanted = {}
    for det in reference:
        wanted.setdefault(det["image_id"], []).append(det)
    reproduced = total = 0
    for image_id, dets in wanted.items():
        others = candidates.get(image_id, [])
        match = match_image(
            _xyxy([d["bbox"] for d in others]), [d["category_id"] for d in others],
            _xyxy([d["bbox"] for d in dets]), [d["category_id"] for d in dets], [d["score"] for d in dets],
            iou_threshold=iou_threshold, score_threshold=min_score, image_id=image_id,
        )
        reproduced += match.true_positives
        total += int(np.sum(match.det_status != BELOW_THRESHOLD))
    return reproduced, total


def _count(match, matrix, background):
    for d, status in enumerate(match.det_status):
        if status in (TRUE_POSITIVE, WRONG_CLASS):
            matrix[match.gt_labels[match.det_match[d]], match.det_labels[d]] += 1
        elif status == FALSE_POSITIVE:
            matrix[background, match.det_labels[d]] += 1
    for g, status in enumerate(match.gt_status):
        if status == MISSED:
            matrix[match.gt_labels[g], background] += 1


def _xyxy(xywh):
    boxes = np.asarray(xywh, np.float64).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
