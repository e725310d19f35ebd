"""COCO bbox evaluation of a ``DetectionDataset`` of any layout (COCO, VOC, YOLO).

One code path for every layout: ``ground_truth(dataset)`` builds the COCO ground truth in memory
from the records (``boxes`` as annotations; ``ignore_boxes`` as ``iscrowd=1`` regions, so VOC
``difficult`` objects are neither hits nor misses, as the VOC devkit, and COCO crowd regions
are handled as COCOeval does; area = the COCO file's ``area``, else the box area; category ids =
the COCO file's own, else label index + 1). Differences from COCOeval on the raw JSON file:
annotations the reader drops (degenerate boxes, boxes reaching far outside the image, unknown
categories) are not in the ground truth.

As the TF Model Garden ``COCOEvaluator`` and mmdet (and unlike keras-cv's ``PyCOCOCallback``),
detections are scored in original image pixels, with the file's image ids, and with contiguous
labels (0-based class indices) mapped back to the file's category ids. Classes are matched by name
(``data.class_map``): a detector's class ``i`` is the dataset's class named ``detector.class_names[i]``,
whatever order and ids the layout gives its classes; detections of classes the dataset lacks are
not scored, dataset classes the detector lacks are an error.

Formats: a detector returns boxes of the original image in its ``bounding_box_format``
(``keras.utils.bounding_boxes`` names; converted here to xyxy absolute original-image pixels);
COCO result dicts hold ``bbox`` = ``[x, y, w, h]`` (``w = x2 - x1``, no "+1").

The COCOeval implementation is faster-coco-eval when installed, else pycocotools (``backend``:
the same 12 numbers, ``evaluation.backend``). Beside the numbers, every evaluation counts its
errors at one operating point (IoU ``iou_threshold``, score ``>= score_threshold``: confusion
matrix and per-image false positives / negatives, ``evaluation.matching``), and ``evaluate``
can draw them (``plots_dir``: ``evaluation.plots``).
"""

import contextlib
import io
import json
import logging
import os
from dataclasses import dataclass

import numpy as np

from gflv2_keras.data.class_map import match_detector_classes
from gflv2_keras.data.coco import load_coco
from gflv2_keras.data.image_io import ImageReadError, read_record_image
from gflv2_keras.evaluation.backend import coco_score, summary_lines
from gflv2_keras.evaluation.matching import analyse_errors
from gflv2_keras.utils.files import atomic_write

logger = logging.getLogger(__name__)

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
IOU_THRESHOLD = 0.5  # operating point of the confusion matrix and the example pictures
SCORE_THRESHOLD = 0.25
NUM_EXAMPLES = 8  # worst and best images drawn by ``evaluate(..., plots_dir=...)``


@dataclass
class Evaluation:
    """What ``score_detections`` computed: the ``results`` dict of ``evaluate_detections``, the
    ground truth ``coco_gt``, COCOeval's ``precision`` ``[T, R, K, A, M]`` (None without
    detections) and the ``errors`` (``matching.ErrorAnalysis``)."""

    results: dict
    coco_gt: object
    precision: object
    errors: object


def evaluate_detections(annotation_file, detections, output_json=None, image_ids=None, verbose=True, backend="auto",
                        iou_threshold=IOU_THRESHOLD, score_threshold=SCORE_THRESHOLD):
    """COCOeval bbox of detections against a COCO annotation file.

    Args:
        annotation_file: path of the ground-truth JSON, or a loaded ``pycocotools.coco.COCO``
            (``ground_truth(dataset)``).
        detections: list of COCO result dicts ``{"image_id", "category_id", "bbox": [x, y, w, h],
            "score"}`` (original pixels, the file's ids), or the path of such a JSON file.
        output_json: if given, the detections are written there (JSON list).
        image_ids: evaluate on these image ids only (default: every image of the file).
        verbose: print pycocotools' summary table.
        backend: the COCOeval implementation, ``"auto"`` (faster-coco-eval when installed),
            ``"faster-coco-eval"`` or ``"pycocotools"`` (``backend.choose_backend``).
        iou_threshold, score_threshold: the operating point of the confusion matrix.

    Returns:
        dict with ``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl`` and the recall metrics
        ``AR1`` ... ``ARl`` (floats, pycocotools' 12 ``stats`` in order), ``stats`` (the list of
        12), ``num_detections``, ``backend`` (the implementation that ran), ``confusion_matrix``
        (``ErrorAnalysis.to_dict()``: rows ground truth, columns predicted, last index
        background) and ``per_class``: one dict per category in id order,
        ``class``, ``category_id``, ``AP`` (IoU 0.50:0.95), ``AP50``, ``num_gt`` (non-crowd
        ground-truth boxes in the scored images), from ``COCOeval.eval["precision"]`` (area
        "all", 100 detections; -1 where the class has no ground truth). With no detection at
        all every metric is 0.0.

    Raises:
        ValueError: a detection names an image or category id that the file does not have, or
            a ground-truth annotation lacks the ``area`` field that COCOeval needs.
    """
    return score_detections(annotation_file, detections, output_json, image_ids, verbose, backend, iou_threshold,
                            score_threshold).results


def score_detections(annotation_file, detections, output_json=None, image_ids=None, verbose=True, backend="auto",
                     iou_threshold=IOU_THRESHOLD, score_threshold=SCORE_THRESHOLD):
    """``evaluate_detections`` that also returns what the pictures need: an ``Evaluation``."""
    from pycocotools.coco import COCO

    from gflv2_keras.evaluation.backend import choose_backend

    backend = choose_backend(backend)
    if isinstance(detections, (str, os.PathLike)):
        with open(detections) as f:
            detections = json.load(f)
    detections = list(detections)
    if output_json is not None:
        os.makedirs(os.path.dirname(os.path.abspath(output_json)), exist_ok=True)
        atomic_write(output_json, lambda f: f.write(json.dumps(detections).encode()))

    if isinstance(annotation_file, COCO):
        coco_gt, source = annotation_file, "the ground truth"
    else:
        source = str(annotation_file)
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO(source)
    _check_ground_truth(coco_gt, source)
    _check_detections(coco_gt, detections, source)

    scored = set(coco_gt.getImgIds() if image_ids is None else (int(i) for i in image_ids))
    if not detections:
        logger.warning("evaluate_detections: no detections, every metric is 0")
        stats = [0.0] * len(METRIC_NAMES)
        precision = None
    else:
        score = coco_score(coco_gt, detections, image_ids, backend)  # copies the dicts: the caller's stay intact
        if verbose:
            print("\n".join(summary_lines(score.stats)))
        stats, precision = score.stats, score.precision
    errors = analyse_errors(coco_gt, detections, sorted(scored), iou_threshold, score_threshold)
    results = dict(zip(METRIC_NAMES, stats))
    results["stats"] = stats
    results["num_detections"] = len(detections)
    results["backend"] = backend
    results["per_class"] = per_class_results(coco_gt, precision, scored)
    results["confusion_matrix"] = errors.to_dict()
    return Evaluation(results, coco_gt, precision, errors)


def per_class_results(coco_gt, precision, image_ids):
    """Per-category AP, AP50 and ground-truth count.

    Args:
        coco_gt: the ground truth (``pycocotools.coco.COCO``).
        precision: ``COCOeval.eval["precision"]`` ``[T, R, K, A, M]`` (IoU thresholds 0.50:0.95,
            101 recall points, categories in sorted id order, as COCOeval, area ranges, max
            detections), or None (no detection: every AP 0).
        image_ids: the scored image ids.

    Returns:
        list of dicts ``class``, ``category_id``, ``AP``, ``AP50``, ``num_gt`` (-1.0 APs for a
        category without ground truth, as COCOeval).
    """
    rows = []
    for k, cat_id in enumerate(sorted(coco_gt.getCatIds())):
        num_gt = sum(
            1 for a in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=list(image_ids), catIds=[cat_id])) if not a.get("iscrowd")
        )
        if precision is None:
            ap = ap50 = 0.0 if num_gt else -1.0
        else:
            ap, ap50 = _mean_valid(precision[:, :, k, 0, -1]), _mean_valid(precision[0, :, k, 0, -1])
        rows.append({"class": coco_gt.cats[cat_id].get("name", str(cat_id)), "category_id": int(cat_id),
                     "AP": ap, "AP50": ap50, "num_gt": num_gt})
    return rows


def format_results(results):
    """The 12 COCO numbers and the per-class table as printable lines."""
    lines = [f"  {name:<5} {results[name]:.4f}" for name in METRIC_NAMES]
    width = max([5] + [len(row["class"]) for row in results.get("per_class", [])])
    lines.append(f"  {'class':<{width}} {'AP':>6} {'AP50':>6} {'boxes':>6}")
    for row in results.get("per_class", []):
        lines.append(f"  {row['class']:<{width}} {row['AP']:6.3f} {row['AP50']:6.3f} {row['num_gt']:6d}")
    return lines


def _mean_valid(values):
    valid = values[values > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def evaluation_category_ids(dataset):
    """The category id of each class index: the COCO file's own ids, else ``label + 1``."""
    if dataset.format == "coco":
        return [int(i) for i in dataset.category_ids]
    return list(range(1, dataset.num_classes + 1))


def detection_category_ids(detector, dataset):
    """int64 ``[detector classes]``: the category id (``evaluation_category_ids``) of each of the
    detector's class indices, matched by class name (``data.class_map.match_detector_classes``);
    -1 for a class the dataset lacks (its detections are not scored).

    A detector without ``class_names`` is matched by position (same class count required); an
    object with neither ``class_names`` nor ``num_classes`` gives the dataset's own indices.

    Raises:
        ValueError: a dataset class the detector lacks (listed), or class counts that differ
            for a detector without names.
    """
    category_ids = np.asarray(evaluation_category_ids(dataset), np.int64)
    to_dataset = match_detector_classes(detector, dataset).to_dataset
    if to_dataset is None:
        return category_ids
    return np.where(to_dataset >= 0, category_ids[np.maximum(to_dataset, 0)], -1)


def ground_truth(dataset, records=None):
    """The COCO ground truth of ``dataset`` (any layout), built in memory (see the module docstring).

    Args:
        dataset: a ``DetectionDataset``, best loaded with ``for_training=False``.
        records: the records to include (default all).

    Returns:
        a ``pycocotools.coco.COCO`` with ``images`` (the records' ids and sizes), ``annotations``
        (xywh pixel boxes; ``iscrowd`` 1 for ``ignore_boxes``) and ``categories``.
    """
    from pycocotools.coco import COCO

    category_ids = evaluation_category_ids(dataset)
    images, annotations = [], []
    for record in dataset.records if records is None else records:
        images.append({"id": record["image_id"], "height": record["height"], "width": record["width"],
                       "file_name": record["file_name"]})
        for prefix, crowd in (("", 0), ("ignore_", 1)):
            boxes = np.asarray(record[f"{prefix}boxes"], np.float64).reshape(-1, 4)
            areas = record.get(f"{prefix}areas")
            if areas is None:
                areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            for box, label, area in zip(boxes, record[f"{prefix}labels"], areas):
                annotations.append({
                    "id": len(annotations) + 1,
                    "image_id": record["image_id"],
                    "category_id": category_ids[int(label)],
                    "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])],
                    "area": float(area),
                    "iscrowd": crowd,
                })
    coco = COCO()
    coco.dataset = {
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n} for i, n in zip(category_ids, dataset.class_names)],
    }
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def run_detector(detector, dataset, max_images=None, progress=True):
    """Runs ``detector.detect`` on the images of a ``DetectionDataset`` and returns COCO results.

    Args:
        detector: any object with ``detect(image)`` taking a uint8 RGB ``[H, W, 3]`` array
            (original size; the detector does its own preprocessing) and returning a dict of
            arrays ``"boxes"`` ``[K, 4]`` of the original image in the detector's
            ``bounding_box_format`` (any ``keras.utils.bounding_boxes`` format, ``rel_*``
            relative to the original image; ``"xyxy"`` pixels if it has no such attribute),
            ``"confidence"`` ``[K]`` and ``"labels"`` ``[K]`` contiguous 0-based class indices
            (entries with label < 0, such as -1 padding, are ignored) of its ``class_names``,
            matched to the dataset's classes by name (``detection_category_ids``).
        dataset: a ``DetectionDataset`` (any layout), loaded with ``for_training=False`` so
            that images without annotations are evaluated too.
        max_images: only the first ``max_images`` records.
        progress: show a ``keras.utils.Progbar``.

    Returns:
        list of COCO result dicts ``{"image_id", "category_id", "bbox": [x, y, w, h], "score"}``
        (category ids of ``evaluation_category_ids``; detector labels matched to them by class name,
        ``detection_category_ids``: detections of classes the dataset lacks are dropped)
        (python floats / ints, JSON-ready). Images that cannot be read are skipped, logged with
        their id and file name, and put in ``dataset.unreadable``.
    """
    if dataset.for_training:
        logger.warning(
            "run_detector: %s was loaded with for_training=True, so images without boxes are not evaluated",
            dataset.annotation_file,
        )
    records = dataset.records if max_images is None else dataset.records[:max_images]
    category_ids = detection_category_ids(detector, dataset)  # by class name, before any image is read
    box_format = getattr(detector, "bounding_box_format", "xyxy")
    progbar = None
    if progress:
        import keras

        progbar = keras.utils.Progbar(len(records), unit_name="image")
    results = []
    for step, record in enumerate(records, 1):
        try:
            image = read_record_image(record)  # the one reader: EXIF orientation, the record's frame
        except ImageReadError as e:
            dataset.mark_unreadable(record, f"cannot be read or decoded ({e.reason})")
        else:
            output = detector.detect(image)
            output = {**output, "boxes": _to_xyxy_pixels(output["boxes"], box_format, image.shape)}
            results.extend(_to_coco_results(output, record["image_id"], category_ids))
        if progbar is not None:
            progbar.update(step)
    return results


def evaluate(detector, data, image_dir=None, output_json=None, max_images=None, progress=True, verbose=True,
             backend="auto", plots_dir=None, overwrite_plots=False, num_examples=NUM_EXAMPLES,
             iou_threshold=IOU_THRESHOLD, score_threshold=SCORE_THRESHOLD):
    """Runs ``detector`` on a split and scores it (``run_detector`` + ``evaluate_detections``).

    Args:
        detector: see ``run_detector``.
        data: a ``DetectionDataset`` of any layout (``data.formats.load_detection_dataset``
            with ``for_training=False``), or the path of a COCO annotation file.
        image_dir: the COCO file's image folder (paths only).
        output_json, max_images, progress, verbose, backend: see ``run_detector`` /
            ``evaluate_detections``.
        plots_dir: if given, ``pr_curves.png``, ``confusion_matrix.png`` and ``examples/``
            (the ``num_examples`` worst and best images) are written there
            (``plots.write_evaluation_plots``); existing ones are replaced only with
            ``overwrite_plots``.
        iou_threshold, score_threshold: the operating point of the confusion matrix and the examples.

    The score covers the images that were run: all readable images of the split, or the first
    ``max_images`` of them. Unreadable images are reported and left out of the score.

    Returns:
        The dict of ``evaluate_detections`` plus ``num_images`` (images scored) and, with
        ``plots_dir``, ``plots`` (what ``write_evaluation_plots`` returns).

    Raises:
        ValueError: the split has no image.
    """
    if isinstance(data, (str, os.PathLike)):
        dataset = load_coco(data, image_dir if image_dir is not None else os.path.dirname(os.path.abspath(data)),
                            for_training=False, verbose=False)
    else:
        dataset = data
    if not dataset.records:
        raise ValueError(f"{dataset.annotation_file}: no image to evaluate")
    records = dataset.records if max_images is None else dataset.records[:max_images]
    if plots_dir is not None:
        from gflv2_keras.evaluation.plots import check_plot_paths

        check_plot_paths(plots_dir, overwrite_plots)  # before the detector runs
    detections = run_detector(detector, dataset, max_images=max_images, progress=progress)
    image_ids = [r["image_id"] for r in records if r["image_id"] not in dataset.unreadable]
    if dataset.unreadable:
        logger.warning("evaluate: %d unreadable images left out of the score", len(dataset.unreadable))
    evaluation = score_detections(ground_truth(dataset, records), detections, output_json=output_json,
                                  image_ids=image_ids, verbose=verbose, backend=backend, iou_threshold=iou_threshold,
                                  score_threshold=score_threshold)
    results = evaluation.results
    results["num_images"] = len(image_ids)
    if plots_dir is not None:
        from gflv2_keras.evaluation.plots import write_evaluation_plots

        files = {r["image_id"]: r["file_name"] for r in records if r["image_id"] not in dataset.unreadable}
        results["plots"] = write_evaluation_plots(plots_dir, evaluation.precision, evaluation.errors, files,
                                                  num_examples=num_examples, overwrite=overwrite_plots)
    return results


def _to_xyxy_pixels(boxes, box_format, image_shape):
    """Boxes of ``detect`` in ``box_format`` → xyxy pixels of an ``image_shape`` image (NumPy)."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    if box_format == "xyxy":
        return boxes
    import keras

    height, width = int(image_shape[0]), int(image_shape[1])
    converted = keras.utils.bounding_boxes.convert_format(boxes, box_format, "xyxy", height=height, width=width)
    return keras.ops.convert_to_numpy(converted)


def _to_coco_results(output, image_id, category_ids):
    boxes = np.asarray(output["boxes"], np.float64).reshape(-1, 4)
    scores = np.asarray(output["confidence"], np.float64).reshape(-1)
    labels = np.asarray(output["labels"]).reshape(-1).astype(np.int64)
    if not len(boxes) == len(scores) == len(labels):
        raise ValueError(
            f"image id {image_id}: detector returned {len(boxes)} boxes, {len(scores)} confidences "
            f"and {len(labels)} labels"
        )
    keep = labels >= 0
    if np.any(labels[keep] >= len(category_ids)):
        raise ValueError(
            f"image id {image_id}: detector returned label {labels.max()} of "
            f"{len(category_ids)} categories (labels must be contiguous 0-based indices)"
        )
    keep[keep] = category_ids[labels[keep]] >= 0  # classes the dataset lacks are not scored
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
    return [
        {"image_id": image_id, "category_id": int(category_ids[c]), "bbox": [float(v) for v in box], "score": float(s)}
        for box, s, c in zip(xywh, scores, labels)
    ]


def _check_ground_truth(coco_gt, source):
    for ann in coco_gt.dataset.get("annotations", []):
        if "area" not in ann:
            raise ValueError(f"{source}: annotation id {ann.get('id')} has no 'area' field, which COCOeval needs")


def _check_detections(coco_gt, detections, source):
    image_ids, category_ids = set(coco_gt.getImgIds()), set(coco_gt.getCatIds())
    for det in detections:
        if det.get("image_id") not in image_ids:
            raise ValueError(f"detection {det}: 'image_id' is not an image of {source}")
        if det.get("category_id") not in category_ids:
            raise ValueError(
                f"detection {det}: 'category_id' is not a category of {source} "
                f"(contiguous class indices must be mapped to category ids)"
            )
