"""The training curve of a run as a picture (``curve.png``): loss and held-out AP per epoch.

Drawn with Pillow (no plotting library): the loss (left scale, 0 to its maximum) and, when the
run evaluated, ``val_AP`` and ``val_AP50`` (right scale, 0 to 1) against the epoch number.
"""

from PIL import Image, ImageDraw

SIZE = (720, 400)
MARGIN = (60, 30, 60, 50)  # left, top, right, bottom
SERIES = (("loss", (200, 60, 40), "left"), ("val_AP", (40, 90, 200), "right"), ("val_AP50", (40, 160, 90), "right"))


def draw_curve(history, path):
    """Writes the curve of ``history`` (one dict per epoch with ``epoch``, ``loss`` and optionally
    ``val_AP`` / ``val_AP50``) to ``path`` (PNG); returns ``path``, or None for an empty history."""
    if not history:
        return None
    width, height = SIZE
    left, top, right, bottom = MARGIN
    plot_w, plot_h = width - left - right, height - top - bottom
    image = Image.new("RGB", SIZE, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.rectangle([left, top, left + plot_w, top + plot_h], outline=(0, 0, 0))
    epochs = [h["epoch"] for h in history]
    first, last = min(epochs), max(epochs)
    span = max(last - first, 1)
    loss_max = max((h["loss"] for h in history if "loss" in h), default=1.0) or 1.0

    def x_of(epoch):
        return left + (epoch - first) / span * plot_w

    def y_of(value, scale_max):
        return top + plot_h - min(max(value / scale_max, 0.0), 1.0) * plot_h

    for i in range(5):  # horizontal grid and both scales
        fraction = i / 4
        y = top + plot_h - fraction * plot_h
        draw.line([left, y, left + plot_w, y], fill=(225, 225, 225))
        draw.text((4, y - 6), f"{fraction * loss_max:.3g}", fill=(200, 60, 40))
        draw.text((left + plot_w + 6, y - 6), f"{fraction:.2f}", fill=(40, 90, 200))
    for epoch in sorted(set(epochs)):
        draw.text((x_of(epoch) - 4, top + plot_h + 6), str(epoch), fill=(0, 0, 0))
    draw.text((left + plot_w / 2 - 15, height - 20), "epoch", fill=(0, 0, 0))
    legend_x = left + 8
    for key, colour, side in SERIES:
        points = [(x_of(h["epoch"]), y_of(h[key], loss_max if side == "left" else 1.0)) for h in history if key in h]
        if not points:
            continue
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        draw.text((legend_x, 8), f"{key} ({side})", fill=colour)
        legend_x += 130
    image.save(path)
    return path
