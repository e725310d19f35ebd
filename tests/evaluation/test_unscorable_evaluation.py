"""``gflv2 evaluate`` runs that can score nothing end in one error line and exit code 2, not AP 0 (issue 20)."""

import json

import numpy as np
from PIL import Image

from gflv2_keras.cli import main

NANO_SCALE = [128, 96]


def _write_coco(folder, images, boxes, pixels=True):
    """``folder/val.json`` of ``images`` ``(file_name, height, width)``; ``boxes[i]`` xywh boxes of image i."""
    folder.mkdir(parents=True, exist_ok=True)
    annotations = []
    for image_id, image_boxes in enumerate(boxes, 1):
        for box in image_boxes:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "bbox": box,
                                "area": box[2] * box[3]})
    content = {
        "images": [{"id": i, "file_name": f, "height": h, "width": w} for i, (f, h, w) in enumerate(images, 1)],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "rectangle"}],
    }
    (folder / "val.json").write_text(json.dumps(content))
    if pixels:
        for file_name, height, width in images:
            Image.fromarray(np.full((height, width, 3), 120, np.uint8)).save(folder / file_name)
    return str(folder / "val.json")


IMAGES = [("a.png", 64, 80), ("b.png", 48, 64)]


def _evaluate(capsys, path, preset="gflv2_test_r18_nano", *extra):
    capsys.readouterr()
    code = main(["evaluate", "--preset", preset, "--data", path, "--no-plots", *extra])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured


def test_every_image_missing_is_one_line_and_exit_2(tmp_path, capsys):
    path = _write_coco(tmp_path / "data", IMAGES, [[[4, 4, 20, 20]], [[5, 5, 10, 10]]], pixels=False)
    code, captured = _evaluate(capsys, path)
    assert code == 2 and len(captured.err.strip().splitlines()) == 1, captured
    assert "val.json: no readable evaluation image (2 of 2 image files missing or unreadable" in captured.err
    assert "a.png): file is missing" in captured.err and "AP" not in captured.out


def test_no_ground_truth_box_is_one_line_and_exit_2(tmp_path, capsys):
    path = _write_coco(tmp_path / "data", IMAGES, [[], []])
    code, captured = _evaluate(capsys, path)
    assert code == 2 and len(captured.err.strip().splitlines()) == 1, captured
    assert "have no ground-truth box" in captured.err and "AP is undefined" in captured.err


def test_the_first_max_images_all_missing_is_one_line(tmp_path, capsys):
    path = _write_coco(tmp_path / "data", IMAGES, [[[4, 4, 20, 20]], [[5, 5, 10, 10]]])
    (tmp_path / "data" / "a.png").unlink()
    code, captured = _evaluate(capsys, path, "gflv2_test_r18_nano", "--max-images", "1")
    assert code == 2 and "none of the first 1 images (--max-images) is readable" in captured.err
    assert "a.png): file is missing" in captured.err


def test_images_that_fail_while_running_end_in_one_line(tmp_path, capsys, monkeypatch):
    from gflv2_keras.data.image_io import ImageReadError
    from gflv2_keras.evaluation import cli as evaluate_cli
    from gflv2_keras.evaluation import coco_evaluator

    class NeverRun:  # the files pass the header check, then none decodes: the detector never runs
        input_scale = NANO_SCALE

        def detect(self, image):
            raise AssertionError("no image should reach the detector")

    def undecodable(record):
        raise ImageReadError(record["file_name"], "corrupt data")

    monkeypatch.setattr(evaluate_cli, "load_detector", lambda preset, dtype: NeverRun())
    monkeypatch.setattr(coco_evaluator, "read_record_image", undecodable)
    path = _write_coco(tmp_path / "data", IMAGES, [[[4, 4, 20, 20]], [[5, 5, 10, 10]]])
    code, captured = _evaluate(capsys, path, "fake")
    assert code == 2 and len(captured.err.strip().splitlines()) == 1, captured
    assert "no image could be read, nothing scored" in captured.err and "corrupt data" in captured.err
    assert "COCO bbox on" not in captured.out
