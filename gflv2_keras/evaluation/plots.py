"""Pictures of an evaluation (Pillow): precision-recall curves, confusion matrix, worst and best images.

``write_evaluation_plots(folder, ...)`` writes, beside the metrics:

- ``pr_curves.png``: COCO's interpolated precision at the 101 recall points 0:0.01:1 for each
  class and for all classes (the mean over classes with ground truth), at IoU 0.50 and averaged
  over IoU 0.50:0.95; area "all", 100 detections per image. These are the numbers COCOeval
  averages: the mean of a curve over its 101 points *is* the AP printed beside it (``pr_curves``).
- ``confusion_matrix.png``: the classes and background at one IoU and score threshold
  (``matching.analyse_errors``); counts in the cells, colour = share of the row.
- ``examples/``: the images with the most and the fewest errors (false positives + false
  negatives at that operating point), ground truth and predictions side by side, each box
  coloured by what happened to it (``worst_01_NAME.jpg``, ..., ``best_01_NAME.jpg``, ...).

Files are written atomically (``utils.files``); an existing file or ``examples`` folder is
replaced only with ``overwrite=True``.
"""

import logging
import re
from pathlib import Path

import numpy as np

from gflv2_keras.evaluation import matching
from gflv2_keras.inference.draw import class_colour, draw_boxes, label_font, side_by_side, text_size
from gflv2_keras.utils.files import atomic_write, publish_directory, refuse_existing

logger = logging.getLogger(__name__)

PR_CURVES = "pr_curves.png"
CONFUSION_MATRIX = "confusion_matrix.png"
EXAMPLES = "examples"
RECALL_POINTS = np.linspace(0.0, 1.0, 101)  # COCOeval's recThrs
LEGEND_CLASSES = 20  # per-class legend entries up to this many classes
EXAMPLE_SIDE = (480, 1024)  # each example panel's longer side is brought into this range

FOUND, WRONG_CLASS, ERROR, GREY = (0, 190, 0), (255, 150, 0), (230, 20, 20), (150, 150, 150)
STATUS_COLOURS = {
    matching.TRUE_POSITIVE: FOUND, matching.WRONG_CLASS: WRONG_CLASS, matching.FALSE_POSITIVE: ERROR,
    matching.MISSED: ERROR, matching.CROWD: GREY, matching.IGNORED: GREY,
}
WHITE, BLACK, GRID = (255, 255, 255), (0, 0, 0), (225, 225, 225)


def plot_paths(folder):
    """``{"pr_curves", "confusion_matrix", "examples"}`` → the ``Path`` each is written to in ``folder``."""
    folder = Path(folder)
    return {"pr_curves": folder / PR_CURVES, "confusion_matrix": folder / CONFUSION_MATRIX,
            "examples": folder / EXAMPLES}


def check_plot_paths(folder, overwrite):
    """``FileExistsError`` (one line) if a picture would replace an existing file and ``overwrite`` is false."""
    for path in plot_paths(folder).values():
        refuse_existing(path, overwrite, "evaluation picture" if path.suffix else "evaluation examples folder")


def pr_curves(precision, area_index=0, max_dets_index=-1):
    """The precision-recall curves of a COCOeval ``eval["precision"]`` array.

    Args:
        precision: ``[T, R, K, A, M]`` (IoU thresholds 0.50:0.05:0.95, R = 101 recall points,
            classes, area ranges, max detections); -1 where a class has no ground truth.
        area_index: the area range (0: "all").
        max_dets_index: the max-detections setting (-1: the last, 100).

    Returns:
        dict: ``recall`` ``[R]``; for ``"iou50"`` (IoU 0.50, ``precision[0]``) and ``"iou50_95"``
        (at each recall point the mean over the IoU thresholds) a dict with ``per_class``
        ``[K, R]`` (NaN for a class without ground truth), ``all`` ``[R]`` (mean over the classes
        with ground truth; NaN if none), ``per_class_ap`` ``[K]`` and ``ap`` (the mean of the
        curve over its R points, -1 without ground truth: COCOeval's AP50 / AP).
    """
    values = np.asarray(precision, np.float64)[:, :, :, area_index, max_dets_index]  # [T, R, K]
    valid = values > -1
    curves = {"recall": RECALL_POINTS[: values.shape[1]]}
    for key, selected in (("iou50", slice(0, 1)), ("iou50_95", slice(None))):
        counts = valid[selected].sum(axis=0)  # [R, K]
        with np.errstate(invalid="ignore"):
            per_class = (np.where(valid[selected], values[selected], 0.0).sum(axis=0) / counts).T  # [K, R]
        has_gt = ~np.all(np.isnan(per_class), axis=1)
        every = per_class[has_gt].mean(axis=0) if has_gt.any() else np.full(values.shape[1], np.nan)
        curves[key] = {
            "per_class": per_class,
            "all": every,
            "per_class_ap": np.array([row.mean() if ok else -1.0 for row, ok in zip(per_class, has_gt)]),
            "ap": float(every.mean()) if has_gt.any() else -1.0,
        }
    return curves


def no_detection_precision(num_gt, iou_thresholds=10, recall_points=101):
    """The ``eval["precision"]`` COCOeval would give without detections: 0, -1 for classes without ground truth."""
    num_gt = np.asarray(num_gt)
    precision = np.zeros((iou_thresholds, recall_points, len(num_gt), 4, 3))
    precision[:, :, num_gt == 0] = -1.0
    return precision


def draw_pr_curves(curves, class_names, panel_size=(520, 520)):
    """The two precision-recall panels (IoU 0.50; mean over 0.50:0.95) of ``pr_curves`` as one picture.

    Thin lines: one per class (class colours of ``inference.draw.class_colour``, in the legend
    with their AP up to ``LEGEND_CLASSES`` classes); thick black: all classes.
    """
    from PIL import Image, ImageDraw

    font, title_font = label_font(14), label_font(17)
    plot_w, plot_h = panel_size
    left, top, bottom, gap = 56, 84, 48, 16
    show_classes = len(class_names) <= LEGEND_CLASSES
    names = [f"{n}" for n in class_names] + ["all classes"]
    # Entries read "NAME  0.123" or "NAME  (no boxes)": room for the longer one.
    legend_w = max(text_size(font, f"{n}  (no boxes)")[0] for n in names) + 40 if show_classes else 230
    panel_w = left + plot_w + gap + legend_w
    image = Image.new("RGB", (2 * panel_w + gap, top + plot_h + bottom), WHITE)
    canvas = ImageDraw.Draw(image)
    panels = (("iou50", "IoU 0.50", "AP50"), ("iou50_95", "mean over IoU 0.50:0.95", "AP"))
    for p, (key, where, metric) in enumerate(panels):
        x0 = p * (panel_w + gap) + left
        data = curves[key]
        canvas.text((x0 - left + 8, 8), f"Precision-recall, {where}: {metric} {data['ap']:.3f}", fill=BLACK,
                    font=title_font)
        canvas.text((x0 - left + 8, 32), "COCO interpolated precision, area all, 100 detections per image; "
                    "mean of the curve = the AP", fill=(90, 90, 90), font=label_font(12))

        def point(r, q, x0=x0):
            return x0 + r * plot_w, top + (1.0 - q) * plot_h

        for tick in np.linspace(0, 1, 6):
            gx, gy = point(tick, tick)
            canvas.line([gx, top, gx, top + plot_h], fill=GRID)
            canvas.line([x0, gy, x0 + plot_w, gy], fill=GRID)
            canvas.text((gx - 10, top + plot_h + 6), f"{tick:.1f}", fill=BLACK, font=font)
            canvas.text((x0 - 34, gy - 8), f"{tick:.1f}", fill=BLACK, font=font)
        canvas.rectangle([x0, top, x0 + plot_w, top + plot_h], outline=BLACK)
        canvas.text((x0 + plot_w / 2 - 22, top + plot_h + 26), "recall", fill=BLACK, font=font)
        canvas.text((x0 - left + 2, top - 30), "precision", fill=BLACK, font=font)
        recall = curves["recall"]
        for k, row in enumerate(data["per_class"]):
            if not np.isnan(row).all():
                canvas.line([point(r, q) for r, q in zip(recall, row)], fill=class_colour(k), width=2)
        if not np.isnan(data["all"]).all():
            canvas.line([point(r, q) for r, q in zip(recall, data["all"])], fill=BLACK, width=4)
        lx, ly = x0 + plot_w + gap, top
        entries = [("all classes", data["ap"], BLACK, 4)]
        if show_classes:
            entries += [(n, a, class_colour(k), 2) for k, (n, a) in enumerate(zip(class_names, data["per_class_ap"]))]
        for name, ap, colour, width in entries:
            canvas.line([lx, ly + 9, lx + 24, ly + 9], fill=colour, width=width)
            canvas.text((lx + 30, ly), f"{name}  {ap:.3f}" if ap >= 0 else f"{name}  (no boxes)", fill=BLACK, font=font)
            ly += 20
        if not show_classes:
            canvas.text((lx, ly + 4), f"{len(class_names)} classes: thin lines\n(per-class AP in the metrics)",
                        fill=(90, 90, 90), font=font)
    return image


def draw_confusion_matrix(errors):
    """The confusion matrix of an ``ErrorAnalysis`` as a picture (counts in the cells, colour = share of the row)."""
    from PIL import Image, ImageDraw

    matrix = errors.matrix
    names = list(errors.class_names) + ["background"]
    size = len(names)
    cell = int(np.clip(640 // size, 10, 64))
    font, title_font = label_font(max(8, min(13, cell - 2))), label_font(16)
    small = label_font(max(8, min(13, cell // 3)))
    label_w = max(text_size(font, n)[0] for n in names) + 10
    title_h = 64
    left, top = label_w + 24, title_h + label_w + 24
    title = (f"Confusion matrix at IoU {errors.iou_threshold:.2f}, score >= {errors.score_threshold:.2f}"
             " (greedy matching by score)")
    width = max(left + size * cell + 16, text_size(title_font, title)[0] + 16)
    image = Image.new("RGB", (width, top + size * cell + 16), WHITE)
    canvas = ImageDraw.Draw(image)
    canvas.text((8, 8), title, fill=BLACK, font=title_font)
    canvas.text((8, 32), "rows: ground truth, columns: predicted; colour: share of the row",
                fill=(90, 90, 90), font=label_font(12))
    rows = matrix.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(rows > 0, matrix / np.maximum(rows, 1), 0.0)
    for i in range(size):
        for j in range(size):
            x, y = left + j * cell, top + i * cell
            value = share[i, j]
            fill = tuple(int(round(255 - value * (255 - c))) for c in (20, 70, 160))
            canvas.rectangle([x, y, x + cell - 1, y + cell - 1], fill=fill, outline=GRID)
            if matrix[i, j] and cell >= 18:
                text = str(int(matrix[i, j]))
                tw, th = text_size(small, text)
                canvas.text((x + (cell - tw) / 2, y + (cell - th) / 2), text, font=small,
                            fill=WHITE if value > 0.5 else BLACK)
        tw, th = text_size(font, names[i])
        canvas.text((left - tw - 6, top + i * cell + (cell - th) / 2), names[i], fill=BLACK, font=font)
        column = Image.new("RGB", (label_w, th + 2), WHITE)
        ImageDraw.Draw(column).text((0, 0), names[i], fill=BLACK, font=font)
        column = column.rotate(90, expand=True)
        image.paste(column, (left + i * cell + (cell - column.width) // 2, top - 6 - label_w))
    axis_font = label_font(13)
    canvas.text((left, title_h - 8), "predicted", fill=BLACK, font=axis_font)
    axis = Image.new("RGB", (120, 18), WHITE)
    ImageDraw.Draw(axis).text((0, 0), "ground truth", fill=BLACK, font=axis_font)
    image.paste(axis.rotate(90, expand=True), (2, top))
    return image


def display_scale(width, height, side=EXAMPLE_SIDE):
    """The factor that brings a picture's longer side into ``side`` = ``(smallest, largest)`` pixels (1.0 inside it).

    Example panels and ground-truth pictures (``data.show``) are drawn at this scale: thumbnails
    are enlarged (nearest neighbour) so their labels stay readable, photos reduced.
    """
    longer = max(int(width), int(height), 1)
    return min(max(longer, side[0]), side[1]) / longer


def scaled_image(pixels, scale):
    """uint8 RGB ``[H, W, 3]`` (or a ``PIL.Image.Image``) as a ``PIL.Image.Image`` ``scale`` times its size
    (bilinear when reduced, nearest neighbour when enlarged: pixels stay visible)."""
    from PIL import Image

    image = pixels.convert("RGB") if isinstance(pixels, Image.Image) else Image.fromarray(np.asarray(pixels, np.uint8))
    if scale == 1.0:
        return image
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.BILINEAR if scale < 1 else Image.NEAREST)


def draw_example(pixels, match, class_names, score_threshold):
    """Ground truth and predictions of one image side by side, each box coloured by its status.

    Args:
        pixels: uint8 RGB ``[H, W, 3]`` (the image the boxes are in, xyxy pixels).
        match: its ``matching.ImageMatch``.
        class_names: names indexed by class index.
        score_threshold: the threshold the match used (for the title).

    Returns:
        A ``PIL.Image.Image``: left the ground truth (green found, orange found as another
        class, red missed, grey crowd), right the detections scored >= the threshold (green
        correct, orange wrong class, red false positive, grey in a crowd region).
    """
    pixels = np.asarray(pixels, np.uint8)
    scale = display_scale(pixels.shape[1], pixels.shape[0])
    image = scaled_image(pixels, scale)
    truth_texts = [("crowd " if status == matching.CROWD else "") + class_names[label]
                   for label, status in zip(match.gt_labels, match.gt_status)]
    truth = draw_boxes(image, match.gt_boxes * scale, truth_texts,
                       colours=[STATUS_COLOURS[s] for s in match.gt_status])
    shown = np.flatnonzero(match.det_status != matching.BELOW_THRESHOLD)
    shown = shown[np.argsort(-match.det_scores[shown], kind="stable")]
    texts = []
    for d in shown:
        text = f"{class_names[match.det_labels[d]]} {match.det_scores[d]:.2f}"
        if match.det_status[d] == matching.WRONG_CLASS:
            text += f" (is {class_names[match.gt_labels[match.det_match[d]]]})"
        texts.append(text)
    predicted = draw_boxes(image, match.det_boxes[shown] * scale, texts,
                           colours=[STATUS_COLOURS[match.det_status[d]] for d in shown])
    found = int(np.sum(match.gt_status == matching.TRUE_POSITIVE))
    titles = (
        f"image id {match.image_id}: {match.errors} errors\nground truth: {found} found (green), "
        f"{int(np.sum(match.gt_status == matching.WRONG_CLASS))} as another class (orange), "
        f"{int(np.sum(match.gt_status == matching.MISSED))} missed (red)",
        f"{match.false_positives} false positives, {match.false_negatives} false negatives\n"
        f"detections >= {score_threshold:.2f}: correct green, wrong class orange, false positive red",
    )
    return side_by_side([truth, predicted], titles)


def write_evaluation_plots(folder, precision, errors, image_files=None, num_examples=8, overwrite=False):
    """Writes ``pr_curves.png``, ``confusion_matrix.png`` and ``examples/`` into ``folder``.

    Args:
        folder: the output folder (created if needed).
        precision: COCOeval ``eval["precision"]`` ``[T, R, K, A, M]`` (classes in the order of
            ``errors.category_ids``), or None when there was no detection (every AP 0).
        errors: the ``matching.ErrorAnalysis`` of the same detections.
        image_files: ``{image_id: path}`` of the scored images; without it (or with
            ``num_examples=0``) no examples are drawn.
        num_examples: how many worst and how many best images.
        overwrite: replace existing pictures / ``examples`` folder (otherwise ``FileExistsError``).

    Returns:
        dict: the written ``pr_curves`` and ``confusion_matrix`` paths (str), ``examples``
        (the folder, or None) and ``example_images``: ``{"worst": [...], "best": [...]}`` of
        ``ImageMatch.summary()`` dicts with ``file_name`` and ``picture``.
    """
    paths = plot_paths(folder)
    check_plot_paths(folder, overwrite)
    paths["pr_curves"].parent.mkdir(parents=True, exist_ok=True)
    if precision is None:
        precision = no_detection_precision(errors.matrix[:-1].sum(axis=1))
    curves = draw_pr_curves(pr_curves(precision), errors.class_names)
    _save(curves, paths["pr_curves"], overwrite)
    _save(draw_confusion_matrix(errors), paths["confusion_matrix"], overwrite)
    written = {"pr_curves": str(paths["pr_curves"]), "confusion_matrix": str(paths["confusion_matrix"]),
               "examples": None, "example_images": {"worst": [], "best": []}}
    if image_files and num_examples > 0:
        worst, best = errors.ranked_images(num_examples)
        chosen = written["example_images"]

        def write_examples(staging):
            for kind, matches in (("worst", worst), ("best", best)):
                for rank, match in enumerate(matches, 1):
                    path = image_files.get(match.image_id)
                    pixels = _read_rgb(path)
                    if pixels is None:
                        continue
                    name = f"{kind}_{rank:02d}_{safe_stem(path)}.jpg"
                    draw_example(pixels, match, errors.class_names, errors.score_threshold).save(
                        staging / name, "JPEG", quality=90)
                    chosen[kind].append({**match.summary(), "file_name": str(path),
                                         "picture": str(paths["examples"] / name)})

        publish_directory(paths["examples"], write_examples, overwrite=overwrite, what="evaluation examples folder")
        written["examples"] = str(paths["examples"])
    return written


def _save(image, path, overwrite):
    refuse_existing(path, overwrite, "evaluation picture")
    atomic_write(path, lambda f: image.save(f, "PNG"))


def _read_rgb(path):
    """The image at ``path`` as uint8 RGB (decoded as the evaluation's ``tf.io.decode_image``: no EXIF
    rotation), or None (logged) if it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, ValueError, TypeError, Image.DecompressionBombError) as error:
        logger.warning("evaluation examples: %s skipped (%s)", path, error)
        return None


def safe_stem(path):
    """A file-name-safe version of the stem of ``path`` (at most 60 characters)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(str(path)).stem)[:60] or "image"
