"""Drawing detections on an image (Pillow)."""

import colorsys

import numpy as np


def class_colour(index):
    """A stable, distinct RGB colour per class index."""
    hue = (index * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(pixels, detections, class_names=None, min_score=0.3):
    """Draw labelled boxes on a copy of ``pixels``.

    Args:
        pixels: uint8 RGB ``[H, W, 3]``.
        detections: ``{"boxes": [K, 4] xyxy pixels, "confidence": [K], "labels": [K]}``
            (``detector.detect(pixels, bounding_box_format="xyxy")``).
        class_names: optional names indexed by label (class id).
        min_score: detections with confidence below this are not drawn.

    Returns:
        A ``PIL.Image.Image``.
    """
    from PIL import Image, ImageDraw

    image = Image.fromarray(np.asarray(pixels, np.uint8))
    canvas = ImageDraw.Draw(image)
    for box, score, label in zip(detections["boxes"], detections["confidence"], detections["labels"]):
        if score < min_score:
            continue
        colour = class_colour(int(label))
        x1, y1, x2, y2 = (float(v) for v in box)
        canvas.rectangle([x1, y1, x2, y2], outline=colour, width=2)
        label = f"{class_names[int(label)] if class_names else int(label)} {score:.2f}"
        left, top, right, bottom = canvas.textbbox((x1, y1), label)
        canvas.rectangle([left, top - (bottom - top) - 2, right + 2, top], fill=colour)
        canvas.text((x1 + 1, top - (bottom - top) - 2), label, fill=(0, 0, 0))
    return image
