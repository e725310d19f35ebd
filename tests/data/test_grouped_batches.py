"""Orientation-grouped batches on static canvases: padding cost, determinism, shapes."""

import numpy as np
import pytest

from gflv2_keras.data.canvas import training_canvases
from gflv2_keras.data.grouping import batch_plan, build_grouped_dataset, padded_pixel_ratio

# A COCO-like size mix: landscape 4:3 and 3:2, portrait, some square.
SIZE_MIX = [((480, 640), 0.40), ((427, 640), 0.30), ((640, 640), 0.05), ((640, 480), 0.15), ((640, 427), 0.10)]


def _records(count=1600, seed=0):
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(SIZE_MIX), count, p=[p for _, p in SIZE_MIX])
    return [{"height": SIZE_MIX[i][0][0], "width": SIZE_MIX[i][0][1]} for i in picks]


@pytest.mark.parametrize("multiscale_range", [None, (480, 960)])
def test_padded_pixel_ratio_is_close_to_official_dynamic_padding(multiscale_range):
    report = padded_pixel_ratio(_records(), 16, (1333, 800), multiscale_range, seed=0)
    print(f"\n{multiscale_range}: square canvas {report['square_ratio']:.3f} -> grouped canvases "
          f"{report['ratio']:.3f} ({report['canvases']} canvases, {report['batches']} batches)")
    assert report["ratio"] <= 1.10
    assert report["square_ratio"] > 1.4  # what the single square canvas cost


def test_canvas_rule_for_the_official_scales():
    assert training_canvases((1333, 800)) == sorted(
        [(800, 800), (800, 1088), (800, 1216), (800, 1344), (1088, 800), (1216, 800), (1344, 800)]
    )
    ms = training_canvases((1333, 800), (480, 960))
    assert {h for h, w in ms if w >= h} == {640, 800, 960} and (960, 1344) in ms and (1344, 960) in ms


def test_plan_groups_by_orientation_and_resumes_at_any_batch():
    records = _records(45, seed=1)
    landscape = np.array([r["width"] >= r["height"] for r in records])

    def plan(**kwargs):
        ds, _ = batch_plan(records, 4, (1333, 800), (480, 960), 0.5, seed=7, **kwargs)
        return [(b["batch"], tuple(b["index"]), tuple(b["canvas"])) for b in ds.as_numpy_iterator()]

    full = plan(num_epochs=2)
    for number, index, (height, width) in full:
        assert len(set(landscape[list(index)])) == 1  # one orientation per batch
        assert (width >= height) == landscape[index[0]] or height == width
    assert [b[0] for b in full] == list(range(len(full)))
    assert plan(num_epochs=2, skip_batches=5) == full[5:]
    assert plan(epoch=1, num_epochs=1) == full[len(full) // 2:]
    assert plan(num_epochs=1) != plan(epoch=1, num_epochs=1)  # every epoch its own order


def test_grouped_stream_images_have_their_canvas_shapes(tmp_path):
    from gflv2_keras.data.coco import load_coco
    from gflv2_keras.data.synthetic import make_synthetic_coco

    paths = make_synthetic_coco(str(tmp_path), num_train=9, num_val=1, seed=2)
    dataset = load_coco(paths["train_annotations"], paths["train_images"], for_training=True)
    canvases = training_canvases((128, 96), (64, 96))
    ds = build_grouped_dataset(dataset, 2, scale=(128, 96), multiscale_range=(64, 96), shuffle_seed=3,
                               max_boxes=8, num_epochs=1)
    batches = list(ds.as_numpy_iterator())
    assert len(batches) >= 5
    for images, targets in batches:
        assert images.shape[0] == 2 and tuple(images.shape[1:3]) in canvases
        assert targets["boxes"].shape == (2, 8, 4)
        for image, (h, w) in zip(images, targets["image_shape"]):
            assert h <= images.shape[1] and w <= images.shape[2]
            assert not image[h:].any() and not image[:, w:].any()  # zero padding past the image
