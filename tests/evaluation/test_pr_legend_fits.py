"""``pr_curves.png``: every legend entry fits in the picture, ``(no boxes)`` ones included."""

import numpy as np

from gflv2_keras.evaluation.plots import draw_pr_curves, no_detection_precision, pr_curves


def test_the_legend_of_a_class_without_boxes_is_not_cut_at_the_edge():
    names = ["rectangle", "ellipse", "a_much_longer_name", "cross"]
    picture = np.asarray(draw_pr_curves(pr_curves(no_detection_precision(np.array([3, 0, 0, 2]))), names))
    assert (picture[:, -8:] == 255).all()  # a white margin on the right: no text reaches the edge
