"""``--seed`` repeats a run; output written to a file (not a terminal) is one line per epoch, without control codes."""

import json
import re

import h5py
import numpy as np
import pytest

from gflv2_keras.cli import main
from gflv2_keras.utils.cli import fit_verbosity

NANO = "gflv2_test_r18_nano"
CONTROL = re.compile(r"[\r\b]|\x1b\[")  # carriage return, backspace, ANSI escape sequences


def _weights(path):
    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, item: arrays.__setitem__(name, item[()]) if isinstance(item, h5py.Dataset) else None)
    return arrays


@pytest.fixture(scope="module")
def train_run(tiny_coco, tmp_path_factory):
    """``train_run(seed)``: a tiny ``gflv2 train --preset`` run (2 epochs of 1 step) with stdout written to a file.

    Returns its stdout, ``history.json``, preset weights and ``recipe.json``; each seed runs once
    per module, later calls with ``again=True`` run it a second time.
    """
    import contextlib
    import io
    import os
    import sys
    import tempfile

    done = {}

    def run(seed, again=False):
        key = (seed, again)
        if key in done:
            return done[key]
        work_dir = tmp_path_factory.mktemp(f"seed_{seed}") / "run"
        argv = ["train", "--preset", NANO, "--data", os.path.join(tiny_coco, "annotations", "train.json"),
                "--train-images", os.path.join(tiny_coco, "train"), "--no-eval", "--epochs", "2",
                "--steps-per-epoch", "1", "--batch-size", "2", "--image-size", "96", "128",
                "--work-dir", str(work_dir), "--seed", str(seed)]  # fmt: skip
        with tempfile.TemporaryFile("w+") as log:
            sys.stdout.flush()
            with contextlib.redirect_stdout(log), contextlib.redirect_stderr(io.StringIO()):
                code = main(argv)
            log.seek(0)
            stdout = log.read()
        assert code == 0, stdout
        done[key] = {
            "stdout": stdout,
            "history": json.loads((work_dir / "history.json").read_text()),
            "weights": _weights(work_dir / "preset" / "model.weights.h5"),
            "recipe": json.loads((work_dir / "recipe.json").read_text()),
        }
        return done[key]

    return run


def test_a_log_file_gets_one_line_per_epoch_and_no_control_codes(train_run):
    run = train_run(5)
    assert run["recipe"]["seed"] == 5  # --seed reaches the recipe (weights init and the data stream's seed)
    stdout = run["stdout"]
    assert not CONTROL.search(stdout), repr(CONTROL.search(stdout).group())
    epoch_lines = re.findall(r"^1/1 - \d+s - .*loss: [0-9.e+-]+", stdout, re.M)  # Keras fit verbose=2
    assert len(epoch_lines) == 2, stdout
    assert "Epoch 1/2" in stdout and "Epoch 2/2" in stdout


@pytest.mark.slow  # two more training runs
def test_the_same_seed_repeats_the_run_and_another_seed_does_not(train_run):
    a, b, c = train_run(5), train_run(5, again=True), train_run(6)
    assert c["recipe"]["seed"] == 6
    losses = [[h[k] for k in ("loss", "qfl", "dfl", "giou")] for h in a["history"]]
    assert losses == [[h[k] for k in ("loss", "qfl", "dfl", "giou")] for h in b["history"]]
    assert sorted(a["weights"]) == sorted(b["weights"]) == sorted(c["weights"])
    assert all(np.array_equal(a["weights"][k], b["weights"][k]) for k in a["weights"])
    assert a["history"][0]["loss"] != c["history"][0]["loss"]
    assert not all(np.array_equal(a["weights"][k], c["weights"][k]) for k in a["weights"])


def test_a_terminal_keeps_the_progress_bar(monkeypatch):
    class Terminal:
        def isatty(self):
            return True

    class File:
        def isatty(self):
            return False

    monkeypatch.setattr("sys.stdout", Terminal())
    assert fit_verbosity() == "auto"
    monkeypatch.setattr("sys.stdout", File())
    assert fit_verbosity() == 2


def test_evaluate_to_a_file_has_no_progress_bar(nano_factory, tiny_coco, tmp_path, capfd):
    import os

    annotations = os.path.join(tiny_coco, "annotations", "val.json")
    with open(annotations) as f:
        names = [c["name"] for c in sorted(json.load(f)["categories"], key=lambda c: c["id"])]
    preset = tmp_path / "preset"
    nano_factory(seed=2, class_names=names).save_to_preset(str(preset))
    code = main(["evaluate", "--preset", str(preset), "--annotations", annotations,
                 "--images", os.path.join(tiny_coco, "val"), "--no-plots"])  # fmt: skip
    out = capfd.readouterr().out
    assert code == 0, out
    assert "COCO bbox on 2 images" in out
    assert not CONTROL.search(out), repr(out[:500])
