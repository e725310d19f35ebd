"""COCO-format annotation files read into plain per-image records.

Box convention: records hold ``boxes`` as float32 ``[K, 4]`` ``(x1, y1, x2, y2)`` in absolute
pixels of the original image, no "+1" (COCO ``[x, y, w, h]`` becomes ``[x, y, x + w, y + h]``),
as in MMDetection v2 and ``gflv2_keras.ops.boxes``. Class indices are contiguous ``0..C-1``:
index ``i`` is the file's ``category_ids[i]`` (category ids sorted ascending), as mmdet's
``cat2label``.

Filtering follows the official loader (``CocoDataset._parse_ann_info`` / ``_filter_imgs`` of
mmdet v2.6, ``mmdet/datasets/coco.py CocoDataset._parse_ann_info``):
* ``iscrowd`` (and ``ignore``) annotations are dropped;
* degenerate annotations are dropped: ``area <= 0``, ``w < 1``, ``h < 1`` or no intersection
  with the image;
* for training, images with no remaining box and images with a side under 32 px are dropped.

Problems that mmdet would pass over silently or crash on are reported in ``.problems`` (one
human-readable string each, naming the image id / annotation id and field) and skipped:
an annotation box reaching more than 1 px beyond its image, an unknown category id, an
annotation whose image id does not exist, malformed entries. A missing top-level
``images`` / ``annotations`` / ``categories`` field raises ``ValueError`` naming the file.

Deliberate differences from mmdet v2.6: it keeps boxes that reach outside the image (the
resize step clips them) where this loader reports and drops those beyond the 1 px tolerance;
and its ``filter_empty_gt`` keeps images whose annotations are all crowd or degenerate
(it tests for any annotation), which this loader drops for training ("no remaining box").
"""

import dataclasses
import json
import logging
import os

import numpy as np

logger = logging.getLogger(__name__)

REQUIRED_FIELDS = ("images", "annotations", "categories")
# Boxes may overshoot the image by this much (rounding in real annotation files) before they
# are reported; what survives is clipped to the image.
OUT_OF_IMAGE_TOLERANCE = 1.0
# The official training filter (`_filter_imgs(min_size=32)`).
MIN_TRAIN_IMAGE_SIZE = 32


@dataclasses.dataclass
class CocoDataset:
    """A COCO annotation file as plain records.

    Attributes:
        annotation_file: absolute path of the JSON file.
        image_dir: absolute path of the folder the ``file_name`` entries are relative to.
        records: list of dicts, one per kept image, in file order:
            ``image_id`` (int), ``file_name`` (absolute path), ``height``, ``width`` (ints, as
            written in the file), ``boxes`` float32 ``[K, 4]`` xyxy original pixels clipped to
            the image, ``labels`` int32 ``[K]`` contiguous ``0..C-1`` (class indices).
        category_ids: the file's category ids, sorted ascending.
        class_names: ``name`` of each category, in the same order.
        problems: human-readable strings, one per skipped or suspicious entry.
        skipped: counts of what was dropped, by reason (crowd, degenerate, ...).
        for_training: whether the training filters were applied.
        unreadable: ``{image_id: reason}`` for image files found missing or corrupt (filled by
            ``check_image_files``, the tf.data pipeline and the evaluator).
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
    _checked_modes: set = dataclasses.field(default_factory=set, repr=False)

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

    def summary(self):
        """One line: what was kept and what was skipped."""
        num_boxes = sum(len(r["labels"]) for r in self.records)
        skipped = ", ".join(f"{n} {reason}" for reason, n in self.skipped.items() if n) or "nothing"
        line = (
            f"{os.path.basename(self.annotation_file)}: {len(self.records)} images, {num_boxes} boxes, "
            f"{self.num_classes} classes; skipped {skipped}"
        )
        if self.problems:
            line += f"; {len(self.problems)} problems (see .problems), first: {self.problems[0]}"
        return line


def load_coco(annotation_file, image_dir, for_training=True, min_size=MIN_TRAIN_IMAGE_SIZE, verbose=True):
    """Reads a COCO-format detection annotation file.

    Args:
        annotation_file: path of the JSON file (``images``, ``annotations``, ``categories``).
        image_dir: folder that the images' ``file_name`` entries are relative to.
        for_training: apply the training filters (drop images without boxes and images whose
            shorter side is under ``min_size``). Use ``False`` for evaluation, which must see
            every image of the file.
        min_size: see ``for_training``.
        verbose: print the one-line summary (it is also logged at INFO level).

    Returns:
        A ``CocoDataset``.

    Raises:
        ValueError: the file is not JSON, or lacks one of the top-level fields.
    """
    annotation_file = os.path.abspath(annotation_file)
    image_dir = os.path.abspath(image_dir)
    content = _read_json(annotation_file)
    problems = []
    skipped = {
        "crowd/ignore boxes": 0,
        "degenerate boxes": 0,
        "out-of-image boxes": 0,
        "boxes with unknown category": 0,
        "boxes of unknown images": 0,
        "malformed entries": 0,
        "images without boxes": 0,
        "images under min size": 0,
    }

    category_ids, class_names = _parse_categories(content["categories"], problems, skipped)
    label_of = {cat_id: i for i, cat_id in enumerate(category_ids)}
    images = _parse_images(content["images"], image_dir, problems, skipped)

    per_image = {image_id: ([], []) for image_id in images}
    for index, ann in enumerate(content["annotations"]):
        parsed = _parse_annotation(ann, index, images, label_of, problems, skipped)
        if parsed is not None:
            image_id, box, label = parsed
            per_image[image_id][0].append(box)
            per_image[image_id][1].append(label)

    records = []
    for image_id, info in images.items():
        boxes, labels = per_image[image_id]
        if for_training and not boxes:
            skipped["images without boxes"] += 1
            continue
        if for_training and min(info["height"], info["width"]) < min_size:
            skipped["images under min size"] += 1
            continue
        records.append(
            {
                **info,
                "boxes": np.asarray(boxes, np.float32).reshape(-1, 4),
                "labels": np.asarray(labels, np.int32).reshape(-1),
            }
        )

    dataset = CocoDataset(
        annotation_file=annotation_file,
        image_dir=image_dir,
        records=records,
        category_ids=category_ids,
        class_names=class_names,
        problems=problems,
        skipped=skipped,
        for_training=for_training,
    )
    logger.info(dataset.summary())
    if verbose:
        print(dataset.summary())
    return dataset


def check_image_files(dataset, mode="header"):
    """Finds missing or corrupt image files before a long run reaches them.

    Modes:
        ``"header"`` (cheap, default): the file exists, is not empty, starts with a JPEG / PNG /
            GIF / BMP signature, is not truncated (JPEG end-of-image marker, PNG ``IEND`` chunk,
            BMP declared size), and Pillow can read its header. A size different from the
            annotation's ``height``/``width`` is added to ``problems`` (not skipped).
        ``"decode"``: also decodes every image with ``tf.io.decode_image`` (as the pipeline
            does), so nothing can fail later; costs one full decode per image.

    Unreadable images are put in ``dataset.unreadable`` (and logged with id and file name).
    Results are cached per mode on the dataset.

    Returns:
        The usable records (``dataset.usable_records()``).
    """
    if mode not in ("header", "decode"):
        raise ValueError(f"check_image_files: mode must be 'header' or 'decode', got {mode!r}")
    if mode in dataset._checked_modes:
        return dataset.usable_records()
    for record in dataset.records:
        if record["image_id"] in dataset.unreadable:
            continue
        reason = _check_file_header(record, dataset.problems)
        if reason is None and mode == "decode":
            reason = _check_file_decodes(record["file_name"])
        if reason is not None:
            dataset.mark_unreadable(record, reason)
    # A decode check includes the header check.
    dataset._checked_modes.update(("header", "decode") if mode == "decode" else ("header",))
    return dataset.usable_records()


def _read_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            content = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"annotation file {path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"annotation file {path} is not valid JSON: {e}") from None
    if not isinstance(content, dict):
        raise ValueError(f"annotation file {path}: expected a JSON object at the top level")
    for field in REQUIRED_FIELDS:
        if field not in content:
            raise ValueError(f"annotation file {path} has no '{field}' field (a COCO file needs {REQUIRED_FIELDS})")
        if not isinstance(content[field], list):
            raise ValueError(f"annotation file {path}: field '{field}' must be a list")
    return content


def _parse_categories(categories, problems, skipped):
    names = {}
    for index, cat in enumerate(categories):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int):
            problems.append(f"categories[{index}]: missing or non-integer 'id', skipped")
            skipped["malformed entries"] += 1
        elif cat["id"] in names:
            problems.append(f"category id {cat['id']}: duplicate entry categories[{index}], skipped")
            skipped["malformed entries"] += 1
        else:
            names[cat["id"]] = str(cat.get("name", cat["id"]))
    category_ids = sorted(names)
    return category_ids, [names[i] for i in category_ids]


def _parse_images(images, image_dir, problems, skipped):
    parsed = {}
    for index, img in enumerate(images):
        where = f"images[{index}]" + (f" (image id {img.get('id')})" if isinstance(img, dict) else "")
        missing = [k for k in ("id", "file_name", "height", "width") if not isinstance(img, dict) or k not in img]
        if missing:
            problems.append(f"{where}: missing field '{missing[0]}', image skipped")
            skipped["malformed entries"] += 1
            continue
        if img["id"] in parsed:
            problems.append(f"image id {img['id']}: duplicate entry images[{index}], skipped")
            skipped["malformed entries"] += 1
            continue
        try:
            height, width = int(img["height"]), int(img["width"])
        except (TypeError, ValueError):
            height = width = 0
        if height <= 0 or width <= 0:
            problems.append(
                f"image id {img['id']}: invalid 'height'/'width' {img['height']!r}x{img['width']!r}, skipped"
            )
            skipped["malformed entries"] += 1
            continue
        parsed[img["id"]] = {
            "image_id": img["id"],
            "file_name": os.path.join(image_dir, img["file_name"]),
            "height": height,
            "width": width,
        }
    return parsed


def _parse_annotation(ann, index, images, label_of, problems, skipped):
    """Returns ``(image_id, xyxy box, label)`` or ``None`` when the annotation is dropped."""
    if not isinstance(ann, dict):
        problems.append(f"annotations[{index}]: not an object, skipped")
        skipped["malformed entries"] += 1
        return None
    ann_id = ann.get("id", f"#{index}")
    for field in ("image_id", "category_id", "bbox"):
        if field not in ann:
            problems.append(f"annotation id {ann_id}: missing field '{field}', skipped")
            skipped["malformed entries"] += 1
            return None
    image_id = ann["image_id"]
    bbox = ann["bbox"]
    if not (isinstance(bbox, (list, tuple)) and len(bbox) == 4 and all(isinstance(v, (int, float)) for v in bbox)):
        problems.append(
            f"annotation id {ann_id} (image id {image_id}): field 'bbox' is not 4 numbers: {bbox!r}, skipped"
        )
        skipped["malformed entries"] += 1
        return None
    if image_id not in images:
        problems.append(f"annotation id {ann_id}: field 'image_id' {image_id!r} is not in 'images', skipped")
        skipped["boxes of unknown images"] += 1
        return None
    if ann["category_id"] not in label_of:
        problems.append(
            f"annotation id {ann_id} (image id {image_id}): field 'category_id' {ann['category_id']!r} "
            f"is not in 'categories', skipped"
        )
        skipped["boxes with unknown category"] += 1
        return None
    if ann.get("iscrowd", False) or ann.get("ignore", False):
        skipped["crowd/ignore boxes"] += 1
        return None

    height, width = images[image_id]["height"], images[image_id]["width"]
    x, y, w, h = (float(v) for v in bbox)
    area = ann.get("area", w * h)
    if not isinstance(area, (int, float)):
        area = w * h
    if area <= 0 or w < 1 or h < 1:
        skipped["degenerate boxes"] += 1
        return None
    tol = OUT_OF_IMAGE_TOLERANCE
    if x < -tol or y < -tol or x + w > width + tol or y + h > height + tol:
        problems.append(
            f"annotation id {ann_id} (image id {image_id}): field 'bbox' {list(bbox)} reaches outside "
            f"the {width}x{height} image by more than {tol:g} px, skipped"
        )
        skipped["out-of-image boxes"] += 1
        return None
    inter_w = min(x + w, width) - max(x, 0.0)
    inter_h = min(y + h, height) - max(y, 0.0)
    if inter_w <= 0 or inter_h <= 0:  # a box just past an edge, within the tolerance
        skipped["degenerate boxes"] += 1
        return None
    box = [min(max(x, 0.0), width), min(max(y, 0.0), height), min(x + w, width), min(y + h, height)]
    return image_id, box, label_of[ann["category_id"]]


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

    from PIL import Image

    try:
        with Image.open(path) as im:
            width, height = im.size
    except Exception as e:  # Pillow raises several types for corrupt headers
        return f"unreadable image header ({type(e).__name__}: {e})"
    if (height, width) != (record["height"], record["width"]):
        problems.append(
            f"image id {record['image_id']} ({path}): file is {width}x{height} but the annotation "
            f"says 'width' {record['width']}, 'height' {record['height']}; boxes are scaled by the file's size"
        )
    return None


def _check_file_decodes(path):
    import tensorflow as tf

    try:
        tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    except (tf.errors.OpError, OSError) as e:
        return f"cannot be decoded ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    return None
