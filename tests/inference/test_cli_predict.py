"""``gflv2 predict`` on generated images, including bad files."""

import json

import numpy as np
import pytest
from PIL import Image

from gflv2_keras.cli import main
from gflv2_keras.inference.images import ImageReadError, read_image


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(root / "rgb.png")
    Image.fromarray(rng.integers(0, 255, (50, 40), dtype=np.uint8), "L").save(root / "gray.png")
    Image.fromarray(rng.integers(0, 255, (40, 60, 4), dtype=np.uint8), "RGBA").save(root / "rgba.png")
    Image.fromarray(rng.integers(0, 65535, (30, 30), dtype=np.uint16)).save(root / "deep16.png")
    (root / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg" + bytes(range(200)))
    (root / "empty_dir").mkdir()
    return root


def test_read_image_conversions(images):
    assert read_image(images / "rgb.png").pixels.shape == (70, 90, 3)
    gray = read_image(images / "gray.png")
    assert gray.pixels.shape == (50, 40, 3) and any("grayscale" in n for n in gray.notes)
    rgba = read_image(images / "rgba.png")
    assert rgba.pixels.shape == (40, 60, 3) and any("alpha" in n for n in rgba.notes)
    deep = read_image(images / "deep16.png")
    assert deep.pixels.dtype == np.uint8 and deep.pixels.max() > 200  # scaled, not clipped to 255 everywhere
    assert any("8-bit" in n for n in deep.notes)
    with pytest.raises(ImageReadError, match="corrupt.jpg: not a readable image"):
        read_image(images / "corrupt.jpg")
    with pytest.raises(ImageReadError, match="missing.png: file not found"):
        read_image(images / "missing.png")


def test_predict_cli_processes_good_files_and_names_bad_ones(images, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["predict", str(images), str(images / "missing.png"), str(images / "empty_dir"),
                 "--preset", "gflv2_test_r18_nano", "--random-weights", "--output", str(out)])
    captured = capsys.readouterr()
    assert code == 1
    for name in ("corrupt.jpg", "missing.png", "empty_dir"):
        assert name in captured.err
    for stem in ("rgb", "gray", "rgba", "deep16"):
        record = json.loads((out / f"{stem}.json").read_text())
        assert record["box_format"].startswith("xyxy")
        assert (out / f"{stem}.jpg").is_file()
    assert json.loads((out / "rgb.json").read_text())["width"] == 90
    assert not (out / "corrupt.json").exists()


def test_predict_cli_writes_detections_in_original_pixels(tmp_path, capsys, nano_factory):
    from gflv2_keras import GFLV2Detector

    detector = nano_factory(test_config={"score_threshold": 0.0, "max_detections": 5})
    detector.save_to_preset(tmp_path / "preset")
    Image.fromarray(np.full((120, 200, 3), 128, np.uint8)).save(tmp_path / "a.png")
    code = main(["predict", str(tmp_path / "a.png"), "--preset", str(tmp_path / "preset"), "--output", str(tmp_path / "o")])
    assert code == 0
    dets = json.loads((tmp_path / "o" / "a.json").read_text())["detections"]
    # top 5 after NMS, minus any of the redundant background column (dropped last, as bbox2result does)
    assert 1 <= len(dets) <= 5 and all(0 <= d["label"] < 3 for d in dets)
    boxes = np.array([d["box"] for d in dets])
    assert boxes[:, [0, 2]].max() <= 200.01 and boxes[:, [1, 3]].max() <= 120.01
    direct = detector.detect(np.full((120, 200, 3), 128, np.uint8))
    np.testing.assert_allclose(boxes, direct["boxes"], atol=0.006)  # JSON rounds to 2 decimals
    assert [d["label"] for d in dets] == direct["labels"].tolist()
    np.testing.assert_allclose([d["confidence"] for d in dets], direct["confidence"], atol=1e-5)

    # A preset in another bounding_box_format still writes xyxy pixels.
    relative = GFLV2Detector.from_preset(str(tmp_path / "preset"), bounding_box_format="rel_yxyx")
    relative.save_to_preset(tmp_path / "rel_preset")
    assert json.loads((tmp_path / "rel_preset" / "task.json").read_text())["config"]["bounding_box_format"] == "rel_yxyx"
    code = main(["predict", str(tmp_path / "a.png"), "--preset", str(tmp_path / "rel_preset"), "--output", str(tmp_path / "r")])
    assert code == 0
    assert json.loads((tmp_path / "r" / "a.json").read_text())["detections"] == dets


def test_predict_cli_without_images_fails_clearly(tmp_path, capsys):
    (tmp_path / "nothing").mkdir()
    assert main(["predict", str(tmp_path / "nothing"), "--preset", "gflv2_test_r18_nano"]) == 2
    assert "folder has no images" in capsys.readouterr().err


def _checksums(folder):
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_predict_never_writes_into_the_input_folder(tmp_path, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(photos / "holiday.jpg")
    before = _checksums(photos)
    for output in (photos, photos / "predictions"):
        code = main(["predict", str(photos), "--preset", "gflv2_test_r18_nano", "--random-weights", "--output", str(output)])
        error = capsys.readouterr().err
        assert code == 2 and "inside the input folder" in error and "Traceback" not in error
        assert _checksums(photos) == before and not (photos / "predictions").exists()


def test_predict_refuses_to_replace_earlier_outputs_without_overwrite(tmp_path, capsys):
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.json").write_text("the user's own notes")
    args = ["predict", str(tmp_path / "a.png"), "--preset", "gflv2_test_r18_nano", "--random-weights", "--output", str(out)]
    assert main(args) == 2
    assert "already exist" in capsys.readouterr().err and (out / "a.json").read_text() == "the user's own notes"
    assert main(args + ["--overwrite"]) == 0
    assert json.loads((out / "a.json").read_text())["width"] == 50
    assert not [p for p in out.iterdir() if ".tmp-" in p.name]


def test_a_decompression_bomb_is_skipped_and_the_rest_processed(tmp_path, capsys):
    from PIL import Image as PILImage

    limit = PILImage.MAX_IMAGE_PIXELS
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(np.zeros((300, 400, 3), np.uint8)).save(inputs / "a_huge.png")
    Image.fromarray(np.full((30, 40, 3), 200, np.uint8)).save(inputs / "b_small.png")
    try:
        code = main(["predict", str(inputs), "--preset", "gflv2_test_r18_nano", "--random-weights",
                     "--output", str(tmp_path / "out"), "--max-image-pixels", "100000"])
    finally:
        PILImage.MAX_IMAGE_PIXELS = limit
    captured = capsys.readouterr()
    assert code == 1 and "a_huge.png: image larger than the limit of 100,000 pixels" in captured.err
    assert (tmp_path / "out" / "b_small.json").is_file() and not (tmp_path / "out" / "a_huge.json").exists()
    assert "Traceback" not in captured.err


def test_explain_refuses_to_replace_an_existing_picture(tmp_path, capsys):
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a_explain.png").write_bytes(b"the user's own picture")
    args = ["predict", str(tmp_path / "a.png"), "--preset", "gflv2_test_r18_nano", "--random-weights",
            "--output", str(out), "--explain", "0"]
    assert main(args) == 2
    assert "a_explain.png" in capsys.readouterr().err
    assert (out / "a_explain.png").read_bytes() == b"the user's own picture"
