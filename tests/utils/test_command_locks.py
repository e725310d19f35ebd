"""``gflv2 predict`` / ``evaluate`` / ``export`` / ``convert`` refuse an output another run is writing, in
one line, before loading anything; the holder's lock is left alone."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from gflv2_keras.cli import main

HOLDER = textwrap.dedent(
    """
    import sys
    from gflv2_keras.utils import locks
    make = locks.lock_beside if sys.argv[1] == "beside" else locks.lock_folder
    lock = make(sys.argv[2], command="the other run").acquire()
    print("held", flush=True)
    sys.stdin.readline()
    lock.release()
    """
)


@pytest.fixture
def hold():
    started = []

    def start(kind, path):
        process = subprocess.Popen([sys.executable, "-c", HOLDER, kind, str(path)], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert process.stdout.readline().strip() == "held"
        started.append(process)
        return process.pid

    yield start
    for process in started:
        process.communicate("\n", timeout=30)


def _refused(argv, capsys, pid):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "in use by another gflv2 run" in err[0] and f"pid {pid} " in err[0] and "the other run" in err[0]
    return err[0]


def test_predict(tmp_path, hold, capsys):
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    pid = hold("folder", out)
    line = _refused(["predict", str(tmp_path / "a.png"), "--preset", "gflv2_test_r18_nano", "--random-weights",
                     "--output", str(out)], capsys, pid)  # fmt: skip
    assert line.startswith("gflv2 predict: error: ") and "--output" in line
    assert json.loads((out / ".gflv2.lock").read_text())["pid"] == pid
    assert sorted(p.name for p in out.iterdir()) == [".gflv2.lock"]


def test_evaluate(tmp_path, tiny_coco, hold, capsys):
    out = tmp_path / "eval"
    pid = hold("folder", out)
    line = _refused(["evaluate", "--preset", "gflv2_test_r18_nano", "--data", f"{tiny_coco}/annotations/val.json",
                     "--images", f"{tiny_coco}/val", "--output", str(out / "dets.json")], capsys, pid)  # fmt: skip
    assert line.startswith("gflv2 evaluate: error: ")


def test_export(tmp_path, hold, capsys):
    target = tmp_path / "exports" / "nano_onnx"
    pid = hold("beside", target)
    line = _refused(["export", "--format", "onnx", "--preset", "gflv2_test_r18_nano", "--random-weights",
                     "--output", str(target)], capsys, pid)  # fmt: skip
    assert line.startswith("gflv2 export: error: ") and not target.exists()


def test_convert(tmp_path, hold, capsys):
    checkpoint = tmp_path / "official.pth"
    checkpoint.write_bytes(b"never read: the lock is checked first")
    target = tmp_path / "presets" / "converted"
    pid = hold("beside", target)
    line = _refused(["convert", "--checkpoint", str(checkpoint), "--preset", "gflv2_test_r18_nano",
                     "--output", str(target), "--overwrite"], capsys, pid)  # fmt: skip
    assert line.startswith("gflv2 convert: error: ") and "--output" in line
    assert not target.exists()
    assert json.loads((target.parent / ".converted.lock").read_text())["pid"] == pid
