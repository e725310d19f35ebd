"""What ``Trainer.build_data`` does with the data before anything trains (issue 20).

``max_boxes`` is the largest box count of a training image unless the recipe sets one, capped only
for memory (``options.resolve_max_boxes``); whatever it drops is named in the summary line and
``data_problems.txt``. Images too thin for the recipe's scale are left out and named. A validation
split without one readable image file is refused before training, in one line.
"""

import json

import numpy as np
import pytest
from PIL import Image

from gflv2_keras.cli import main as cli_main
from gflv2_keras.data.canvas import training_canvases
from gflv2_keras.training import options as options_module
from gflv2_keras.training.options import memory_box_cap, resolve_max_boxes, resolve_run
from gflv2_keras.training.trainer import DATA_PROBLEMS_FILE, Trainer

CROWDED = 150  # boxes of the crowded image: more than the old fixed max_boxes of 100


def _write_coco(folder, name, images, boxes_per_image, pixels=True):
    """A COCO file in ``folder``: ``images`` ``(file_name, height, width)``, ``boxes_per_image[i]`` small boxes each."""
    folder.mkdir(parents=True, exist_ok=True)
    annotations = []
    for image_id, ((_, height, width), count) in enumerate(zip(images, boxes_per_image), 1):
        for k in range(count):
            x, y = (3 * k) % (width - 8), (3 * (k // 10)) % (height - 8)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1,
                                "bbox": [x, y, 6, 6], "area": 36})
    content = {
        "images": [{"id": i, "file_name": f, "height": h, "width": w} for i, (f, h, w) in enumerate(images, 1)],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "item"}],
    }
    (folder / name).write_text(json.dumps(content))
    if pixels:
        for file_name, height, width in images:
            Image.fromarray(np.full((height, width, 3), 120, np.uint8)).save(folder / file_name)
    return str(folder / name)


@pytest.fixture
def crowded(tmp_path):
    images = [("shelf.png", 64, 96), ("a.png", 64, 80), ("b.png", 48, 64), ("c.png", 64, 64)]
    return _write_coco(tmp_path / "train", "train.json", images, [CROWDED, 3, 2, 5])


def _trainer(nano_recipe, tmp_path, train_data, **changes):
    recipe = nano_recipe(batch_per_replica=2, **changes)
    options = resolve_run(recipe, str(tmp_path / "work"), data_root=str(tmp_path), train_data=train_data,
                          train_images=str(tmp_path / "train"), evaluate=False)
    return Trainer(options)


def test_max_boxes_defaults_to_the_largest_count_so_nothing_is_dropped(nano_recipe, crowded, tmp_path, capsys):
    trainer = _trainer(nano_recipe, tmp_path, crowded)
    data = trainer.build_data()
    assert data.max_boxes == CROWDED and data.dropped_boxes == {}
    assert not (tmp_path / "work" / DATA_PROBLEMS_FILE).exists()
    trainer.describe(data, trainer.build_schedule(data))
    assert f"max_boxes {CROWDED}," in capsys.readouterr().out
    # Every box of the crowded image reaches the batch it is in.
    for images, targets in data.stream(0).take(3):
        counts = (targets["labels"].numpy() >= 0).sum(1)
        assert targets["boxes"].shape[1] == CROWDED
        if CROWDED in counts:
            break
    else:
        pytest.fail("the crowded image never came with all its boxes")


def test_a_smaller_max_boxes_names_what_it_drops(nano_recipe, crowded, tmp_path, capsys):
    trainer = _trainer(nano_recipe, tmp_path, crowded, max_boxes=4)
    data = trainer.build_data()
    assert data.max_boxes == 4 and data.dropped_boxes == {1: CROWDED - 4, 4: 1}
    listed = (tmp_path / "work" / DATA_PROBLEMS_FILE).read_text().splitlines()
    assert len(listed) == 2
    assert "image id 1 (" in listed[0]
    assert "shelf.png): 150 boxes but max_boxes is 4 (the recipe's max_boxes)" in listed[0]
    assert f"the last {CROWDED - 4} (annotation order) are not trained on" in listed[0]
    assert "image id 4 (" in listed[1] and "c.png): 5 boxes" in listed[1]
    trainer.describe(data, trainer.build_schedule(data))
    out = capsys.readouterr().out
    dropped = CROWDED - 4 + 1
    assert f"max_boxes 4 ({dropped} boxes of 2 images over it not trained on, listed in {DATA_PROBLEMS_FILE})" in out


def test_the_memory_cap_follows_its_rule(nano_recipe, crowded, tmp_path, monkeypatch):
    # The official canvases at 1333x800: the largest, 800x1344 (and its transpose), has
    # 100x168 + 50x84 + 25x42 + 13x21 + 7x11 = 22400 points over strides 8..128.
    canvases = training_canvases((1333, 800))
    assert max(h * w for h, w in canvases) == 800 * 1344
    per_box = 2 * 22400 * options_module.ASSIGNER_BYTES_PER_PAIR
    assert memory_box_cap(2, canvases) == options_module.ASSIGNER_MEMORY_BUDGET // per_box
    cap = memory_box_cap(2, canvases)
    assert resolve_max_boxes(None, cap, 2, canvases) == (cap, "")
    assert resolve_max_boxes(None, cap + 1, 2, canvases)[0] == cap
    assert resolve_max_boxes(None, 0, 2, canvases) == (1, "")
    assert resolve_max_boxes(7, 10_000, 2, canvases) == (7, " (the recipe's max_boxes)")
    # A budget that holds 100 boxes of this run's batch: the crowded image is capped, and it says why.
    canvases = training_canvases((128, 96), (64, 96))  # the nano recipe's
    budget = 100 * 2 * options_module.ASSIGNER_BYTES_PER_PAIR * _points(canvases)
    monkeypatch.setattr(options_module, "ASSIGNER_MEMORY_BUDGET", budget)
    data = _trainer(nano_recipe, tmp_path, crowded).build_data()
    assert data.max_boxes == 100 and data.dropped_boxes == {1: CROWDED - 100}
    listed = (tmp_path / "work" / DATA_PROBLEMS_FILE).read_text()
    assert "150 boxes but max_boxes is 100 (capped for memory: 2 images per replica" in listed


def _points(canvases):
    """Anchor points of the largest canvas, counted independently of ``ops.boxes``."""
    import math

    def side(n, stride):
        for _ in range(int(math.log2(stride))):
            n = -(-n // 2)
        return n

    return max(sum(side(h, s) * side(w, s) for s in (8, 16, 32, 64, 128)) for h, w in canvases)


def test_images_too_thin_for_the_recipe_scale_are_left_out_and_named(nano_recipe, tmp_path):
    # 32 px high, 9000 wide: fine at the official 1333x800 (resized 5 px high), nothing at the recipe's 128x96.
    images = [("ok.png", 64, 80), ("strip.png", 32, 9000)]
    data = _trainer(nano_recipe, tmp_path, _write_coco(tmp_path / "train", "train.json", images, [2, 2])).build_data()
    assert [r["image_id"] for r in data.dataset.records] == [1]
    listed = (tmp_path / "work" / DATA_PROBLEMS_FILE).read_text()
    assert "image id 2 (" in listed and "strip.png): 9000x32 image (width x height) would be resized to" in listed
    assert "at scale (128, 96)" in listed


def test_a_validation_split_without_one_readable_image_is_refused_before_training(nano_recipe, crowded, tmp_path,
                                                                                   capsys):
    val = _write_coco(tmp_path / "val", "val.json", [("v1.png", 64, 64), ("v2.png", 64, 64)], [1, 1], pixels=False)
    empty = tmp_path / "elsewhere"
    empty.mkdir()
    recipe = nano_recipe(batch_per_replica=2, eval_every_epochs=1)
    options = resolve_run(recipe, str(tmp_path / "work"), data_root=str(tmp_path), train_data=crowded,
                          train_images=str(tmp_path / "train"), val_data=val, val_images=str(empty))
    with pytest.raises(ValueError, match=r"val.json: no readable validation image \(2 of 2 image files missing"):
        Trainer(options).build_data()
    # The command line: one line, exit code 2, before any training step.
    capsys.readouterr()
    code = cli_main(["train", "--preset", "gflv2_test_r18_nano", "--from-scratch", "--data", crowded,
                     "--train-images", str(tmp_path / "train"), "--val-data", val, "--val-images", str(empty),
                     "--image-size", "128", "96", "--work-dir", str(tmp_path / "cli")])
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert "no readable validation image" in captured.err and "v1.png): file is missing" in captured.err
    assert "--no-eval" in captured.err and "Epoch" not in captured.out
