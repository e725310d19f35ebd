"""Per-image detection records, the dataset that holds them, and the checks every reader shares.

The COCO (``coco.py``), Pascal VOC (``voc.py``) and YOLO (``yolo.py``) readers all produce a
``DetectionDataset`` of records built by ``make_record``, so the tf.data pipeline, the trainer
and the evaluator read every format the same way.

Record (one dict per image):
    ``image_id``   int, unique in the dataset (COCO: the file's id; VOC / YOLO: 1-based
                   position of the image in the split listing).
    ``file_name``  absolute path of the image file.
    ``height``, ``width``  ints, the image size the boxes refer to: the displayed frame (EXIF
                   orientation applied) unless the annotation file gives the stored frame's
                   size (``data.image_io.frame_orientation``); the image is read in that frame.
    ``boxes``      float32 ``[K, 4]`` ``(x1, y1, x2, y2)`` absolute pixel edges of the original
                   image, no "+1" (a box covering pixel columns 0..9 is ``x1 = 0, x2 = 10``),
                   clipped to the image; as MMDetection v2 and ``gflv2_keras.ops.boxes``.
    ``labels``     int32 ``[K]`` contiguous class indices ``0..C-1`` into ``class_names``.
    ``ignore_boxes``  float32 ``[J, 4]``, same convention: objects that must not be trained on
                   and must not count as misses in evaluation (VOC ``difficult``, COCO
                   ``iscrowd``). Empty for YOLO.
    ``ignore_labels`` int32 ``[J]``.
    plus reader-specific extras (VOC / YOLO: ``name``, the file stem; COCO: ``areas`` and
    ``ignore_areas``, the file's ``area`` of each box).

Problems with single entries never stop loading: each is appended to ``problems`` (one line
naming the file / line / object / id and field) and counted in ``skipped`` by reason. Images the
keep-ratio resize would shrink to nothing (``image_io.resize_problem`` at the reader's ``scale``)
are left out, for training and evaluation alike, and named. What training drops later is named
the same way: boxes past ``max_boxes`` (``report_boxes_over``); a split with no readable image
file is one ``ValueError`` (``require_readable_images``).
"""

import dataclasses
import logging
import math
import os

import numpy as np

from gflv2_keras.data.image_io import ImageReadError, read_header, resize_problem

logger = logging.getLogger(__name__)

# Boxes may overshoot the image by this much (rounding in real annotation files) before they
# are reported; what survives is clipped to the image.
OUT_OF_IMAGE_TOLERANCE = 1.0
# The official training filter (mmdet ``CustomDataset._filter_imgs(min_size=32)``).
MIN_TRAIN_IMAGE_SIZE = 32
_EPS = 1e-6

# Reasons shared by the readers (``skipped`` keys); readers add their own.
MALFORMED = "malformed entries"
DEGENERATE = "degenerate boxes"
OUT_OF_IMAGE = "out-of-image boxes"
UNKNOWN_CLASS = "boxes with unknown category"
NO_BOXES = "images without boxes"
UNDER_MIN_SIZE = "images under min size"
UNRESIZABLE = "images too thin to resize"
OVER_MAX_BOXES = "boxes over max_boxes"
# Ids listed in one problem line (duplicate ids, images over max_boxes in a log line).
SHOWN_IDS = 20


@dataclasses.dataclass
class DetectionDataset:
    """A detection dataset as plain records (see the module docstring for the record layout).

    Attributes:
        annotation_file: absolute path of what describes the split: the COCO JSON, the VOC
            ``ImageSets/Main/{split}.txt`` or the YOLO ``data.yaml``.
        image_dir: absolute path of the images folder (COCO: the folder ``file_name`` entries
            are relative to; VOC: ``JPEGImages``; YOLO: the split's images folder).
        records: list of record dicts, one per kept image, in listing order.
        category_ids: the id of each class in the source: COCO category ids sorted ascending
            (class index ``i`` is ``category_ids[i]``, as mmdet's ``cat2label``); YOLO the
            ``names`` keys; VOC ``0..C-1``.
        class_names: name of each class, in the same order.
        problems: human-readable strings, one per skipped or suspicious entry.
        skipped: counts of what was dropped, by reason.
        for_training: whether the training filters were applied.
        unreadable: ``{image_id: reason}`` for image files found missing or corrupt (filled by
            ``check_image_files``, the tf.data pipeline and the evaluator).
        format: ``"coco"``, ``"voc"`` or ``"yolo"``.
        split: the split name for VOC / YOLO, ``None`` for COCO (the JSON is the split).
    """

    annotation_file: str
    image_dir: str
    records: list
    category_ids: list
    class_names: list
    problems: list = dataclasses.field(default_factory=list)
    skipped: dict = dataclasses.field(default_factory=dict)
    for_training: bool = True
    unreadable: dict = dataclasses.field(default_factory=dict)
    format: str = "coco"
    split: str = None
    checked_modes: set = dataclasses.field(default_factory=set, repr=False)
    # The ``max_boxes`` values ``report_boxes_over`` has already reported.
    reported_box_caps: set = dataclasses.field(default_factory=set, repr=False)

    @property
    def num_classes(self):
        return len(self.category_ids)

    def __len__(self):
        return len(self.records)

    def usable_records(self):
        """Records whose image file has not been found unreadable."""
        return [r for r in self.records if r["image_id"] not in self.unreadable]

    def mark_unreadable(self, record, reason):
        """Records an unreadable image file (once per image) and logs it with its id."""
        if record["image_id"] in self.unreadable:
            return
        self.unreadable[record["image_id"]] = reason
        logger.warning("skipping image id %s (%s): %s", record["image_id"], record["file_name"], reason)

    def problem_lines(self):
        """Every problem found so far, one line each: the reader's (entries skipped or suspicious,
        naming file, line or object) and one per unreadable image file (``check_image_files``)."""
        files = {r["image_id"]: r["file_name"] for r in self.records}
        return list(self.problems) + [
            f"image id {i} ({files.get(i)}): {reason}, left out" for i, reason in self.unreadable.items()
        ]

    def summary(self):
        """One line: what was kept and what was skipped."""
        num_boxes = sum(len(r["labels"]) for r in self.records)
        skipped = ", ".join(f"{n} {reason}" for reason, n in self.skipped.items() if n) or "nothing"
        source = os.path.basename(self.annotation_file) + (f" [{self.split}]" if self.split else "")
        line = (
            f"{source}: {len(self.records)} images, {num_boxes} boxes, "
            f"{self.num_classes} classes; skipped {skipped}"
        )
        if self.problems:
            line += f"; {len(self.problems)} problems, first: {self.problems[0]}"
        return line


class Report:
    """Collects per-entry problems and skip counts while a reader runs.

    ``problems`` and ``skipped`` become the dataset's fields of the same names.
    """

    def __init__(self, reasons=()):
        self.problems = []
        self.skipped = dict.fromkeys(reasons, 0)

    def skip(self, reason, message=None):
        """Counts one dropped entry under ``reason``; ``message`` (if any) is a reported problem."""
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if message:
            self.problems.append(message)

    def note(self, message):
        """A problem that drops nothing."""
        self.problems.append(message)


def make_record(image_id, file_name, height, width, boxes, labels, ignore_boxes=(), ignore_labels=(), **extra):
    """The one place records are built (see the module docstring for the fields)."""
    record = {
        "image_id": image_id,
        "file_name": file_name,
        "height": int(height),
        "width": int(width),
        "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
        "labels": np.asarray(labels, np.int32).reshape(-1),
        "ignore_boxes": np.asarray(ignore_boxes, np.float32).reshape(-1, 4),
        "ignore_labels": np.asarray(ignore_labels, np.int32).reshape(-1),
        **extra,
    }
    return record


def first_ids(ids, limit=SHOWN_IDS):
    """``"1, 2, 3"``: the first ``limit`` of ``ids`` (any iterable), ``", ..."`` when there are more."""
    ids = list(ids)
    return ", ".join(map(str, ids[:limit])) + (", ..." if len(ids) > limit else "")


def require_readable_images(dataset, purpose="training"):
    """The usable records of ``dataset``; ``ValueError`` in one line when none is left.

    Call after ``coco.check_image_files`` (or anything else that fills ``dataset.unreadable``).
    The line says how many image files were found missing or unreadable, the first one's image
    id, file and reason, and the image folder (a wrong folder is the usual cause).

    Args:
        purpose: what the images are for, in the message (``"training"``, ``"validation"``,
            ``"evaluation"``).
    """
    usable = dataset.usable_records()
    if usable:
        return usable
    if not dataset.records:
        raise ValueError(f"{dataset.annotation_file}: no {purpose} image")
    files = {r["image_id"]: r["file_name"] for r in dataset.records}
    first = next(iter(dataset.unreadable.items()), None)
    raise ValueError(
        f"{dataset.annotation_file}: no readable {purpose} image ({len(dataset.unreadable)} of "
        f"{len(dataset.records)} image files missing or unreadable"
        + (f", first: image id {first[0]} ({files.get(first[0])}): {first[1]}" if first else "")
        + f"; image folder {dataset.image_dir})"
    )


def largest_box_count(records):
    """The most boxes (``labels``) of one record, 0 for none."""
    return max((len(r["labels"]) for r in records), default=0)


def report_boxes_over(dataset, max_boxes, records=None, why=""):
    """Names the images with more than ``max_boxes`` boxes, whose extra boxes training drops.

    The input pipeline pads every image's boxes to exactly ``max_boxes`` and keeps the first
    ``max_boxes`` of a record (annotation order). Each image over it becomes one line of
    ``dataset.problems`` (image id, file, its count, how many are dropped) and the dropped boxes
    are counted in ``dataset.skipped[OVER_MAX_BOXES]``; a warning names the first ids. Done once
    per ``max_boxes`` value (the pipeline calls this every time it builds a stream).

    Args:
        records: the records that will be read (default ``dataset.records``).
        why: appended to ``max_boxes is N`` in each line (e.g. where the cap comes from).

    Returns:
        ``{image_id: dropped boxes}`` of the images over ``max_boxes`` (also on a repeated call).
    """
    records = dataset.records if records is None else records
    over = {r["image_id"]: len(r["labels"]) - max_boxes for r in records if len(r["labels"]) > max_boxes}
    if not over or max_boxes in dataset.reported_box_caps:
        return over
    dataset.reported_box_caps.add(max_boxes)
    for r in records:
        if r["image_id"] in over:
            dataset.problems.append(
                f"image id {r['image_id']} ({r['file_name']}): {len(r['labels'])} boxes but max_boxes is "
                f"{max_boxes}{why}: the last {over[r['image_id']]} (annotation order) are not trained on"
            )
    dataset.skipped[OVER_MAX_BOXES] = dataset.skipped.get(OVER_MAX_BOXES, 0) + sum(over.values())
    logger.warning(
        "%s: %d images have more than max_boxes=%d boxes, %d boxes are dropped (ids %s)",
        dataset.annotation_file, len(over), max_boxes, sum(over.values()), first_ids(over),
    )
    return over


def all_finite(values, where, report):
    """``True`` when every value is finite; otherwise reports ``where`` and returns ``False``."""
    if all(math.isfinite(v) for v in values):
        return True
    report.skip(MALFORMED, f"{where}: non-finite coordinate, skipped")
    return False


def checked_box(box, width, height, where, report, report_degenerate=True):
    """Validates one ``(x1, y1, x2, y2)`` pixel-edge box against its ``width`` x ``height`` image.

    Dropped (and counted): non-finite coordinates (reported); width or height under 1 px
    (``DEGENERATE``); a box reaching more than ``OUT_OF_IMAGE_TOLERANCE`` px beyond the image
    (reported); a box just past an edge within the tolerance (no overlap, ``DEGENERATE``).
    ``DEGENERATE`` boxes are reported (named by ``where``, with their size) unless
    ``report_degenerate`` is False: then they are only counted.

    Args:
        where: the start of a problem line naming the file / line / object and field.

    Returns:
        The box clipped to the image as a list of 4 floats, or ``None`` when dropped.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    if not all_finite((x1, y1, x2, y2), where, report):
        return None
    # The epsilon keeps 1 px boxes whose corners went through float rounding (x + w - x < w).
    if x2 - x1 < 1 - _EPS or y2 - y1 < 1 - _EPS:
        report.skip(
            DEGENERATE,
            f"{where}: zero or sub-pixel size ({x2 - x1:g} x {y2 - y1:g} px), skipped" if report_degenerate else None,
        )
        return None
    tol = OUT_OF_IMAGE_TOLERANCE
    if x1 < -tol or y1 < -tol or x2 > width + tol or y2 > height + tol:
        report.skip(
            OUT_OF_IMAGE, f"{where} reaches outside the {width}x{height} image by more than {tol:g} px, skipped"
        )
        return None
    if min(x2, width) - max(x1, 0.0) <= 0 or min(y2, height) - max(y1, 0.0) <= 0:
        report.skip(
            DEGENERATE,
            f"{where}: no area inside the {width}x{height} image (past an edge within the {tol:g} px "
            "tolerance), skipped" if report_degenerate else None,
        )
        return None
    return [min(max(x1, 0.0), width), min(max(y1, 0.0), height), min(x2, width), min(y2, height)]


def filter_records(records, for_training, min_size, report, scale=None):
    """The records a reader keeps.

    Every mode drops (and names) images whose keep-ratio resize at ``scale`` (``None``: the
    official ``(1333, 800)``) would leave a side under 1 px (``image_io.resize_problem``: nothing
    to run the network on). For training, the official filters follow (mmdet
    ``CustomDataset._filter_imgs``): images without boxes and images whose shorter side is under
    ``min_size`` are dropped (counted).
    """
    kept = []
    for record in records:
        if _left_out_as_unresizable(record, scale, report):
            continue
        if for_training and not len(record["labels"]):
            report.skip(NO_BOXES)
        elif for_training and min(record["height"], record["width"]) < min_size:
            report.skip(UNDER_MIN_SIZE)
        else:
            kept.append(record)
    return kept


def leave_out_unresizable(dataset, scale):
    """Drops (and names in ``dataset.problems``) the records ``filter_records`` would drop at ``scale``.

    For a caller that learns the scale after loading (the preset's ``input_scale`` in
    evaluation; a recipe's ``scale`` in training). Returns ``dataset``.
    """
    report = Report()
    dataset.records = [r for r in dataset.records if not _left_out_as_unresizable(r, scale, report)]
    dataset.problems.extend(report.problems)
    for reason, count in report.skipped.items():
        dataset.skipped[reason] = dataset.skipped.get(reason, 0) + count
    return dataset


def _left_out_as_unresizable(record, scale, report):
    """Whether the record's image is too thin for the resize at ``scale`` (then reported, by id and file)."""
    problem = resize_problem(record["height"], record["width"], scale)
    if problem:
        report.skip(UNRESIZABLE, f"image id {record['image_id']} ({record['file_name']}): {problem}, left out")
    return problem is not None


def finish(dataset, verbose):
    """Logs (and with ``verbose`` prints) the dataset's one-line summary; returns the dataset."""
    logger.info(dataset.summary())
    if verbose:
        print(dataset.summary())
    return dataset


def require_training_images(dataset):
    """Raises ``ValueError`` when a training split kept no usable image."""
    if dataset.for_training and not dataset.records:
        first = f"; first problem: {dataset.problems[0]}" if dataset.problems else ""
        raise ValueError(
            f"{dataset.annotation_file}: no usable training image (need at least one image with a "
            f"valid box){first}"
        )
    return dataset


def image_size(path):
    """``(width, height)`` of the image file's displayed frame (EXIF orientation applied), from its header.

    Raises:
        OSError: the file is missing, not a readable image or over the pixel limit.
    """
    try:
        return read_header(path).displayed_size
    except ImageReadError as e:
        raise OSError(e.reason) from None
