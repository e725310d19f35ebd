"""YOLO / Ultralytics detection datasets read into the records of every reader
(``gflv2_keras.data.records``).

``data.yaml``::

    path: ROOT            # optional: relative to the YAML's folder (or the working directory);
                          #   default the YAML's folder
    train: images/train   # a folder of images relative to ROOT (or a list of folders)
    val: images/val
    names: [cat, dog]     # or an index map {0: cat, 1: dog}
    nc: 2                 # optional; must equal the number of names

Label files: the image ``ROOT/images/train/a.jpg`` has its labels in ``ROOT/labels/train/a.txt``
(the last ``images`` folder of the path becomes ``labels``, as Ultralytics
``ultralytics/data/utils.py img2label_paths``; a path without an ``images`` folder keeps the
label file next to the image). One object per line: ``class cx cy w h``, the class an index
into ``names`` and the box centre and size normalised by the image width / height to [0, 1].
An image without a label file has no objects (Ultralytics' background images).

Box convention: records hold pixel edges ``x1 = (cx - w / 2) * W``, ``y1 = (cy - h / 2) * H``,
``x2 = (cx + w / 2) * W``, ``y2 = (cy + h / 2) * H``, clipped to the image (Ultralytics clips the
normalised corners to [0, 1] as well). ``W``, ``H`` come from the image file's header (no decode):
its displayed frame, EXIF orientation applied, as Ultralytics (``exif_size``) and the library's
image reader (``data.image_io``) do.
Class index ``i`` is the ``i``-th smallest ``names`` key (``category_ids``); for the usual
``0..C-1`` keys that is the key itself.

Problems (reported by file and line, the entry skipped, loading goes on): a line without exactly
5 numbers, a class index not in ``names``, coordinates outside [0, 1], zero-size or non-finite
boxes, an image whose header cannot be read, an image format the pipeline cannot decode, a
label file without an image, an image the keep-ratio resize would shrink to nothing. Errors in
``data.yaml`` itself (no ``names``, no split key, a folder that does not exist, an image-list
``.txt`` split, YAML nested too deeply to parse) raise ``ValueError`` naming the key or the file
before any image is read.
"""

import os

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
    all_finite,
    checked_box,
    filter_records,
    finish,
    image_size,
    make_record,
    require_training_images,
)

DATA_YAML_NAMES = ("data.yaml", "data.yml")
# The formats the pipeline reads (``check_image_files`` accepts their signatures).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# Ultralytics ``IMG_FORMATS`` the pipeline cannot decode: reported, not silently ignored.
OTHER_IMAGE_EXTENSIONS = (".webp", ".tif", ".tiff", ".dng", ".mpo", ".heic", ".pfm")
UNREADABLE_IMAGE = "unreadable or unsupported images"
ORPHAN_LABELS = "label files without an image"


def find_data_yaml(folder):
    """``folder/data.yaml`` (or ``data.yml``) when it exists, else ``None``."""
    for name in DATA_YAML_NAMES:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None


def load_yolo(data_yaml, split="train", for_training=True, min_size=MIN_TRAIN_IMAGE_SIZE, verbose=True, scale=None):
    """Reads one split of a YOLO / Ultralytics detection dataset.

    Args:
        data_yaml: the ``data.yaml`` file, or a folder holding one.
        split: the ``data.yaml`` key of the split (``train``, ``val``, ``test``).
        for_training, min_size: the training filters (``records.filter_records``); use
            ``for_training=False`` for evaluation.
        verbose: print the one-line summary.
        scale: ``(long_max, short_max)`` of the keep-ratio resize the images will go through
            (``None``: ``(1333, 800)``); images it would shrink to nothing are left out, named.

    Returns:
        A ``DetectionDataset`` (``format="yolo"``); ``image_id`` is the 1-based position of the
        image in the split (files sorted by path), ``name`` its path relative to the split
        folder without extension; ``category_ids`` the sorted ``names`` keys.

    Raises:
        ValueError: ``data.yaml`` is unreadable, lacks ``names`` or the split key, points to a
            missing folder, or (for training) no image is usable.
    """
    if os.path.isdir(data_yaml):
        data_yaml = find_data_yaml(data_yaml) or os.path.join(data_yaml, DATA_YAML_NAMES[0])
    data_yaml = os.path.abspath(data_yaml)
    config = _read_yaml(data_yaml)
    names = _parse_names(config, data_yaml)
    folders = _split_folders(config, data_yaml, split)

    category_ids = sorted(names)
    label_of = {key: i for i, key in enumerate(category_ids)}
    report = Report(
        (UNKNOWN_CLASS, OUT_OF_IMAGE, DEGENERATE, MALFORMED, UNREADABLE_IMAGE, ORPHAN_LABELS, NO_BOXES, UNDER_MIN_SIZE,
         UNRESIZABLE)
    )
    records, used_labels = [], set()
    for folder in folders:
        for path in _image_files(folder, report):
            label_file = label_path(path)
            used_labels.add(label_file)
            record = _read_image(len(records) + 1, path, folder, label_file, label_of, data_yaml, report)
            if record is not None:
                records.append(record)
    for folder in folders:
        _report_orphan_labels(folder, used_labels, report)

    dataset = DetectionDataset(
        annotation_file=data_yaml,
        image_dir=folders[0],
        records=filter_records(records, for_training, min_size, report, scale),
        category_ids=category_ids,
        class_names=[names[key] for key in category_ids],
        problems=report.problems,
        skipped=report.skipped,
        for_training=for_training,
        format="yolo",
        split=split,
    )
    return require_training_images(finish(dataset, verbose))


def label_path(image_path):
    """The label file of an image: the last ``images`` folder becomes ``labels``, ``.txt``."""
    head, _, tail = image_path.rpartition(f"{os.sep}images{os.sep}")
    path = f"{head}{os.sep}labels{os.sep}{tail}" if head else image_path
    return os.path.splitext(path)[0] + ".txt"


def _read_yaml(path):
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except FileNotFoundError:
        raise ValueError(f"YOLO dataset file {path} does not exist") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ValueError(f"{path}: not valid YAML ({where}{getattr(e, 'problem', None) or e})") from None
    except RecursionError:
        raise ValueError(f"{path}: YAML nested too deeply to parse (a data.yaml needs 2 levels)") from None
    if not isinstance(config, dict):
        raise ValueError(f"YOLO dataset file {path}: expected a mapping with 'names', 'train', 'val'")
    return config


def _parse_names(config, path):
    """``{class index: name}`` from the ``names`` key (a list or an index map)."""
    names = config.get("names")
    if names is None:
        raise ValueError(f"{path}: no 'names' key (the class names: a list, or a map {{0: name, ...}})")
    if isinstance(names, (list, tuple)):
        names = dict(enumerate(names))
    if not isinstance(names, dict) or not names:
        raise ValueError(f"{path}: 'names' must be a non-empty list or a map {{0: name, ...}}, got {names!r}")
    if not all(isinstance(key, int) and key >= 0 for key in names):
        raise ValueError(f"{path}: 'names' keys must be class indices (integers >= 0), got {sorted(map(str, names))}")
    if "nc" in config and config["nc"] != len(names):
        raise ValueError(f"{path}: 'nc' is {config['nc']!r} but 'names' has {len(names)} entries")
    return {key: str(name) for key, name in names.items()}


def _split_folders(config, path, split):
    """The absolute image folders of ``split``, checked to exist."""
    yaml_dir = os.path.dirname(path)
    root = yaml_dir
    if config.get("path"):
        root = os.path.join(yaml_dir, str(config["path"]))
        if not os.path.isdir(root) and os.path.isdir(str(config["path"])):
            root = str(config["path"])  # relative to the working directory, as Ultralytics allows
        if not os.path.isdir(root):
            raise ValueError(f"{path}: 'path' {config['path']!r} is not a folder (relative to {yaml_dir})")
    if split not in config or not config[split]:
        raise ValueError(f"{path}: no '{split}' key (the {split} images folder, relative to 'path')")
    entries = config[split] if isinstance(config[split], (list, tuple)) else [config[split]]
    folders = []
    for entry in entries:
        entry = str(entry)
        if entry.endswith(".txt"):
            raise ValueError(
                f"{path}: '{split}' is an image-list file ({entry}); only folders of images are supported, "
                f"point '{split}' at the images folder"
            )
        folder = os.path.abspath(os.path.join(root, entry))
        if not os.path.isdir(folder) and entry.startswith("../"):
            # Roboflow exports write "../train/images" meaning ROOT/train/images
            # (ultralytics/data/utils.py check_det_dataset does the same).
            folder = os.path.abspath(os.path.join(root, entry[3:]))
        if not os.path.isdir(folder):
            raise ValueError(f"{path}: '{split}' points to {folder}, which is not a folder")
        folders.append(folder)
    return folders


def _image_files(folder, report):
    """Decodable image files under ``folder`` (recursively), sorted; other image formats reported."""
    paths = []
    for directory, subdirs, files in os.walk(folder):
        subdirs.sort()
        for name in sorted(files):
            extension = os.path.splitext(name)[1].lower()
            path = os.path.join(directory, name)
            if extension in IMAGE_EXTENSIONS:
                paths.append(path)
            elif extension in OTHER_IMAGE_EXTENSIONS:
                report.skip(
                    UNREADABLE_IMAGE, f"{path}: {extension} images cannot be decoded by the input pipeline, skipped"
                )
    return paths


def _read_image(image_id, path, folder, label_file, label_of, data_yaml, report):
    """The record of one image and its label file, or ``None`` (reported) if its size is unreadable."""
    try:
        width, height = image_size(path)
    except OSError as e:
        report.skip(UNREADABLE_IMAGE, f"{path}: image header cannot be read ({e}), skipped")
        return None
    boxes, labels = [], []
    lines = []
    if os.path.isfile(label_file):
        with open(label_file, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    for line_number, line in enumerate(lines, 1):
        parsed = _parse_line(line, f"{label_file}:{line_number}", width, height, label_of, data_yaml, report)
        if parsed is not None:
            boxes.append(parsed[0])
            labels.append(parsed[1])
    name = os.path.splitext(os.path.relpath(path, folder))[0]
    return make_record(image_id, path, height, width, boxes, labels, name=name)


def _parse_line(line, where, width, height, label_of, data_yaml, report):
    """``(box, label)`` of one label line, or ``None`` (reported unless the line is blank)."""
    tokens = line.split()
    if not tokens:
        return None
    if len(tokens) != 5:
        report.skip(MALFORMED, f"{where}: expected 5 numbers 'class cx cy w h', got {len(tokens)}: {line.strip()!r}")
        return None
    try:
        values = [float(t) for t in tokens]
    except ValueError:
        report.skip(MALFORMED, f"{where}: not 5 numbers: {line.strip()!r}")
        return None
    if not all_finite(values, where, report):
        return None
    class_index, cx, cy, w, h = values
    if class_index != int(class_index) or int(class_index) not in label_of:
        report.skip(
            UNKNOWN_CLASS, f"{where}: class {tokens[0]} is not a key of 'names' in {data_yaml}, skipped"
        )
        return None
    if not all(0.0 <= v <= 1.0 for v in (cx, cy, w, h)):
        report.skip(OUT_OF_IMAGE, f"{where}: 'cx cy w h' {' '.join(tokens[1:])} not normalised to [0, 1], skipped")
        return None
    if w == 0 or h == 0:
        report.skip(DEGENERATE, f"{where}: zero size (w {tokens[3]}, h {tokens[4]}), skipped")
        return None
    corners = (max(cx - w / 2, 0.0), max(cy - h / 2, 0.0), min(cx + w / 2, 1.0), min(cy + h / 2, 1.0))
    box = (corners[0] * width, corners[1] * height, corners[2] * width, corners[3] * height)
    box = checked_box(box, width, height, f"{where}: box 'cx cy w h' {' '.join(tokens[1:])}", report)
    return None if box is None else (box, label_of[int(class_index)])


def _report_orphan_labels(folder, used_labels, report):
    """Reports label files of ``folder``'s label folder that no image uses."""
    labels_folder = os.path.dirname(label_path(os.path.join(folder, "x")))
    if not os.path.isdir(labels_folder):
        return
    for directory, subdirs, files in os.walk(labels_folder):
        subdirs.sort()
        for name in sorted(files):
            path = os.path.join(directory, name)
            if name.endswith(".txt") and path not in used_labels:
                report.skip(ORPHAN_LABELS, f"{path}: label file without an image, ignored")
