"""The user's images that calibrate a static int8 export (``gflv2 export --weights int8 --calibration-data PATH``).

``calibration_images(path, count)`` reads any layout ``--data`` accepts elsewhere (a COCO JSON,
a Pascal VOC root, a YOLO ``data.yaml`` or its folder: ``data.formats.load_detection_dataset``;
only the images are used, not the boxes) or a plain folder of images
(``inference.images.collect_image_paths``: sorted, by suffix, not recursive). Every image is
decoded by the library's one reader (``data.image_io``: uint8 RGB ``[h, w, 3]``, EXIF
orientation applied, in the annotation's frame for a dataset), so the calibration sees the
pixels ``gflv2 predict`` / ``evaluate`` feed the export.

Of the ``M`` images listed, ``count`` are taken evenly spaced over the listing (deterministic:
datasets are often sorted by source or date, so the first ``count`` would be one corner of it).
Unreadable files among them (missing, corrupt, over the pixel limit) are named on stderr and left
out; no readable image at all is an error naming ``path``; fewer than ``RECOMMENDED_IMAGES`` is warned
(activation ranges from a handful of images clip what the calibration did not see).

``export_feeds(images, input_size, batch_size)`` turns them into the inputs of the export, fed
exactly as its runners feed it: a fixed canvas gets each image letterboxed
(``numpy_postprocess.letterbox``) with its ``image_shape``, a per-image canvas the image itself.
"""

import sys

import numpy as np

from gflv2_keras.data.image_io import ImageReadError, read_header, read_image

DEFAULT_IMAGES = 100  # --calibration-images default (ORT and NNCF take every image given; NNCF's own default is 300)
RECOMMENDED_IMAGES = 32  # fewer is warned


class CalibrationImages:
    """A re-iterable, lazily decoded set of calibration images.

    Iterating yields uint8 RGB ``[h, w, 3]`` arrays (each image at its own size, displayed frame
    or the annotation's frame). NNCF iterates its dataset more than once (statistics, then bias
    correction), so nothing is consumed; decoding happens on every pass (cheap next to the network).

    Attributes:
        source: the ``--calibration-data`` path, as given.
        layout: ``"coco"``, ``"voc"``, ``"yolo"`` or ``"folder"``.
        paths: the image files used, in order.
        skipped: one line per file left out (unreadable), naming it.
    """

    def __init__(self, source, layout, paths, annotated_sizes, skipped):
        self.source = str(source)
        self.layout = layout
        self.paths = [str(p) for p in paths]
        self._sizes = list(annotated_sizes)
        self.skipped = list(skipped)

    def __len__(self):
        return len(self.paths)

    def __iter__(self):
        for path, size in zip(self.paths, self._sizes):
            try:
                yield read_image(path, size).pixels
            except ImageReadError as error:  # readable header, undecodable body
                raise ValueError(f"calibration image {error}") from None

    def describe(self):
        """One line: how many images, from where, which layout."""
        return f"{len(self)} calibration images from {self.source} ({self.layout})"


def calibration_images(path, count=DEFAULT_IMAGES, split="train", image_dir=None, log=None):
    """The calibration set of ``path`` (see the module docstring).

    Args:
        path: COCO JSON, VOC root, YOLO ``data.yaml`` (or its folder), or a folder of images.
        count: how many images to use at most (evenly spaced over the listing); ``None``: all.
        split: VOC / YOLO split to read (default ``"train"``: calibrate on training images and keep
            the validation split for measuring the int8 AP); ignored for COCO and folders.
        image_dir: COCO: the folder ``file_name`` entries are relative to (default the JSON's
            folder); VOC: the images folder (default ``ROOT/JPEGImages``).
        log: callable taking one line (warnings, skipped files); default: print to stderr.

    Returns:
        A ``CalibrationImages``.

    Raises:
        ValueError: ``path`` is missing, an unreadable dataset, or holds no readable image
            (the message names it); ``count`` is not a positive integer.
    """
    import os

    from gflv2_keras.data.formats import detect_format, load_detection_dataset
    from gflv2_keras.inference.images import collect_image_paths

    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 1):
        raise ValueError(f"--calibration-images must be a positive integer, got {count!r}")
    path = str(path)
    if not os.path.exists(path):
        raise ValueError(f"calibration data {path}: not found")
    try:
        layout = detect_format(path)
    except ValueError:
        layout = "folder" if os.path.isdir(path) else None
    if layout is None:
        raise ValueError(
            f"calibration data {path}: neither a dataset (COCO *.json, Pascal VOC root, YOLO data.yaml) nor a "
            "folder of images"
        )
    if layout == "folder":
        if image_dir is not None:
            raise ValueError("--calibration-image-dir is for a COCO JSON or a VOC root, not a folder of images")
        paths, problems = collect_image_paths([path])
        sizes = [None] * len(paths)
        if not paths:
            raise ValueError(f"calibration data {path}: {problems[0].split(': ', 1)[-1] if problems else 'no images'}")
    else:
        dataset = load_detection_dataset(path, split=split, images=image_dir, for_training=False, verbose=False)
        paths = [r["file_name"] for r in dataset.records]
        sizes = [(r["height"], r["width"]) for r in dataset.records]
        problems = []
        if not paths:
            raise ValueError(f"calibration data {path}: the {layout} dataset lists no images"
                             + (f" in split {split!r}" if layout in ("voc", "yolo") else ""))  # fmt: skip
    chosen = evenly_spaced(len(paths), count)
    readable, kept_sizes, skipped = [], [], list(problems)
    for index in chosen:
        try:
            read_header(paths[index])
        except ImageReadError as error:
            skipped.append(f"{error}, left out")
            continue
        readable.append(paths[index])
        kept_sizes.append(sizes[index])
    for line in skipped:
        log(f"calibration: {line}")
    if not readable:
        raise ValueError(f"calibration data {path}: none of its {len(chosen)} images is readable"
                         + (f" (first: {skipped[0]})" if skipped else ""))  # fmt: skip
    if len(readable) < RECOMMENDED_IMAGES:
        log(f"warning: only {len(readable)} calibration images (from {path}); with fewer than "
            f"{RECOMMENDED_IMAGES} the int8 activation ranges may clip what the calibration did not see "
            f"({DEFAULT_IMAGES} or more of your own images are recommended)")  # fmt: skip
    return CalibrationImages(path, layout, readable, kept_sizes, skipped)


def evenly_spaced(total, count):
    """Indices of ``count`` items evenly spaced over ``range(total)`` (all of them when ``count`` is None or larger)."""
    if count is None or count >= total:
        return list(range(total))
    return sorted({int(round(i)) for i in np.linspace(0, total - 1, count)})


def export_feeds(images, input_size, batch_size=1):
    """Yield the inputs of an export, ``{name: array}``, from ``images`` (an iterable of uint8 ``[h, w, 3]``).

    ``input_size``: ``(H, W)`` of a fixed-canvas export: ``images`` uint8 ``[batch, H, W, 3]``, each
    image letterboxed as every runner of such an export does (``numpy_postprocess.letterbox``),
    and ``image_shape`` int32 ``[batch, 2]``. ``"dynamic"`` (per-image canvas): ``images`` uint8
    ``[batch, h, w, 3]``, the image at its own size (a batch of more than one repeats it: the
    images of one batch must share a size). The last, incomplete batch of a fixed canvas is filled
    with the first images of the set, so every image is seen and every batch has the export's
    fixed batch size.
    """
    from gflv2_keras.export.graph import DYNAMIC, IMAGE_SHAPE_NAME, INPUT_NAME
    from gflv2_keras.export.numpy_postprocess import letterbox

    if isinstance(input_size, str):
        if input_size != DYNAMIC:
            raise ValueError(f"input size must be (H, W) or {DYNAMIC!r}, got {input_size!r}")
        for image in images:
            yield {INPUT_NAME: np.repeat(np.asarray(image, np.uint8)[None], batch_size, axis=0)}
        return
    height, width = (int(v) for v in input_size)
    batch, first = [], []
    for image in images:
        fitted = letterbox(image, height, width)
        if len(first) < batch_size:
            first.append(fitted)
        batch.append(fitted)
        if len(batch) == batch_size:
            yield _feed(batch, INPUT_NAME, IMAGE_SHAPE_NAME)
            batch = []
    if batch:
        yield _feed((batch + first * batch_size)[:batch_size], INPUT_NAME, IMAGE_SHAPE_NAME)


def _feed(fitted, images_name, shape_name):
    return {images_name: np.stack([canvas for canvas, _ in fitted]),
            shape_name: np.stack([shape for _, shape in fitted]).astype(np.int32)}  # fmt: skip
