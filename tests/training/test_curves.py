"""``curve.png``: the loss / AP curve drawn with Pillow."""

import numpy as np
from PIL import Image

from gflv2_keras.training.curves import MARGIN, SERIES, SIZE, draw_curve


def test_points_land_where_the_values_say(tmp_path):
    history = [{"epoch": 1, "loss": 2.0, "val_AP": 0.1}, {"epoch": 2, "loss": 1.0}, {"epoch": 3, "loss": 0.5,
                                                                                     "val_AP": 0.6}]
    path = draw_curve(history, str(tmp_path / "curve.png"))
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert pixels.shape == (SIZE[1], SIZE[0], 3)
    left, top, right, bottom = MARGIN
    plot_w, plot_h = SIZE[0] - left - right, SIZE[1] - top - bottom
    colours = {key: colour for key, colour, _ in SERIES}
    # (epoch, value, scale max) -> pixel centre: x over epochs 1..3, y from the bottom of the plot.
    for key, epoch, value, scale in (("loss", 1, 2.0, 2.0), ("loss", 3, 0.5, 2.0), ("val_AP", 3, 0.6, 1.0)):
        x = round(left + (epoch - 1) / 2 * plot_w)
        y = round(top + plot_h - value / scale * plot_h)
        assert tuple(pixels[y, x]) == colours[key], (key, epoch, tuple(pixels[y, x]))
    assert draw_curve([], str(tmp_path / "none.png")) is None
