"""Writes a loaded dataset in Pascal VOC or YOLO layout (the inverses of ``voc.py`` / ``yolo.py``).

Useful to try the other readers on known data (the synthetic shapes: ``make_synthetic_coco``,
then ``load_coco`` and ``write_voc`` / ``write_yolo``) and to convert a dataset. Images are
copied. Existing files are never replaced unless ``overwrite=True``.

Box conversions from record pixel edges ``(x1, y1, x2, y2)``:
    VOC ``bndbox``: ``xmin = x1 + 1, ymin = y1 + 1, xmax = x2, ymax = y2`` (1-based, inclusive);
    YOLO line: ``label cx cy w h`` with ``cx = (x1 + x2) / 2 / W`` etc., 6 decimals (a round trip
    moves a box edge by at most ``5e-7 * W`` px).
The records' ``ignore_boxes`` become VOC ``difficult`` objects; YOLO has no such notion, so
they are not written there.
"""

import os
import shutil
import xml.etree.ElementTree as ET

import numpy as np

from gflv2_keras.data.yolo import DATA_YAML_NAMES


def write_voc(dataset, root, split="train", overwrite=False):
    """Writes ``dataset`` as ``root/{Annotations,JPEGImages,ImageSets/Main/{split}.txt}``.

    Image ids are the records' ``name`` (or their file stem); all splits share ``JPEGImages``,
    so names must differ across splits written to one root.

    Returns:
        ``root`` (absolute).

    Raises:
        ValueError: two records share a name, or a file to write exists and not ``overwrite``.
    """
    root = os.path.abspath(root)
    names = _names(dataset)
    targets = [os.path.join(root, "ImageSets", "Main", f"{split}.txt")]
    for record, name in zip(dataset.records, names):
        extension = os.path.splitext(record["file_name"])[1]
        targets.append(os.path.join(root, "Annotations", f"{name}.xml"))
        targets.append(os.path.join(root, "JPEGImages", name + extension))
    _refuse_existing(targets, overwrite)
    for folder in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        os.makedirs(os.path.join(root, folder), exist_ok=True)

    for record, name in zip(dataset.records, names):
        image_name = name + os.path.splitext(record["file_name"])[1]
        shutil.copyfile(record["file_name"], os.path.join(root, "JPEGImages", image_name))
        annotation = ET.Element("annotation")
        ET.SubElement(annotation, "filename").text = image_name
        size = ET.SubElement(annotation, "size")
        for key, value in (("width", record["width"]), ("height", record["height"]), ("depth", 3)):
            ET.SubElement(size, key).text = str(value)
        objects = [(box, label, 0) for box, label in zip(record["boxes"], record["labels"])]
        objects += [(box, label, 1) for box, label in zip(record["ignore_boxes"], record["ignore_labels"])]
        for box, label, difficult in objects:
            obj = ET.SubElement(annotation, "object")
            ET.SubElement(obj, "name").text = dataset.class_names[label]
            ET.SubElement(obj, "difficult").text = str(difficult)
            bndbox = ET.SubElement(obj, "bndbox")
            corners = (box[0] + 1, box[1] + 1, box[2], box[3])
            for key, value in zip(("xmin", "ymin", "xmax", "ymax"), corners):
                ET.SubElement(bndbox, key).text = f"{float(value):.10g}"
        ET.indent(annotation)
        ET.ElementTree(annotation).write(os.path.join(root, "Annotations", f"{name}.xml"), encoding="utf-8")
    with open(targets[0], "w", encoding="utf-8") as f:
        f.write("".join(f"{name}\n" for name in names))
    return root


def write_yolo(dataset, root, split="train", overwrite=False):
    """Writes ``dataset`` as ``root/images/{split}/``, ``root/labels/{split}/`` and ``root/data.yaml``.

    ``data.yaml`` gets ``names`` (the dataset's class order, so YOLO class ``i`` is label ``i``)
    and ``{split}: images/{split}``, without ``path`` (readers take the YAML's folder). An
    existing ``data.yaml`` with the same names gains the split key (written splits accumulate).

    Returns:
        The ``data.yaml`` path.

    Raises:
        ValueError: two records share a name, a file to write exists and not ``overwrite``, or
            an existing ``data.yaml`` has other names.
    """
    import yaml

    root = os.path.abspath(root)
    names = _names(dataset)
    image_dir, label_dir = (os.path.join(root, kind, split) for kind in ("images", "labels"))
    data_yaml = os.path.join(root, DATA_YAML_NAMES[0])
    config = {"names": list(dataset.class_names)}
    if os.path.isfile(data_yaml):
        with open(data_yaml, encoding="utf-8") as f:
            existing = yaml.safe_load(f) or {}
        if existing.get("names") == config["names"] and existing.get(split, f"images/{split}") == f"images/{split}":
            config = existing
        elif not overwrite:
            raise ValueError(f"{data_yaml} exists with other names or another '{split}' folder (pass overwrite=True)")
    targets = []
    for record, name in zip(dataset.records, names):
        extension = os.path.splitext(record["file_name"])[1]
        targets += [os.path.join(image_dir, name + extension), os.path.join(label_dir, f"{name}.txt")]
    _refuse_existing(targets, overwrite)

    for record, name in zip(dataset.records, names):
        image_path = os.path.join(image_dir, name + os.path.splitext(record["file_name"])[1])
        os.makedirs(os.path.dirname(image_path), exist_ok=True)
        shutil.copyfile(record["file_name"], image_path)
        size = np.array([record["width"], record["height"]] * 2, np.float64)
        boxes = np.asarray(record["boxes"], np.float64) / size
        centres, sizes = (boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]
        lines = [
            f"{label} {c[0]:.6f} {c[1]:.6f} {s[0]:.6f} {s[1]:.6f}\n"
            for label, c, s in zip(record["labels"], centres, sizes)
        ]
        label_file = os.path.join(label_dir, f"{name}.txt")
        os.makedirs(os.path.dirname(label_file), exist_ok=True)
        with open(label_file, "w", encoding="utf-8") as f:
            f.write("".join(lines))
    config[split] = f"images/{split}"
    with open(data_yaml, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    return data_yaml


def _names(dataset):
    """Each record's ``name`` (or file stem), checked to be unique."""
    names = [r.get("name") or os.path.splitext(os.path.basename(r["file_name"]))[0] for r in dataset.records]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"two images of {dataset.annotation_file} would both be written as {duplicate!r}")
    return names


def _refuse_existing(paths, overwrite):
    if overwrite:
        return
    for path in paths:
        if os.path.exists(path):
            raise ValueError(f"{path} exists; pass overwrite=True to replace it")
