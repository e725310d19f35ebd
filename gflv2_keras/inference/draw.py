"""Drawing boxes and labels on images (Pillow), sized for the image.

Boxes are xyxy pixels of the image they are drawn on (``x2 = x1 + width``; not clipped by the
caller). Line width and font size follow the image size (``drawing_sizes``): a 4000x3000 photo
gets labels that stay readable when it is shown at screen size, a 160x120 thumbnail gets small
ones. Labels are placed inside the image, above each box if there is room, and moved to another
corner of the box where they would cover a label already placed (``place_labels``; better-scored
boxes are labelled first).
"""

import colorsys
import functools

import numpy as np

# Line width and font size as fractions of the image's mean side ((H + W) / 2), with floors.
LINE_WIDTH_FRACTION = 0.003
FONT_SIZE_FRACTION = 0.022
MIN_LINE_WIDTH = 1
MIN_FONT_SIZE = 9


def class_colour(index):
    """A stable, distinct RGB colour per class index."""
    hue = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def drawing_sizes(width, height):
    """``(line_width, font_size)`` in pixels for an image of ``width`` x ``height`` pixels.

    Both grow linearly with the mean side: 640x480 → (2, 12), 1333x800 → (3, 23), 4000x3000 →
    (10, 77), 160x120 → (1, 9).
    """
    mean_side = (width + height) / 2
    return (max(MIN_LINE_WIDTH, round(LINE_WIDTH_FRACTION * mean_side)),
            max(MIN_FONT_SIZE, round(FONT_SIZE_FRACTION * mean_side)))


@functools.lru_cache(maxsize=32)
def label_font(size):
    """Pillow's built-in font at ``size`` pixels (its fixed-size bitmap font on Pillow < 10.1)."""
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except (TypeError, AttributeError, OSError):  # Pillow < 10.1 or no FreeType: one size only
        return ImageFont.load_default()


def text_size(font, text):
    """``(width, height)`` of ``text`` drawn at the origin with ``font`` (height: the font's full line)."""
    left, _, right, _ = font.getbbox(text)
    return right - min(left, 0), font.getbbox("Ag|jy")[3]


def label_texts(labels, scores=None, class_names=None, hide_labels=False, hide_conf=False):
    """The label of each box: ``"name 0.87"`` (``"name"`` without scores or with ``hide_conf``),
    None for every box with ``hide_labels``. ``class_names`` indexed by label; the index otherwise."""
    texts = []
    for i, label in enumerate(labels):
        if hide_labels:
            texts.append(None)
            continue
        known = class_names is not None and 0 <= int(label) < len(class_names)
        name = class_names[int(label)] if known else str(int(label))
        texts.append(name if scores is None or hide_conf else f"{name} {float(scores[i]):.2f}")
    return texts


def place_labels(boxes, sizes, width, height):
    """Where to put each box's label: inside the image, without covering labels placed before it.

    Args:
        boxes: ``[K, 4]`` xyxy pixels, in labelling order (best first).
        sizes: ``K`` ``(label_width, label_height)`` in pixels.
        width, height: the image size.

    Returns:
        int ``[K, 4]`` xyxy label rectangles. Each label tries, in order: above the box's top-left
        corner, inside it, below the bottom-left corner, inside it, then the same at the right
        corners; every position is shifted into the image. The first one that covers no earlier
        label is taken, otherwise the one that covers the least.
    """
    placed = np.zeros((0, 4), np.int64)
    for (x1, y1, x2, y2), (w, h) in zip(np.asarray(boxes, np.float64).reshape(-1, 4), sizes):
        corners = [(x1, y1 - h), (x1, y1), (x1, y2), (x1, y2 - h),
                   (x2 - w, y1 - h), (x2 - w, y1), (x2 - w, y2), (x2 - w, y2 - h)]
        candidates = []
        for x, y in corners:
            x = int(round(min(max(x, 0), max(width - w, 0))))
            y = int(round(min(max(y, 0), max(height - h, 0))))
            candidates.append([x, y, x + w, y + h])
        candidates = np.asarray(candidates, np.int64)
        low = np.maximum(candidates[:, None, :2], placed[None, :, :2])
        high = np.minimum(candidates[:, None, 2:], placed[None, :, 2:])
        covered = np.prod(np.clip(high - low, 0, None), axis=-1).sum(axis=1)
        placed = np.concatenate([placed, candidates[int(np.argmin(covered))][None]], axis=0)
    return placed


def draw_boxes(pixels, boxes, texts=None, colours=None, labels=None, line_width=None, font_size=None):
    """Draws boxes, then their labels on top, on a copy of ``pixels``.

    Args:
        pixels: uint8 RGB ``[H, W, 3]`` or a ``PIL.Image.Image``.
        boxes: ``[K, 4]`` xyxy pixels of this image, in labelling order (best first).
        texts: ``K`` label strings, None entries (or ``texts=None``) for boxes without a label;
            a label wider than the image is shortened with "...".
        colours: ``K`` RGB tuples (default ``class_colour`` of ``labels``, else one colour).
        labels: ``[K]`` class indices, for the default colours.
        line_width, font_size: pixels (default ``drawing_sizes`` of the image).

    Returns:
        A ``PIL.Image.Image`` (RGB).
    """
    from PIL import Image, ImageDraw

    image = pixels.convert("RGB") if isinstance(pixels, Image.Image) else Image.fromarray(np.asarray(pixels, np.uint8))
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    default_width, default_font = drawing_sizes(*image.size)
    line_width = line_width or default_width
    font = label_font(font_size or default_font)
    if colours is None:
        colours = [class_colour(int(c)) for c in labels] if labels is not None else [class_colour(0)] * len(boxes)
    texts = [None] * len(boxes) if texts is None else list(texts)
    canvas = ImageDraw.Draw(image)
    width, height = image.size
    for box, colour in zip(boxes, colours):
        x1, y1, x2, y2 = np.clip(box, [0, 0, 0, 0], [width - 1, height - 1, width - 1, height - 1])
        canvas.rectangle([x1, y1, max(x2, x1), max(y2, y1)], outline=tuple(colour), width=line_width)
    shown = [i for i, text in enumerate(texts) if text]
    pad = max(1, font.size // 8) if hasattr(font, "size") else 1
    fitted, sizes = [], []
    for i in shown:
        text = _fit_text(font, texts[i], width - 2 * pad)
        w, h = text_size(font, text)
        fitted.append(text)
        sizes.append((w + 2 * pad, h + 2 * pad))
    outside = np.clip(boxes[shown], [0, 0, 0, 0], [width, height, width, height]) if shown else np.zeros((0, 4))
    for i, text, (x1, y1, x2, y2) in zip(shown, fitted, place_labels(outside, sizes, width, height)):
        colour = tuple(colours[i])
        canvas.rectangle([x1, y1, x2 - 1, y2 - 1], fill=colour)
        canvas.text((x1 + pad, y1 + pad), text, fill=_text_colour(colour), font=font)
    return image


def draw_detections(pixels, detections, class_names=None, min_score=0.3, hide_labels=False, hide_conf=False,
                    line_width=None, font_size=None):
    """Draw labelled boxes on a copy of ``pixels``.

    Args:
        pixels: uint8 RGB ``[H, W, 3]`` (or a ``PIL.Image.Image``).
        detections: ``{"boxes": [K, 4] xyxy pixels, "confidence": [K], "labels": [K]}``
            (``detector.detect(pixels, bounding_box_format="xyxy")``; labels < 0 are padding).
        class_names: optional names indexed by label (class id).
        min_score: detections with confidence below this are not drawn.
        hide_labels: draw the boxes only.
        hide_conf: labels name the class without the score.
        line_width, font_size: pixels (default: from the image size, ``drawing_sizes``).

    Returns:
        A ``PIL.Image.Image``; better-scored detections get their labels placed first.
    """
    scores = np.asarray(detections["confidence"], np.float64).reshape(-1)
    labels = np.asarray(detections["labels"]).reshape(-1).astype(np.int64)
    boxes = np.asarray(detections["boxes"], np.float64).reshape(-1, 4)
    keep = np.flatnonzero((scores >= min_score) & (labels >= 0))
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    texts = label_texts(labels[keep], scores[keep], class_names, hide_labels, hide_conf)
    return draw_boxes(pixels, boxes[keep], texts, labels=labels[keep], line_width=line_width, font_size=font_size)


def side_by_side(images, titles=None, gap=None, background=(255, 255, 255)):
    """Pictures next to each other, each under its title.

    Args:
        images: ``PIL.Image.Image`` s (or uint8 RGB arrays), shown at their own size, top-aligned.
        titles: one string per image (may hold several lines), or None.
        gap: pixels between pictures (default from the tallest picture's ``drawing_sizes``).

    Returns:
        A ``PIL.Image.Image``.
    """
    from PIL import Image, ImageDraw

    images = [im if isinstance(im, Image.Image) else Image.fromarray(np.asarray(im, np.uint8)) for im in images]
    titles = list(titles) if titles is not None else [""] * len(images)
    tallest = max(images, key=lambda im: im.height)
    _, font_size = drawing_sizes(*tallest.size)
    font = label_font(font_size)
    gap = gap if gap is not None else max(4, font_size // 2)
    line_height = text_size(font, "Ag")[1] + 2
    title_height = gap + max(len(t.splitlines()) for t in titles) * line_height if any(titles) else 0
    width = sum(im.width for im in images) + gap * (len(images) + 1)
    picture = Image.new("RGB", (width, title_height + tallest.height + gap), background)
    canvas = ImageDraw.Draw(picture)
    x = gap
    for image, title in zip(images, titles):
        for row, line in enumerate(title.splitlines()):
            shown = _fit_text(font, line, image.width)
            canvas.text((x, gap // 2 + row * line_height), shown, fill=(0, 0, 0), font=font)
        picture.paste(image, (x, title_height))
        x += image.width + gap
    return picture


def _fit_text(font, text, max_width):
    """``text``, shortened with "..." until it is at most ``max_width`` pixels wide."""
    if text_size(font, text)[0] <= max_width:
        return text
    while len(text) > 1 and text_size(font, text + "...")[0] > max_width:
        text = text[:-1]
    return text + "..."


def _text_colour(background):
    r, g, b = background[:3]
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)


SIDE_NAMES = ("left", "top", "right", "bottom")


def draw_side_bands(pixels, detections, min_score=0.3, alpha=0.4):
    """Shade a band of +-1 standard deviation across each edge of each box (uncertain = wide).

    Args:
        pixels: uint8 RGB ``[H, W, 3]``.
        detections: ``detector.detect(pixels, bounding_box_format="xyxy",
            return_box_distributions=True)``: ``"boxes"`` ``[K, 4]`` xyxy pixels, ``"confidence"``
            ``[K]``, ``"labels"`` ``[K]``, ``"side_std"`` ``[K, 4]`` (left, top, right, bottom) pixels.
        min_score: detections with confidence below this are not shaded.
        alpha: opacity of the bands.

    Returns:
        uint8 RGB ``[H, W, 3]`` (draw the boxes on it with ``draw_detections``).
    """
    from PIL import Image, ImageDraw

    base = Image.fromarray(np.asarray(pixels, np.uint8)).convert("RGBA")
    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    canvas = ImageDraw.Draw(overlay)
    for box, score, label, std in zip(
        detections["boxes"], detections["confidence"], detections["labels"], detections["side_std"]
    ):
        if score < min_score:
            continue
        fill = class_colour(int(label)) + (int(alpha * 255),)
        x1, y1, x2, y2 = (float(v) for v in box)
        left, top, right, bottom = (float(v) for v in std)
        for band in (
            [x1 - left, y1, x1 + left, y2],
            [x1, y1 - top, x2, y1 + top],
            [x2 - right, y1, x2 + right, y2],
            [x1, y2 - bottom, x2, y2 + bottom],
        ):
            canvas.rectangle(band, fill=fill)
    return np.asarray(Image.alpha_composite(base, overlay).convert("RGB"))


def draw_side_distributions(detection, title="", panel_size=(360, 96)):
    """A small picture of one detection's four side distributions (Pillow only).

    Args:
        detection: one detection's ``"side_distributions"`` ``[4, R + 1]``, ``"side_offsets"``,
            ``"side_std"``, ``"side_topk_mass"`` and ``"bin_widths"`` (each ``[4]``, pixels),
            e.g. row ``i`` of every key of ``detector.detect(..., return_box_distributions=True)``.
        title: text above the panels.
        panel_size: ``(width, height)`` of each side's panel.

    Returns:
        A ``PIL.Image.Image``: one panel per side (left, top, right, bottom), bar ``j`` the
        probability that the side lies ``j`` bins from the anchor point, a red line at the expected
        distance (what the box uses) and a shaded +-1 std interval.
    """
    from PIL import Image, ImageDraw

    probs = np.asarray(detection["side_distributions"], np.float64)
    bins = probs.shape[-1]
    width, height = panel_size
    header, margin, footer = 18, 8, 14
    image = Image.new("RGB", (width, header + 4 * (height + footer)), (255, 255, 255))
    canvas = ImageDraw.Draw(image)
    canvas.text((margin, 3), title, fill=(0, 0, 0))
    bar = (width - 2 * margin) / bins
    for side, name in enumerate(SIDE_NAMES):
        top = header + side * (height + footer)
        base = top + height - 14
        scale = (height - 30) / max(probs[side].max(), 1e-6)
        bin_width = float(detection["bin_widths"][side])

        def x_at(distance_px):
            return margin + (distance_px / bin_width + 0.5) * bar

        mean, std = float(detection["side_offsets"][side]), float(detection["side_std"][side])
        canvas.rectangle([x_at(mean - std), top + 14, x_at(mean + std), base], fill=(255, 215, 200))
        for j, p in enumerate(probs[side]):
            left = margin + j * bar
            canvas.rectangle([left + 1, base - p * scale, left + bar - 1, base], fill=(70, 110, 180))
        canvas.line([x_at(mean), top + 14, x_at(mean), base], fill=(220, 30, 30), width=2)
        canvas.line([margin, base, width - margin, base], fill=(0, 0, 0))
        mass = float(detection["side_topk_mass"][side])
        canvas.text(
            (margin, top), f"{name}: {mean:.1f} +- {std:.1f} px   top-k mass {mass:.2f}", fill=(0, 0, 0)
        )
        canvas.text((margin, base + 1), f"0 .. {bins - 1} bins of {bin_width:.1f} px", fill=(90, 90, 90))
    return image
