"""One entry point for the annotation layouts people bring: COCO JSON, Pascal VOC, YOLO.

``load_detection_dataset(path)`` recognises the layout from what ``path`` points at and returns
the ``DetectionDataset`` every reader produces (``gflv2_keras.data.records``), so the input
pipeline, the trainer and the evaluator use any of them unchanged.
"""

import os

from gflv2_keras.data.class_map import reorder_classes
from gflv2_keras.data.coco import load_coco
from gflv2_keras.data.records import require_training_images
from gflv2_keras.data.voc import is_voc_root, load_voc
from gflv2_keras.data.yolo import DATA_YAML_NAMES, find_data_yaml, load_yolo

LAYOUTS = (
    "a COCO annotation file (*.json; images in --images, default the JSON's folder)",
    "a Pascal VOC folder (Annotations/, ImageSets/Main/{split}.txt, JPEGImages/)",
    f"a YOLO data.yaml / *.yml file, or a folder holding {' or '.join(DATA_YAML_NAMES)}",
)


def detect_format(path):
    """``"coco"``, ``"voc"`` or ``"yolo"`` for what ``path`` points at.

    Raises:
        ValueError: ``path`` does not exist or is none of the accepted layouts (listed).
    """
    if not os.path.exists(path):
        raise ValueError(f"dataset path {path} does not exist")
    lower = path.lower()
    if os.path.isfile(path) and lower.endswith(".json"):
        return "coco"
    if os.path.isfile(path) and lower.endswith((".yaml", ".yml")):
        return "yolo"
    if os.path.isdir(path) and is_voc_root(path):
        return "voc"
    if os.path.isdir(path) and find_data_yaml(path):
        return "yolo"
    raise ValueError(f"{path} is not a dataset layout this library reads; accepted: " + "; ".join(LAYOUTS))


def load_detection_dataset(path, split="train", images=None, class_names=None, for_training=True, verbose=True,
                           scale=None):
    """Reads a detection dataset in COCO, Pascal VOC or YOLO layout (``detect_format``).

    Args:
        path: the COCO JSON file, the VOC root folder, or the YOLO ``data.yaml`` (or its folder).
        split: VOC: the ``ImageSets/Main/{split}.txt`` list; YOLO: the ``data.yaml`` key;
            ignored for COCO (the JSON file is the split).
        images: COCO: the folder ``file_name`` entries are relative to (default: the JSON's
            folder); VOC: the images folder (default ``ROOT/JPEGImages``); not accepted for
            YOLO (``data.yaml`` names the folders).
        class_names: the class order (index ``i`` is ``class_names[i]``), matched by name
            (``class_map.reorder_classes``): pass the training split's ``class_names`` when loading
            its validation split. The file's classes must be among them (a split may lack some);
            VOC objects of other names are reported and skipped. Default: the layout's own order
            (VOC: the sorted names found in the split; COCO: category ids; YOLO: ``names`` keys).
        for_training: apply the training filters (images without boxes and images under
            32 px are dropped) and require at least one usable image; ``False`` for evaluation.
        verbose: print the one-line summary.
        scale: ``(long_max, short_max)`` of the keep-ratio resize the images will go through
            (the preset's ``input_scale``, a recipe's ``scale``; ``None``: ``(1333, 800)``):
            images it would shrink to nothing are left out and named (``records.filter_records``).

    Returns:
        A ``DetectionDataset``.

    Raises:
        ValueError: unknown layout, missing files or keys, class names that disagree, or (for
            training) no usable image; the message names the file / key.
    """
    kind = detect_format(path)
    if kind == "voc":
        return load_voc(path, split, class_names, images, for_training=for_training, verbose=verbose, scale=scale)
    if kind == "yolo":
        if images is not None:
            raise ValueError(f"{path}: a YOLO data.yaml names its image folders; do not pass an images folder")
        dataset = load_yolo(path, split, for_training=for_training, verbose=verbose, scale=scale)
    else:
        image_dir = images if images is not None else os.path.dirname(os.path.abspath(path))
        dataset = require_training_images(
            load_coco(path, image_dir, for_training=for_training, verbose=verbose, scale=scale)
        )
    if class_names is not None:
        reorder_classes(dataset, class_names)  # by name: the file's order does not matter
    return dataset
