"""COCO-format annotation files read into plain per-image records.

Box convention: records hold ``boxes`` as float32 ``[K, 4]`` ``(x1, y1, x2, y2)`` in absolute
pixels of the original image, no "+1" (COCO ``[x, y, w, h]`` becomes ``[x, y, x + w, y + h]``),
as in MMDetection v2 and ``gflv2_keras.ops.boxes``. Category ids may be any integers (sparse,
unordered); class indices are contiguous ``0..C-1``: index ``i`` is the file's
``category_ids[i]`` (category ids sorted ascending), as mmdet's ``cat2label``. The records and
the dataset are those of every reader (``gflv2_keras.data.records``).

Filtering follows the official loader (``CocoDataset._parse_ann_info`` / ``_filter_imgs`` of
mmdet v2.6, ``mmdet/datasets/coco.py CocoDataset._parse_ann_info``):
* ``iscrowd`` (and ``ignore``) annotations are not trained on: they become the record's
  ``ignore_boxes`` / ``ignore_labels`` (the evaluator's ``iscrowd`` regions);
* degenerate annotations are dropped: ``area <= 0``, ``w < 1``, ``h < 1`` or no intersection
  with the image;
* for training, images with no remaining box and images with a side under 32 px are dropped;
* for training and evaluation, images the keep-ratio resize would shrink to nothing are dropped
  and named (``records.filter_records``).

Problems that mmdet would pass over silently or crash on are reported in ``.problems`` (one
human-readable string each, naming the image id / annotation id and field) and skipped:
a degenerate box (``area <= 0``, width or height under 1 px, no area inside the image; named
with its image id, file, annotation id and ``bbox``, as are crowd regions with no area inside
the image), an annotation box reaching more than 1 px beyond its image, an unknown category
id, an annotation whose image id does not exist, non-finite coordinates, malformed entries.
Annotation ids used more than once are one line for the file (ids listed, the first
``records.SHOWN_IDS``; the annotations are all kept: ids are not used for training or
scoring). A missing top-level ``images`` / ``annotations`` / ``categories`` field, a file that
is not JSON or is nested too deeply to parse raises ``ValueError`` naming the file.

Image frame: ``height`` / ``width`` are the file's. Images are read in the displayed frame (EXIF
orientation applied), except where the file's size is that of the stored frame of an image
whose orientation swaps width and height (a tool that ignored EXIF): that image is read in the
stored frame, as its boxes are, and ``check_image_files`` names it (``data.image_io``).

Deliberate differences from mmdet v2.6: it keeps boxes that reach outside the image (the
resize step clips them) where this loader reports and drops those beyond the 1 px tolerance;
and its ``filter_empty_gt`` keeps images whose annotations are all crowd or degenerate
(it tests for any annotation), which this loader drops for training ("no remaining box").

COCO records also hold the file's ``area`` of each box (``areas`` float64 ``[K]``,
``ignore_areas`` ``[J]``), which COCOeval's small / medium / large ranges use.
"""

import json
import logging
import math
import os
import sys

import numpy as np

from gflv2_keras.data.image_io import (
    ImageReadError,
    describe_orientation,
    frame_orientation,
    read_header,
    read_record_image,
)
from gflv2_keras.data.records import (
    DEGENERATE,
    MALFORMED,
    MIN_TRAIN_IMAGE_SIZE,
    NO_BOXES,
    OUT_OF_IMAGE,
    UNDER_MIN_SIZE,
    UNKNOWN_CLASS,
    UNRESIZABLE,
    DetectionDataset,
    Report,
    checked_box,
    filter_records,
    finish,
    first_ids,
    make_record,
)

logger = logging.getLogger(__name__)

REQUIRED_FIELDS = ("images", "annotations", "categories")
CROWD = "crowd/ignore boxes"
UNKNOWN_IMAGE = "boxes of unknown images"

# The dataset type every reader returns (``records.DetectionDataset``); the old name stays.
CocoDataset = DetectionDataset


def load_coco(annotation_file, image_dir, for_training=True, min_size=MIN_TRAIN_IMAGE_SIZE, verbose=True, scale=None):
    """Reads a COCO-format detection annotation file.

    Args:
        annotation_file: path of the JSON file (``images``, ``annotations``, ``categories``).
        image_dir: folder that the images' ``file_name`` entries are relative to.
        for_training: apply the training filters (drop images without boxes and images whose
            shorter side is under ``min_size``). Use ``False`` for evaluation, which must see
            every image of the file.
        min_size: see ``for_training``.
        verbose: print the one-line summary (it is also logged at INFO level).
        scale: ``(long_max, short_max)`` of the keep-ratio resize the images will go through
            (``None``: ``(1333, 800)``); images it would shrink to nothing are left out, named.

    Returns:
        A ``CocoDataset``.

    Raises:
        ValueError: the file is not JSON (or nested too deeply to parse), or lacks one of the
            top-level fields.
    """
    annotation_file = os.path.abspath(annotation_file)
    image_dir = os.path.abspath(image_dir)
    content = _read_json(annotation_file)
    report = Report(
        (CROWD, DEGENERATE, OUT_OF_IMAGE, UNKNOWN_CLASS, UNKNOWN_IMAGE, MALFORMED, NO_BOXES, UNDER_MIN_SIZE,
         UNRESIZABLE)
    )
    category_ids, class_names = _parse_categories(content["categories"], report)
    label_of = {cat_id: i for i, cat_id in enumerate(category_ids)}
    images = _parse_images(content["images"], image_dir, report)

    # image id -> {"kept" | "crowd": ([boxes], [labels], [areas])}
    per_image = {image_id: {"kept": ([], [], []), "crowd": ([], [], [])} for image_id in images}
    _report_duplicate_ids(content["annotations"], report)
    for index, ann in enumerate(content["annotations"]):
        parsed = _parse_annotation(ann, index, images, label_of, report)
        if parsed is not None:
            image_id, box, label, area, kind = parsed
            for column, value in zip(per_image[image_id][kind], (box, label, area)):
                column.append(value)

    records = [
        make_record(
            **info,
            boxes=per_image[i]["kept"][0],
            labels=per_image[i]["kept"][1],
            ignore_boxes=per_image[i]["crowd"][0],
            ignore_labels=per_image[i]["crowd"][1],
            areas=np.asarray(per_image[i]["kept"][2], np.float64),
            ignore_areas=np.asarray(per_image[i]["crowd"][2], np.float64),
        )
        for i, info in images.items()
    ]
    dataset = CocoDataset(
        annotation_file=annotation_file,
        image_dir=image_dir,
        records=filter_records(records, for_training, min_size, report, scale),
        category_ids=category_ids,
        class_names=class_names,
        problems=report.problems,
        skipped=report.skipped,
        for_training=for_training,
    )
    return finish(dataset, verbose)


def check_image_files(dataset, mode="header"):
    """Finds missing or corrupt image files before a long run reaches them.

    Modes:
        ``"header"`` (cheap, default): the file exists, is not empty, starts with a JPEG / PNG /
            GIF / BMP signature, is not truncated (JPEG end-of-image marker, PNG ``IEND`` chunk,
            BMP declared size), and the reader can read its header (``image_io.read_header``:
            size, EXIF orientation, the pixel limit). Added to ``problems`` (not skipped): an
            image whose annotation size is its stored frame while EXIF turns it (read in the
            stored frame, ``image_io.frame_orientation``), and a size different from the
            annotation's ``height``/``width`` in the frame it is read in.
        ``"decode"``: also decodes every image with the reader the pipeline and evaluation use
            (``image_io.read_record_image``), so nothing can fail later; costs one full decode
            per image.

    Unreadable images are put in ``dataset.unreadable`` (and logged with id and file name).
    Results are cached per mode on the dataset.

    Returns:
        The usable records (``dataset.usable_records()``).
    """
    if mode not in ("header", "decode"):
        raise ValueError(f"check_image_files: mode must be 'header' or 'decode', got {mode!r}")
    if mode in dataset.checked_modes:
        return dataset.usable_records()
    for record in dataset.records:
        if record["image_id"] in dataset.unreadable:
            continue
        reason = _check_file_header(record, dataset.problems)
        if reason is None and mode == "decode":
            reason = _check_file_decodes(record)
        if reason is not None:
            dataset.mark_unreadable(record, reason)
    # A decode check includes the header check.
    dataset.checked_modes.update(("header", "decode") if mode == "decode" else ("header",))
    return dataset.usable_records()


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"annotation file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"annotation file {path} is not valid JSON: {e}") from None
    except RecursionError:
        raise ValueError(
            f"annotation file {path}: JSON nested too deeply to parse (more than about "
            f"{sys.getrecursionlimit()} levels; a COCO file needs 4)"
        ) from None
    if not isinstance(content, dict):
        raise ValueError(f"annotation file {path}: expected a JSON object at the top level")
    for field in REQUIRED_FIELDS:
        if field not in content:
            raise ValueError(f"annotation file {path} has no '{field}' field (a COCO file needs {REQUIRED_FIELDS})")
        if not isinstance(content[field], list):
            raise ValueError(f"annotation file {path}: field '{field}' must be a list")
    return content


def _parse_categories(categories, report):
    names = {}
    for index, cat in enumerate(categories):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int):
            report.skip(MALFORMED, f"categories[{index}]: missing or non-integer 'id', skipped")
        elif cat["id"] in names:
            report.skip(MALFORMED, f"category id {cat['id']}: duplicate entry categories[{index}], skipped")
        else:
            names[cat["id"]] = str(cat.get("name", cat["id"]))
    category_ids = sorted(names)
    return category_ids, [names[i] for i in category_ids]


def _parse_images(images, image_dir, report):
    parsed = {}
    for index, img in enumerate(images):
        where = f"images[{index}]" + (f" (image id {img.get('id')})" if isinstance(img, dict) else "")
        missing = [k for k in ("id", "file_name", "height", "width") if not isinstance(img, dict) or k not in img]
        if missing:
            report.skip(MALFORMED, f"{where}: missing field '{missing[0]}', image skipped")
            continue
        if img["id"] in parsed:
            report.skip(MALFORMED, f"image id {img['id']}: duplicate entry images[{index}], skipped")
            continue
        try:
            height, width = int(img["height"]), int(img["width"])
        except (TypeError, ValueError):
            height = width = 0
        if height <= 0 or width <= 0:
            report.skip(
                MALFORMED,
                f"image id {img['id']}: invalid 'height'/'width' {img['height']!r}x{img['width']!r}, skipped",
            )
            continue
        parsed[img["id"]] = {
            "image_id": img["id"],
            "file_name": os.path.join(image_dir, img["file_name"]),
            "height": height,
            "width": width,
        }
    return parsed


def _parse_annotation(ann, index, images, label_of, report):
    """Returns ``(image_id, xyxy box, label, area, "kept" | "crowd")`` or ``None`` when dropped."""
    if not isinstance(ann, dict):
        report.skip(MALFORMED, f"annotations[{index}]: not an object, skipped")
        return None
    ann_id = ann.get("id", f"#{index}")
    for field in ("image_id", "category_id", "bbox"):
        if field not in ann:
            report.skip(MALFORMED, f"annotation id {ann_id}: missing field '{field}', skipped")
            return None
    image_id = ann["image_id"]
    bbox = ann["bbox"]
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
        report.skip(
            MALFORMED, f"annotation id {ann_id} (image id {image_id}): field 'bbox' is not 4 numbers: {bbox!r}, skipped"
        )
        return None
    if image_id not in images:
        report.skip(UNKNOWN_IMAGE, f"annotation id {ann_id}: field 'image_id' {image_id!r} is not in 'images', skipped")
        return None
    if ann["category_id"] not in label_of:
        report.skip(
            UNKNOWN_CLASS,
            f"annotation id {ann_id} (image id {image_id}): field 'category_id' {ann['category_id']!r} "
            f"is not in 'categories', skipped",
        )
        return None
    x, y, w, h = (float(v) for v in bbox)
    area = ann.get("area", w * h)
    if not isinstance(area, (int, float)):
        area = w * h
    image = images[image_id]
    where = f"annotation id {ann_id} (image id {image_id}) on {image['file_name']}: field 'bbox' {list(bbox)}"
    if ann.get("iscrowd", False) or ann.get("ignore", False):
        report.skip(CROWD)  # not trained on; kept as an ignore region for evaluation (COCOeval iscrowd)
        box = [min(max(x, 0.0), image["width"]), min(max(y, 0.0), image["height"])]
        box += [min(max(x + w, 0.0), image["width"]), min(max(y + h, 0.0), image["height"])]
        if box[2] <= box[0] or box[3] <= box[1] or not all(map(math.isfinite, box)):
            report.note(f"{where}: crowd/ignore region with no area inside the {image['width']}x{image['height']} "
                        "image, skipped")
            return None
        return image_id, box, label_of[ann["category_id"]], float(area), "crowd"
    if area <= 0:
        report.skip(DEGENERATE, f"{where}: field 'area' {area!r} is not positive, skipped")
        return None
    box = checked_box((x, y, x + w, y + h), image["width"], image["height"], where, report)
    return None if box is None else (image_id, box, label_of[ann["category_id"]], float(area), "kept")


def _report_duplicate_ids(annotations, report):
    """One problem line listing the annotation ids used by more than one entry (entries kept)."""
    counts = {}
    for ann in annotations:
        if isinstance(ann, dict) and "id" in ann:
            key = ann["id"] if isinstance(ann["id"], (int, str)) else repr(ann["id"])
            counts[key] = counts.get(key, 0) + 1
    repeated = {i: n for i, n in counts.items() if n > 1}
    if repeated:
        listed = first_ids(f"{i} ({n}x)" for i, n in repeated.items())
        report.note(
            f"annotation ids used more than once: {len(repeated)} ids, {sum(repeated.values())} entries: {listed} "
            "(all kept; ids are not used for training or scoring)"
        )


_SIGNATURES = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
)
_TAIL_BYTES = 4096


def _check_file_header(record, problems):
    """Cheap checks of one image file; returns the reason it is unusable, or ``None``."""
    path = record["file_name"]
    try:
        size = os.path.getsize(path)
    except OSError:
        return "file is missing"
    if size == 0:
        return "file is empty"
    try:
        with open(path, "rb") as f:
            head = f.read(32)
            f.seek(max(0, size - _TAIL_BYTES))
            tail = f.read()
    except OSError as e:
        return f"file cannot be read ({e})"
    kind = next((name for magic, name in _SIGNATURES if head.startswith(magic)), None)
    if kind is None:
        return "not a JPEG, PNG, GIF or BMP file"
    # Entropy-coded JPEG data escapes 0xFF, so an end-of-image marker near the end means the file
    # is complete (some writers append a few bytes after it).
    if kind == "JPEG" and b"\xff\xd9" not in tail:
        return "truncated JPEG (no end-of-image marker)"
    if kind == "PNG" and b"IEND" not in tail[-64:]:
        return "truncated PNG (no IEND chunk)"
    if kind == "BMP" and len(head) >= 6 and int.from_bytes(head[2:6], "little") > size:
        return "truncated BMP (file shorter than its header says)"

    try:
        header = read_header(path)
    except ImageReadError as e:
        return f"unreadable image header ({e.reason})"
    where = f"image id {record['image_id']} ({path})"
    annotated = (record["height"], record["width"])
    if frame_orientation(header, annotated) != header.orientation:
        problems.append(
            f"{where}: {describe_orientation(header.orientation)} but the annotation's 'width' {record['width']}, "
            f"'height' {record['height']} are those of the stored frame (a tool that ignored EXIF): read in the "
            "stored frame, as the annotation file"
        )
        width, height = header.stored_size
    else:
        width, height = header.displayed_size
    if (height, width) != annotated:
        shown = f" as shown ({describe_orientation(header.orientation)})" if header.orientation != 1 else ""
        problems.append(
            f"{where}: file is {width}x{height}{shown} but the annotation "
            f"says 'width' {record['width']}, 'height' {record['height']}; boxes are scaled by the file's size"
        )
    return None


def _check_file_decodes(record):
    try:
        read_record_image(record)
    except ImageReadError as e:
        return f"cannot be decoded ({e.reason[:200]})"
    return None
