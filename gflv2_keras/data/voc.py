"""Pascal VOC annotations read into the records of every reader (``gflv2_keras.data.records``).

Layout::

    ROOT/ImageSets/Main/{split}.txt   one image id (file stem) per line
    ROOT/Annotations/{id}.xml         <size>, <object> (<name>, <difficult>, <bndbox>)
    ROOT/JPEGImages/{id}.jpg

Box convention: VOC ``bndbox`` values are 1-based pixel indices with both corners inclusive
(``xmin = 1`` is the first column, ``xmax = W`` the last). Records hold pixel edges, no "+1":
``x1 = xmin - 1, y1 = ymin - 1, x2 = xmax, y2 = ymax`` (a box of ``xmax - xmin + 1`` pixels is
that many pixels wide). mmdet v2 ``mmdet/datasets/xml_style.py XMLDataset.get_ann_info`` keeps
the raw values (its ``x1`` is one pixel right of the box's first column); mmdet v1 subtracted 1
from all four. ``write_voc`` (``gflv2_keras.data.layouts``) is the inverse.

Classes: ``class_names`` when given (objects with other names are reported and skipped),
otherwise the sorted set of object names found in the split (mmdet's VOC ``CLASSES`` are
alphabetical too). Load a validation split with the training split's ``class_names`` so the
indices agree.

``difficult`` objects are kept out of ``boxes`` / ``labels`` (never trained on, as mmdet puts
them in ``gt_bboxes_ignore``) and kept in the record's ``ignore_boxes`` / ``ignore_labels`` so
an evaluator can mark them ignore (``iscrowd``), as the VOC metric does. For the training
filter an image whose objects are all difficult has no boxes.

Image size: ``<size>`` of the XML; a missing or zero size falls back to the image file's
header (its displayed frame, EXIF orientation applied). Images are read in the displayed frame,
except where ``<size>`` is the stored frame of an image whose EXIF orientation swaps width and
height (an annotation tool that ignored EXIF): that image is read in the stored frame, as its
boxes are, and ``check_image_files`` names it (``data.image_io.frame_orientation``). Image file: ``JPEGImages/{id}.jpg``, else the XML's ``<filename>``, else ``{id}`` with
another image extension found in ``JPEGImages``.

Problems (reported by file and object number, the entry skipped, loading goes on): a missing or
malformed XML file (image skipped), an object with an empty or unknown name, a missing or
non-numeric ``bndbox`` value, non-finite, zero-size or out-of-image boxes, duplicate ids in the
split file.
"""

import os
import xml.etree.ElementTree as ET

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
    image_size,
    make_record,
    require_training_images,
)

UNREADABLE_ANNOTATION = "images with a missing or unreadable XML"
_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".JPG", ".JPEG", ".PNG")
_CORNERS = ("xmin", "ymin", "xmax", "ymax")


def is_voc_root(path):
    """Whether ``path`` is a folder with ``Annotations/`` and ``ImageSets/``."""
    return all(os.path.isdir(os.path.join(path, name)) for name in ("Annotations", "ImageSets"))


def load_voc(
    root,
    split="train",
    class_names=None,
    image_dir=None,
    for_training=True,
    min_size=MIN_TRAIN_IMAGE_SIZE,
    verbose=True,
    scale=None,
):
    """Reads one split of a Pascal VOC dataset.

    Args:
        root: the folder holding ``Annotations/``, ``ImageSets/Main/`` and ``JPEGImages/``.
        split: name of the ``ImageSets/Main/{split}.txt`` list (``train``, ``val``,
            ``trainval``, ``test``...).
        class_names: class order (index ``i`` is ``class_names[i]``); ``None`` for the sorted
            set of names found in the split.
        image_dir: the images folder, ``ROOT/JPEGImages`` by default.
        for_training, min_size: the training filters (``records.filter_records``); use
            ``for_training=False`` for evaluation.
        verbose: print the one-line summary.
        scale: ``(long_max, short_max)`` of the keep-ratio resize the images will go through
            (``None``: ``(1333, 800)``); images it would shrink to nothing are left out, named.

    Returns:
        A ``DetectionDataset`` (``format="voc"``); ``image_id`` is the 1-based line position in
        the split file, ``name`` the image id (file stem); ``category_ids`` is ``0..C-1``.

    Raises:
        ValueError: the split file is missing, or (for training) no image is usable.
    """
    root = os.path.abspath(root)
    split_file = os.path.join(root, "ImageSets", "Main", f"{split}.txt")
    if not os.path.isfile(split_file):
        main = os.path.join(root, "ImageSets", "Main")
        found = sorted(f[:-4] for f in os.listdir(main) if f.endswith(".txt")) if os.path.isdir(main) else []
        raise ValueError(f"VOC split file {split_file} does not exist (splits found: {found or 'none'})")
    image_dir = os.path.abspath(image_dir or os.path.join(root, "JPEGImages"))
    report = Report(
        (UNREADABLE_ANNOTATION, UNKNOWN_CLASS, DEGENERATE, OUT_OF_IMAGE, MALFORMED, NO_BOXES, UNDER_MIN_SIZE,
         UNRESIZABLE)
    )

    images = []  # (image_id, name, parsed XML)
    for image_id, name in _read_split(split_file, report):
        parsed = _parse_xml(os.path.join(root, "Annotations", f"{name}.xml"), image_dir, name, report)
        if parsed is not None:
            images.append((image_id, name, parsed))

    if class_names is None:
        class_names = sorted({obj["name"] for _, _, parsed in images for obj in parsed["objects"]})
    class_names = [str(c) for c in class_names]
    label_of = {name: i for i, name in enumerate(class_names)}

    records = []
    for image_id, name, parsed in images:
        kept = {False: ([], []), True: ([], [])}  # difficult -> (boxes, labels)
        for obj in parsed["objects"]:
            if obj["name"] not in label_of:
                report.skip(
                    UNKNOWN_CLASS, f"{obj['where']}: name {obj['name']!r} is not one of the classes, skipped"
                )
                continue
            box = checked_box(obj["box"], parsed["width"], parsed["height"], obj["where"], report)
            if box is not None:
                kept[obj["difficult"]][0].append(box)
                kept[obj["difficult"]][1].append(label_of[obj["name"]])
        records.append(
            make_record(
                image_id,
                parsed["file_name"],
                parsed["height"],
                parsed["width"],
                *kept[False],
                *kept[True],
                name=name,
            )
        )

    dataset = DetectionDataset(
        annotation_file=split_file,
        image_dir=image_dir,
        records=filter_records(records, for_training, min_size, report, scale),
        category_ids=list(range(len(class_names))),
        class_names=class_names,
        problems=report.problems,
        skipped=report.skipped,
        for_training=for_training,
        format="voc",
        split=split,
    )
    return require_training_images(finish(dataset, verbose))


def _read_split(split_file, report):
    """Yields ``(image_id, name)``: 1-based line position and image id of each listed image."""
    seen = set()
    with open(split_file, encoding="utf-8") as f:
        for line_number, line in enumerate(f, 1):
            tokens = line.split()
            if not tokens:
                continue
            name = tokens[0]
            if name in seen:
                report.skip(MALFORMED, f"{split_file}:{line_number}: image {name!r} listed twice, skipped")
                continue
            seen.add(name)
            yield line_number, name


def _parse_xml(xml_path, image_dir, name, report):
    """The image and objects of one XML file, or ``None`` (reported) when it cannot be used.

    Returns:
        dict ``file_name``, ``height``, ``width``, ``objects``: list of dicts ``name``,
        ``difficult`` (bool), ``box`` (x1, y1, x2, y2) pixel edges, ``where`` (for problems).
    """
    try:
        annotation = ET.parse(xml_path).getroot()
    except FileNotFoundError:
        report.skip(UNREADABLE_ANNOTATION, f"{xml_path}: annotation file does not exist, image {name!r} skipped")
        return None
    except (ET.ParseError, OSError) as e:
        report.skip(UNREADABLE_ANNOTATION, f"{xml_path}: malformed XML ({e}), image {name!r} skipped")
        return None
    file_name = _image_path(image_dir, name, (annotation.findtext("filename") or "").strip())
    width, height = (_number(annotation.findtext(f"size/{key}")) for key in ("width", "height"))
    if not (width and height and width > 0 and height > 0):
        try:
            width, height = image_size(file_name)
        except OSError as e:
            report.skip(
                UNREADABLE_ANNOTATION,
                f"{xml_path}: no usable <size> and the image {file_name} cannot be read ({e}), skipped",
            )
            return None
    width, height = int(width), int(height)

    objects = []
    for number, obj in enumerate(annotation.findall("object"), 1):
        class_name = (obj.findtext("name") or "").strip()
        where = f"{xml_path}: object #{number}"
        if not class_name:
            report.skip(MALFORMED, f"{where}: empty or missing <name>, skipped")
            continue
        where += f" {class_name!r}"
        corners = [_number(obj.findtext(f"bndbox/{key}")) for key in _CORNERS]
        if any(v is None for v in corners):
            missing = _CORNERS[[v is None for v in corners].index(True)]
            report.skip(MALFORMED, f"{where}: <bndbox> has no numeric <{missing}>, skipped")
            continue
        difficult = _number(obj.findtext("difficult"))
        xmin, ymin, xmax, ymax = corners
        objects.append(
            {
                "name": class_name,
                "difficult": bool(difficult),
                "box": (xmin - 1, ymin - 1, xmax, ymax),
                "where": f"{where} bndbox (xmin, ymin, xmax, ymax) = ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g})",
            }
        )
    return {"file_name": file_name, "height": height, "width": width, "objects": objects}


def _number(text):
    """``float(text)``, or ``None`` for missing or non-numeric text (NaN / inf pass through)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def _image_path(image_dir, name, xml_file_name):
    candidates = [f"{name}.jpg"] + ([xml_file_name] if xml_file_name else [])
    candidates += [name + ext for ext in _IMAGE_EXTENSIONS]
    for candidate in candidates:
        path = os.path.join(image_dir, candidate)
        if os.path.isfile(path):
            return path
    # Missing files are reported by ``check_image_files`` like any unreadable image.
    return os.path.join(image_dir, f"{name}.jpg")
