"""``gflv2 predict`` never writes over an input, and names every input it cannot use (links, sizes) while the rest runs."""

import hashlib
import json
import os

import numpy as np
import pytest
from PIL import Image

from gflv2_keras.cli import main

PRESET = ["--preset", "gflv2_test_r18_nano", "--random-weights"]


def _checksums(*folders):
    return {
        str(p): hashlib.sha256(p.read_bytes()).hexdigest()
        for folder in folders for p in sorted(folder.iterdir()) if p.is_file()
    }


def _refused(args, capsys):
    """Runs ``gflv2 predict`` with and without --overwrite; both must end in one error line, exit 2."""
    lines = []
    for extra in ([], ["--overwrite"]):
        assert main(["predict", *args, *PRESET, *extra]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
        lines.append(err)
    return lines


@pytest.fixture
def photos(tmp_path):
    folder = tmp_path / "userphotos"
    folder.mkdir()
    Image.fromarray(np.full((40, 50, 3), 90, np.uint8)).save(folder / "holiday.jpg")
    return folder


def test_a_file_input_is_never_its_own_output(photos, capsys):
    before = _checksums(photos)
    for err in _refused([str(photos / "holiday.jpg"), "--output", str(photos)], capsys):
        assert "would be written over the input image" in err and "holiday.jpg" in err
        assert "--overwrite" not in err  # never suggests the command that would destroy the photo
    assert _checksums(photos) == before and not (photos / "holiday.json").exists()


def test_no_output_is_another_input(photos, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    Image.fromarray(np.full((30, 30, 3), 10, np.uint8)).save(other / "holiday.png")  # output stem "holiday"
    before = _checksums(photos, other)
    for err in _refused([str(other / "holiday.png"), str(photos / "holiday.jpg"), "--output", str(photos)], capsys):
        assert f"over the input image {photos / 'holiday.jpg'}" in err
    assert _checksums(photos, other) == before and not (photos / "holiday.json").exists()


def test_symbolic_links_are_followed_to_the_inputs(photos, tmp_path, capsys):
    links = tmp_path / "links"
    links.mkdir()
    os.symlink(photos / "holiday.jpg", links / "holiday.jpg")
    os.symlink(photos, tmp_path / "same_folder")
    before = _checksums(photos)
    for args in ([str(links / "holiday.jpg"), "--output", str(photos)],  # a linked input
                 [str(photos / "holiday.jpg"), "--output", str(tmp_path / "same_folder")]):  # a linked output
        for err in _refused(args, capsys):
            assert "would be written over the input image" in err
    for err in _refused([str(tmp_path / "same_folder"), "--output", str(photos / "predictions")], capsys):
        assert "inside the input folder" in err
    assert _checksums(photos) == before and not (photos / "predictions").exists()


def test_an_output_that_is_a_file_or_a_link_loop_is_refused(photos, tmp_path, capsys):
    os.symlink(tmp_path / "loop_b", tmp_path / "loop_a")
    os.symlink(tmp_path / "loop_a", tmp_path / "loop_b")
    for output, message in ((photos / "holiday.jpg", "is a file, not a folder"), (tmp_path / "loop_a", "symbolic links")):
        for err in _refused([str(photos / "holiday.jpg"), "--output", str(output)], capsys):
            assert message in err


def test_links_loops_and_images_too_thin_are_named_and_the_rest_runs(tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    os.symlink(inputs / "loop.jpg", inputs / "loop.jpg")  # a link to itself, met in a folder
    os.symlink(tmp_path / "nowhere.png", inputs / "broken.png")
    os.symlink(tmp_path / "given_loop.jpg", tmp_path / "given_loop.jpg")  # a link to itself, given
    Image.fromarray(np.full((3, 20000, 3), 90, np.uint8)).save(inputs / "a_thin.png")  # 3 px high: 0 px resized
    stored = Image.fromarray(np.full((100, 200, 3), 120, np.uint8))  # stored 200 wide, 100 high
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise: 100 wide, 200 high
    stored.save(inputs / "turned.jpg", exif=exif)
    out = tmp_path / "out"
    code = main(["predict", str(inputs), str(tmp_path / "given_loop.jpg"), "--output", str(out), *PRESET])
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.err
    for name in ("loop.jpg: symbolic link loop", "broken.png: broken symbolic link", "given_loop.jpg: symbolic link loop",
                 "a_thin.png: 20000x3 image (width x height) would be resized to"):
        assert name in captured.err
    record = json.loads((out / "turned.json").read_text())
    assert (record["width"], record["height"]) == (100, 200)  # the displayed frame
    assert sorted(p.name for p in out.iterdir()) == ["turned.jpg", "turned.json"]
    assert Image.open(out / "turned.jpg").size == (100, 200)
    assert "done: 1 of 2 images processed, 4 problem(s)" in captured.out
