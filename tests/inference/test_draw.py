"""Drawing: sizes follow the image, labels stay inside and apart, --hide-labels / --hide-conf, side by side."""

import numpy as np
import pytest
from PIL import Image

from gflv2_keras.inference.draw import (
    class_colour,
    draw_boxes,
    draw_detections,
    drawing_sizes,
    label_font,
    place_labels,
    side_by_side,
    text_size,
)


def _overlap(a, b):
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def _crowded(width, height, count=14, seed=0):
    rng = np.random.default_rng(seed)
    centre = rng.uniform(0.2, 0.8, (count, 2)) * [width, height]
    half = rng.uniform(0.05, 0.2, (count, 2)) * [width, height]
    boxes = np.concatenate([centre - half, centre + half], axis=1)
    boxes[0] = [-10, -10, width * 0.3, height * 0.3]  # reaching out of the top-left corner
    boxes[1] = [width * 0.7, height * 0.8, width + 5, height + 5]  # and of the bottom-right one
    return {"boxes": boxes, "confidence": rng.uniform(0.3, 1.0, count), "labels": rng.integers(0, 5, count)}


def _label_rectangles(picture, pixels, detections, **kwargs):
    """Label rectangles as ``draw_detections`` places them (same order, sizes and placement)."""
    width, height = picture.size
    _, font_size = drawing_sizes(width, height)
    font = label_font(font_size)
    order = np.argsort(-detections["confidence"], kind="stable")
    pad = max(1, font_size // 8)
    names = kwargs.get("class_names")
    sizes = []
    for i in order:
        text = f"{names[detections['labels'][i]]} {detections['confidence'][i]:.2f}"
        w, h = text_size(font, text)
        sizes.append((w + 2 * pad, h + 2 * pad))
    boxes = np.clip(detections["boxes"][order], 0, [width, height, width, height])
    return place_labels(boxes, sizes, width, height)


def test_line_width_and_font_follow_the_image_size():
    big_line, big_font = drawing_sizes(4000, 3000)
    small_line, small_font = drawing_sizes(160, 120)
    assert big_line >= 8 and small_line == 1
    # Shown at 1280 px wide, the 4000x3000 photo's labels are still >= 20 px tall; a 160x120
    # thumbnail's labels are under a tenth of its height.
    assert big_font * 1280 / 4000 >= 20 and small_font <= 120 / 10
    for width, height in ((640, 480), (1333, 800), (1920, 1080)):
        line, font = drawing_sizes(width, height)
        assert 0.015 <= font / ((width + height) / 2) <= 0.03 and line >= 1


@pytest.mark.parametrize("width, height", [(4000, 3000), (160, 120), (640, 480)])
def test_labels_stay_inside_the_image_and_apart_where_there_is_room(width, height):
    detections = _crowded(width, height)
    names = ["person", "bicycle", "car", "traffic light", "dog"]
    pixels = np.zeros((height, width, 3), np.uint8)
    picture = draw_detections(pixels, detections, names, min_score=0.0)
    rectangles = _label_rectangles(picture, pixels, detections, class_names=names)
    assert np.all(rectangles[:, :2] >= 0) and np.all(rectangles[:, 2] <= width) and np.all(rectangles[:, 3] <= height)
    # The drawn label backgrounds are where place_labels put them.
    drawn = np.asarray(picture)
    order = np.argsort(-detections["confidence"], kind="stable")
    x1, y1, x2, y2 = rectangles[-1]  # the last one is drawn on top of everything
    colour = class_colour(int(detections["labels"][order[-1]]))
    assert np.mean(np.all(drawn[y1:y2, x1:x2] == colour, axis=-1)) > 0.5
    if width >= 640:  # room enough: no label covers another
        assert all(_overlap(a, b) == 0 for i, a in enumerate(rectangles) for b in rectangles[i + 1:])


def test_labels_of_boxes_with_one_corner_go_to_another_corner():
    boxes = np.array([[100, 100, 300, 300]] * 3, np.float64)
    rectangles = place_labels(boxes, [(80, 20)] * 3, 640, 480)
    assert [tuple(r) for r in rectangles] == [(100, 80, 180, 100), (100, 100, 180, 120), (100, 300, 180, 320)]
    at_the_edge = place_labels(np.array([[600, 0, 640, 40]]), [(80, 20)], 640, 480)
    assert tuple(at_the_edge[0]) == (560, 0, 640, 20)  # shifted left and down into the image


def test_a_long_label_is_shortened_to_fit_the_image():
    picture = np.asarray(draw_boxes(np.zeros((60, 80, 3), np.uint8), [[5, 20, 70, 50]], ["a very long class name 0.99"],
                                    colours=[(255, 255, 255)]))
    label = np.all(picture[:20] == 255, axis=-1)  # the white label sits above the box (rows 0-19)
    assert 60 <= label.sum(axis=1).max() <= 80 and label[:, 0].any()


def test_hide_labels_and_hide_conf():
    pixels = np.full((240, 320, 3), 40, np.uint8)
    detections = {"boxes": np.array([[100.0, 100, 200, 200], [0, 0, 5, 5]]), "confidence": np.array([0.9, 0.1]),
                  "labels": np.array([2, 1])}
    colour = class_colour(2)

    def filled_width(picture):  # widest run of the class colour in the label rows above the box
        band = np.all(np.asarray(picture)[80:99] == colour, axis=-1)
        return int(band.sum(axis=1).max())

    full = draw_detections(pixels, detections, ["a", "b", "car"])
    no_conf = draw_detections(pixels, detections, ["a", "b", "car"], hide_conf=True)
    bare = draw_detections(pixels, detections, ["a", "b", "car"], hide_labels=True)
    assert filled_width(full) > filled_width(no_conf) > 0 and filled_width(bare) == 0
    # Boxes only: every changed pixel lies on the outline of the one box above min_score.
    changed = np.any(np.asarray(bare) != pixels, axis=-1)
    ys, xs = np.nonzero(changed)
    assert ys.min() == 100 and ys.max() == 200 and xs.min() == 100 and xs.max() == 200
    assert not changed[110:190, 110:190].any()


def test_padding_and_low_scores_are_not_drawn():
    pixels = np.zeros((50, 50, 3), np.uint8)
    detections = {"boxes": np.array([[10.0, 10, 30, 30]] * 2), "confidence": np.array([0.2, 0.9]),
                  "labels": np.array([0, -1])}
    np.testing.assert_array_equal(np.asarray(draw_detections(pixels, detections)), pixels)


def test_side_by_side_keeps_each_picture_whole():
    left = Image.new("RGB", (100, 80), (255, 0, 0))
    right = Image.new("RGB", (60, 120), (0, 0, 255))
    picture = np.asarray(side_by_side([left, right], ["ground truth\nsecond line", "predictions"]))
    assert np.sum(np.all(picture == (255, 0, 0), axis=-1)) == 100 * 80
    assert np.sum(np.all(picture == (0, 0, 255), axis=-1)) == 60 * 120
    assert picture.shape[1] > 160 and picture.shape[0] > 120
