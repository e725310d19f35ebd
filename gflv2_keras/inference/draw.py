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
