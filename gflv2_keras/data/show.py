"""Ground truth as pictures: ``labels.png`` (what the boxes of a split look like) and a sample of annotated images.

``gflv2 show-data --data PATH`` (``data.show_cli``) writes them so the annotations can be checked
before a long run, and every training run writes them into its work dir when it starts:

- ``labels.png``: the summary of the split's boxes, Ultralytics' ``labels.jpg`` idea drawn with
  Pillow in the style of ``evaluation.plots``: boxes per class (bars), box width and height as a
  fraction of the image's width and height (histograms), aspect ratio width / height (histogram
  on a log scale, 1/8 to 8) and where the box centres lie (heat map over the image, relative
  coordinates). The numbers plotted are ``label_statistics``'s (``LabelStatistics``).
- ``ground_truth/NN_STEM.jpg``: a seeded sample of the images with their boxes and class names
  (class colours of ``inference.draw.class_colour``; objects that are neither trained on nor
  counted as misses, VOC ``difficult`` and COCO ``iscrowd``, in grey).

Boxes are the records' (``data.records``): xyxy pixel edges of the image in the frame the
annotation refers to (read with ``image_io.read_record_image``), after the reader's checks:
entries the reader skipped are in ``dataset.problems``, not in the pictures. A picture whose
longer side is outside 480..1024 px is scaled into that range (``evaluation.plots.display_scale``).

Files are written atomically (``utils.files``); an existing ``labels.png`` or ``ground_truth``
folder is replaced only with ``overwrite=True``.
"""

import dataclasses
import logging
import math
from pathlib import Path

import numpy as np

from gflv2_keras.data.image_io import ImageReadError, read_record_image
from gflv2_keras.evaluation.plots import display_scale, safe_stem, scaled_image
from gflv2_keras.inference.draw import class_colour, draw_boxes, label_font, side_by_side, text_size
from gflv2_keras.utils.files import atomic_write, publish_directory, refuse_existing

logger = logging.getLogger(__name__)

LABELS = "labels.png"
GROUND_TRUTH = "ground_truth"
NUM_IMAGES = 16  # pictures of ``gflv2 show-data``
SIZE_BINS = 20  # width / height histograms over 0..1 of the image side
ASPECT_LIMIT = 3  # log2 range of the aspect histogram: 1/8 .. 8 (beyond: counted in the end bins)
ASPECT_BINS = 24
CENTRE_GRID = 32  # cells per side of the box-centre heat map
# What ignored objects are called in each layout (records' ``ignore_boxes``).
IGNORED_WORD = {"voc": "difficult", "coco": "crowd"}

WHITE, BLACK, GREY, GRID = (255, 255, 255), (0, 0, 0), (150, 150, 150), (225, 225, 225)
NOTE = (90, 90, 90)
WIDTH_COLOUR, HEIGHT_COLOUR, ASPECT_COLOUR, HEAT = (40, 90, 200), (230, 130, 30), (40, 150, 90), (20, 70, 160)


@dataclasses.dataclass
class LabelStatistics:
    """The numbers ``labels.png`` plots (``label_statistics``).

    Attributes:
        class_names: the ``C`` class names.
        class_counts: int ``[C]``, boxes per class (the records' ``labels``; ignored objects excluded).
        ignored_counts: int ``[C]``, ignored objects per class (VOC ``difficult``, COCO ``iscrowd``).
        num_images: images of the split (records).
        images_without_boxes: images with no box.
        size_edges: ``[S + 1]`` bin edges over 0..1 of ``box width / image width`` and
            ``box height / image height`` (the last bin includes 1).
        width_counts, height_counts: int ``[S]``.
        aspect_edges: ``[A + 1]`` bin edges of ``log2(box width / box height)`` over -3..3;
            boxes beyond are counted in the end bins.
        aspect_counts: int ``[A]``.
        centre_counts: int ``[G, G]``, boxes whose centre ``(x / image width, y / image
            height)`` falls in each cell; row 0 is the top of the image, column 0 its left.
        median_size: ``(width, height)`` median box size in pixels, or None without boxes.
        ignored_word: what ignored objects are called ("difficult", "crowd" or "ignored").
    """

    class_names: list
    class_counts: np.ndarray
    ignored_counts: np.ndarray
    num_images: int
    images_without_boxes: int
    size_edges: np.ndarray
    width_counts: np.ndarray
    height_counts: np.ndarray
    aspect_edges: np.ndarray
    aspect_counts: np.ndarray
    centre_counts: np.ndarray
    median_size: tuple = None
    ignored_word: str = "ignored"

    @property
    def num_boxes(self):
        return int(self.class_counts.sum())


def label_statistics(dataset):
    """The box statistics of a ``DetectionDataset`` (any layout) as ``LabelStatistics``.

    Boxes are the records' xyxy pixel edges; relative sizes and centres divide by the record's
    ``width`` / ``height`` (the frame the boxes refer to).
    """
    records, names = dataset.records, list(dataset.class_names)
    classes = len(names)
    labels = np.concatenate([np.asarray(r["labels"], np.int64) for r in records] + [np.zeros(0, np.int64)])
    boxes = np.concatenate([np.asarray(r["boxes"], np.float64).reshape(-1, 4) for r in records] + [np.zeros((0, 4))])
    image_size = np.concatenate(
        [np.tile([float(r["width"]), float(r["height"])], (len(r["labels"]), 1)) for r in records] + [np.zeros((0, 2))]
    )
    ignored = np.concatenate([np.asarray(r["ignore_labels"], np.int64) for r in records] + [np.zeros(0, np.int64)])
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    size_edges = np.linspace(0.0, 1.0, SIZE_BINS + 1)
    aspect_edges = np.linspace(-ASPECT_LIMIT, ASPECT_LIMIT, ASPECT_BINS + 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        relative_w = np.clip(widths / image_size[:, 0], 0.0, 1.0)
        relative_h = np.clip(heights / image_size[:, 1], 0.0, 1.0)
        aspect = np.clip(np.log2(widths / heights), -ASPECT_LIMIT, ASPECT_LIMIT)
        centre_x = np.clip((boxes[:, 0] + boxes[:, 2]) / 2 / image_size[:, 0], 0.0, 1.0)
        centre_y = np.clip((boxes[:, 1] + boxes[:, 3]) / 2 / image_size[:, 1], 0.0, 1.0)
    centres = np.zeros((CENTRE_GRID, CENTRE_GRID), np.int64)
    np.add.at(centres, (np.minimum((centre_y * CENTRE_GRID).astype(np.int64), CENTRE_GRID - 1),
                        np.minimum((centre_x * CENTRE_GRID).astype(np.int64), CENTRE_GRID - 1)), 1)
    return LabelStatistics(
        class_names=names,
        class_counts=np.bincount(labels, minlength=classes)[:classes],
        ignored_counts=np.bincount(ignored, minlength=classes)[:classes],
        num_images=len(records),
        images_without_boxes=sum(1 for r in records if not len(r["labels"])),
        size_edges=size_edges,
        width_counts=np.histogram(relative_w, size_edges)[0],
        height_counts=np.histogram(relative_h, size_edges)[0],
        aspect_edges=aspect_edges,
        aspect_counts=np.histogram(aspect, aspect_edges)[0],
        centre_counts=centres,
        median_size=(float(np.median(widths)), float(np.median(heights))) if len(boxes) else None,
        ignored_word=IGNORED_WORD.get(getattr(dataset, "format", None), "ignored"),
    )


def draw_label_statistics(stats, title="Labels"):
    """``labels.png`` of a ``LabelStatistics`` as a ``PIL.Image.Image``.

    Top: boxes per class (one bar per class, class colours, the count above each bar where it
    fits). Below, left to right: histograms of box width / image width (blue) and box height /
    image height (orange); of the aspect ratio width / height on a log scale; the heat map of
    the box centres over the image (darker: more centres).
    """
    from PIL import Image, ImageDraw

    font, small, heading = label_font(13), label_font(11), label_font(16)
    classes = len(stats.class_names)
    # Bottom row: three panels of a fixed size; top row: the class bars, as wide as the classes need.
    left, gap, panel_h = 60, 36, 220
    small_w = 300
    bottom_w = 3 * (left + small_w) + 2 * gap
    names = [_short(n) for n in stats.class_names]
    bars_w = max(bottom_w - left, 16 * classes)
    slot = bars_w / max(classes, 1)
    line_h = text_size(small, "Ag")[1]
    # Class names under their bars: across when every one fits its slot, else turned upright.
    across = all(text_size(small, n)[0] <= slot - 4 for n in names)
    name_h = line_h + 8 if across else max([text_size(small, n)[0] for n in names] + [20]) + 8
    width = max(bottom_w, left + bars_w) + 2 * 16
    header = 70
    bars_top = header + 30
    row_top = bars_top + panel_h + name_h + 40 + 30
    height = row_top + panel_h + 56
    image = Image.new("RGB", (width, height), WHITE)
    canvas = ImageDraw.Draw(image)
    canvas.text((16, 10), title, fill=BLACK, font=label_font(18))
    ignored = int(stats.ignored_counts.sum())
    median = (f"; median box {stats.median_size[0]:.0f} x {stats.median_size[1]:.0f} px (width x height)"
              if stats.median_size else "")
    canvas.text((16, 36), f"{stats.num_images} images ({stats.images_without_boxes} without boxes), "
                f"{stats.num_boxes} boxes, {classes} classes" + median
                + (f"; {ignored} {stats.ignored_word} objects, not counted (grey in the pictures)" if ignored else ""),
                fill=NOTE, font=font)

    # Boxes per class.
    x0 = 16 + left
    canvas.text((16, bars_top - 26), "boxes per class", fill=BLACK, font=heading)
    top_count = _frame_counts(canvas, x0, bars_top, bars_w, panel_h, stats.class_counts.max(initial=0), font)
    for k, (name, count) in enumerate(zip(names, stats.class_counts)):
        bx = x0 + k * slot
        bar_h = panel_h * count / top_count
        if count:
            canvas.rectangle([bx + slot * 0.15, bars_top + panel_h - bar_h, bx + slot * 0.85, bars_top + panel_h],
                             fill=class_colour(k))
        text = str(int(count))
        tw, th = text_size(small, text)
        if tw <= slot:
            canvas.text((bx + (slot - tw) / 2, bars_top + panel_h - bar_h - th - 2), text, fill=BLACK, font=small)
        if across:
            canvas.text((bx + (slot - text_size(small, name)[0]) / 2, bars_top + panel_h + 4), name, fill=BLACK,
                        font=small)
            continue
        label = Image.new("RGB", (name_h, line_h + 2), WHITE)
        ImageDraw.Draw(label).text((name_h - text_size(small, name)[0] - 4, 0), name, fill=BLACK, font=small)
        label = label.rotate(90, expand=True)
        image.paste(label, (int(bx + (slot - label.width) / 2), bars_top + panel_h + 4))

    # Box width and height (px: the left edges of the three plots of this row).
    px = (16 + left, 16 + 2 * left + small_w + gap, 16 + 3 * left + 2 * small_w + 2 * gap)
    canvas.text((px[0] - left, row_top - 48), "box width / image width (blue),", fill=WIDTH_COLOUR, font=heading)
    canvas.text((px[0] - left, row_top - 28), "box height / image height (orange)", fill=HEIGHT_COLOUR, font=heading)
    top_count = _frame_counts(canvas, px[0], row_top, small_w, panel_h,
                              max(stats.width_counts.max(initial=0), stats.height_counts.max(initial=0)), font)
    _x_ticks(canvas, px[0], row_top + panel_h, small_w, [(t, f"{t:.1f}") for t in np.linspace(0, 1, 6)], font)
    bin_w = small_w / len(stats.width_counts)
    for i, (w_count, h_count) in enumerate(zip(stats.width_counts, stats.height_counts)):
        bx = px[0] + i * bin_w
        for offset, count, colour in ((0.1, w_count, WIDTH_COLOUR), (0.5, h_count, HEIGHT_COLOUR)):
            if count:
                canvas.rectangle([bx + offset * bin_w, row_top + panel_h * (1 - count / top_count),
                                  bx + (offset + 0.4) * bin_w, row_top + panel_h], fill=colour)

    # Aspect ratio.
    canvas.text((px[1] - left, row_top - 28), "aspect ratio width / height", fill=BLACK, font=heading)
    top_count = _frame_counts(canvas, px[1], row_top, small_w, panel_h, stats.aspect_counts.max(initial=0), font)
    ticks = [((p + ASPECT_LIMIT) / (2 * ASPECT_LIMIT), _power_of_two(p))
             for p in range(-ASPECT_LIMIT, ASPECT_LIMIT + 1)]
    _x_ticks(canvas, px[1], row_top + panel_h, small_w, ticks, font)
    bin_w = small_w / len(stats.aspect_counts)
    for i, count in enumerate(stats.aspect_counts):
        if count:
            bx = px[1] + i * bin_w
            canvas.rectangle([bx + 1, row_top + panel_h * (1 - count / top_count), bx + bin_w - 1, row_top + panel_h],
                             fill=ASPECT_COLOUR)

    # Box centres.
    side = min(small_w, panel_h)
    cx0 = px[2] + (small_w - side) / 2
    canvas.text((px[2] - left, row_top - 48), "box centres over the image", fill=BLACK, font=heading)
    canvas.text((px[2] - left, row_top - 28),
                f"(x / width, y / height; max {stats.centre_counts.max(initial=0)} per cell)",
                fill=NOTE, font=font)
    grid = stats.centre_counts
    cell = side / grid.shape[0]
    peak = max(int(grid.max(initial=0)), 1)
    for r in range(grid.shape[0]):
        for c in range(grid.shape[1]):
            if grid[r, c]:
                share = grid[r, c] / peak
                fill = tuple(int(round(255 - share * (255 - v))) for v in HEAT)
                canvas.rectangle([cx0 + c * cell, row_top + r * cell, cx0 + (c + 1) * cell, row_top + (r + 1) * cell],
                                 fill=fill)
    canvas.rectangle([cx0, row_top, cx0 + side, row_top + side], outline=BLACK)
    for t in (0.0, 0.5, 1.0):
        tw, _ = text_size(font, f"{t:.1f}")
        canvas.text((cx0 + t * side - tw / 2, row_top + side + 6), f"{t:.1f}", fill=BLACK, font=font)
        canvas.text((cx0 - tw - 6, row_top + t * side - 7), f"{t:.1f}", fill=BLACK, font=font)
    return image


def draw_ground_truth(pixels, record, class_names, scale=1.0, ignored_word="ignored", hide_labels=False,
                      line_width=None, font_size=None):
    """One image with its ground truth boxes.

    Args:
        pixels: uint8 RGB ``[H, W, 3]`` of the record's image (``image_io.read_record_image``).
        record: its record (``boxes`` / ``ignore_boxes`` xyxy pixel edges of this image,
            ``labels`` / ``ignore_labels`` class indices).
        class_names: names indexed by class index.
        scale: the picture is ``scale`` times the image (boxes scaled with it).
        ignored_word: the label suffix of ignored objects ("difficult", "crowd").
        hide_labels: boxes only.
        line_width, font_size: pixels (default ``inference.draw.drawing_sizes`` of the picture).

    Returns:
        ``(picture, drawn)``: a ``PIL.Image.Image`` and ``drawn``, the boxes in the order drawn
        (trained objects first, then ignored ones): ``boxes`` float ``[K, 4]`` xyxy pixels of the
        original image (the record's), ``labels`` int ``[K]``, ``ignored`` bool ``[K]``. A box is
        drawn as a rectangle outline through the pixels ``x1..x2``, ``y1..y2`` (scaled, clipped
        to the picture), in its class colour, grey when ignored.
    """
    image = scaled_image(pixels, scale)
    boxes = np.concatenate([np.asarray(record["boxes"], np.float64).reshape(-1, 4),
                            np.asarray(record["ignore_boxes"], np.float64).reshape(-1, 4)])
    labels = np.concatenate([np.asarray(record["labels"], np.int64), np.asarray(record["ignore_labels"], np.int64)])
    ignored = np.arange(len(labels)) >= len(record["labels"])
    colours = [GREY if skip else class_colour(int(label)) for label, skip in zip(labels, ignored)]
    texts = None
    if not hide_labels:
        texts = [_class_name(class_names, label) + (f" ({ignored_word})" if skip else "")
                 for label, skip in zip(labels, ignored)]
    picture = draw_boxes(image, boxes * scale, texts, colours=colours, line_width=line_width, font_size=font_size)
    return picture, {"boxes": boxes, "labels": labels, "ignored": ignored}


def sample_records(records, count, seed=0):
    """``count`` records drawn without replacement with ``seed`` (all of them if fewer), in listing order."""
    count = min(int(count), len(records))
    chosen = np.sort(np.random.default_rng(seed).choice(len(records), size=count, replace=False)) if count else []
    return [records[i] for i in chosen]


def output_paths(folder):
    """``{"labels": folder/labels.png, "ground_truth": folder/ground_truth}`` as ``Path`` s."""
    folder = Path(folder)
    return {"labels": folder / LABELS, "ground_truth": folder / GROUND_TRUTH}


def check_output_paths(folder, overwrite):
    """``FileExistsError`` (one line) if ``labels.png`` or ``ground_truth/`` exists in ``folder``
    and not ``overwrite``."""
    paths = output_paths(folder)
    refuse_existing(paths["labels"], overwrite, "labels summary")
    refuse_existing(paths["ground_truth"], overwrite, "ground-truth pictures folder")


def show_data(dataset, folder, num_images=NUM_IMAGES, seed=0, overwrite=False, title=None):
    """Writes ``labels.png`` and ``ground_truth/`` (a sample of ``num_images`` images) into ``folder``.

    Args:
        dataset: a ``DetectionDataset`` (any layout; ``for_training=False`` shows every image).
        folder: the output folder (created if needed).
        num_images: pictures drawn (0: only ``labels.png``); images chosen with ``seed``
            (``sample_records``); an image that cannot be read is skipped and named.
        overwrite: replace an existing ``labels.png`` / ``ground_truth`` folder (otherwise
            ``FileExistsError``, checked before anything is written).
        title: the heading of ``labels.png`` (default: the annotation file and split).

    Returns:
        dict: ``labels`` (path, str), ``statistics`` (``LabelStatistics``), ``ground_truth``
        (the folder, or None), ``pictures``: one dict per picture written with ``image_id``,
        ``file_name``, ``picture`` (path) and the boxes drawn in original-image pixels
        (``boxes`` xyxy ``[K, 4]`` list, ``labels`` ``[K]``, ``class_names`` ``[K]``,
        ``ignored`` ``[K]``), and ``skipped``: ``[(file_name, reason)]``.
    """
    paths = output_paths(folder)
    check_output_paths(folder, overwrite)
    stats = label_statistics(dataset)
    if title is None:
        title = f"Labels of {dataset.annotation_file}" + (f" [{dataset.split}]" if dataset.split else "")
    paths["labels"].parent.mkdir(parents=True, exist_ok=True)
    summary = draw_label_statistics(stats, title)
    atomic_write(paths["labels"], lambda f: summary.save(f, "PNG"))
    written = {"labels": str(paths["labels"]), "statistics": stats, "ground_truth": None, "pictures": [],
               "skipped": []}
    chosen = sample_records(dataset.records, num_images, seed) if num_images > 0 else []
    if not chosen:
        return written
    names = list(dataset.class_names)

    def write_pictures(staging):
        for rank, record in enumerate(chosen, 1):
            try:
                pixels = read_record_image(record)
            except ImageReadError as error:
                logger.warning("ground-truth pictures: %s", error)
                written["skipped"].append((record["file_name"], error.reason))
                continue
            height, width = pixels.shape[:2]
            picture, drawn = draw_ground_truth(pixels, record, names, display_scale(width, height),
                                               stats.ignored_word)
            count, ignored = int(np.sum(~drawn["ignored"])), int(np.sum(drawn["ignored"]))
            heading = (f"image id {record['image_id']}: {count} boxes"
                       + (f" + {ignored} {stats.ignored_word}" if ignored else "")
                       + f" ({width}x{height} px)\n{Path(record['file_name']).name}")
            name = f"{rank:02d}_{safe_stem(record['file_name'])}.jpg"
            framed = side_by_side([picture], [heading])
            framed.save(staging / name, "JPEG", quality=90)
            written["pictures"].append({
                "image_id": record["image_id"], "file_name": record["file_name"],
                "picture": str(paths["ground_truth"] / name),
                "boxes": drawn["boxes"].tolist(), "labels": drawn["labels"].tolist(),
                "class_names": [_class_name(names, label) for label in drawn["labels"]],
                "ignored": drawn["ignored"].tolist(),
            })

    publish_directory(paths["ground_truth"], write_pictures, overwrite=overwrite, what="ground-truth pictures folder")
    written["ground_truth"] = str(paths["ground_truth"])
    return written


def _frame_counts(canvas, x0, y0, width, height, maximum, font):
    """Axes of a count plot (grid, frame, count ticks on the left); returns the count at the top."""
    ticks, top = _count_ticks(int(maximum))
    for tick in ticks:
        y = y0 + height * (1 - tick / top)
        canvas.line([x0, y, x0 + width, y], fill=GRID)
        tw, th = text_size(font, str(tick))
        canvas.text((x0 - tw - 6, y - th / 2), str(tick), fill=BLACK, font=font)
    canvas.rectangle([x0, y0, x0 + width, y0 + height], outline=BLACK)
    return top


def _x_ticks(canvas, x0, y, width, ticks, font):
    """Tick labels ``[(fraction of the width, text)]`` under an axis at height ``y``."""
    for fraction, text in ticks:
        tw, _ = text_size(font, text)
        canvas.line([x0 + fraction * width, y, x0 + fraction * width, y + 4], fill=BLACK)
        canvas.text((x0 + fraction * width - tw / 2, y + 6), text, fill=BLACK, font=font)


def _count_ticks(maximum, steps=5):
    """``(ticks, top)``: whole-number ticks 0, s, 2s, ... up to ``top >= maximum`` (s = 1, 2 or 5 x 10^k)."""
    if maximum <= 0:
        return [0, 1], 1
    raw = maximum / steps
    magnitude = 10 ** math.floor(math.log10(raw)) if raw >= 1 else 1
    step = max(1, next(s * magnitude for s in (1, 2, 5, 10) if s * magnitude >= raw))
    top = int(math.ceil(maximum / step) * step)
    return list(range(0, top + 1, step)), top


def _power_of_two(power):
    """Tick label of ``2 ** power``; the ends of the aspect axis also count what lies beyond them."""
    text = str(2 ** power) if power >= 0 else f"1/{2 ** -power}"
    return {-ASPECT_LIMIT: f"<={text}", ASPECT_LIMIT: f">={text}"}.get(power, text)


def _class_name(class_names, label):
    return class_names[int(label)] if 0 <= int(label) < len(class_names) else str(int(label))


def _short(name, limit=24):
    name = str(name)
    return name if len(name) <= limit else name[: limit - 3] + "..."
