"""A mistake on the command line is one line at once: checked before TensorFlow loads.

Every case runs ``gflv2_keras.cli.main`` in one fresh interpreter, which reports each case's exit
code, stderr and time, and at the end which heavy modules were ever imported: none may be.
"""

import json
import subprocess
import sys

import pytest

from gflv2_keras.utils.cli import EXIT_USER_ERROR

NANO = "gflv2_test_r18_nano"
PROBE = r"""
import contextlib, io, json, sys, time
start = time.perf_counter()
from gflv2_keras.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err, begin = io.StringIO(), time.perf_counter()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exit:
            code = exit.code
    results.append({"code": code, "stderr": err.getvalue(), "seconds": time.perf_counter() - begin})
heavy = sorted(m for m in ("tensorflow", "keras", "keras_hub", "torch", "jax") if m in sys.modules)
print(json.dumps({"results": results, "heavy": heavy, "seconds": time.perf_counter() - start}))
"""


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    root = tmp_path_factory.mktemp("fast_errors")
    (root / "train.json").write_text("{}")  # a COCO path by its name; never read: the error comes first
    return {"missing": str(root / "missing.json"), "json": str(root / "train.json"), "root": str(root),
            "no_dir": str(root / "no_such_folder"), "out": str(root / "out")}


def cases(p):
    """``(argv, the command (None: the top-level parser's error), a fragment of the one error line)``."""
    train = ["train", "--preset", NANO, "--data", p["json"]]
    export = ["export", "--preset", NANO, "--output", p["out"], "--format", "onnx"]
    return [
        (["train", "--preset", NANO, "--data", p["missing"]], "train",
         f"--data: dataset path {p['missing']} does not exist"),
        ([*train, "--image-size", "7", "7"], "train", "argument --image-size: H = 7 px is outside 32..8192 px"),
        ([*train, "--image-size", "100000", "100000"], "train", "H = 100000 px is outside 32..8192 px"),
        ([*train, "--image-size", "800", "big"], "train", "W = 'big' is not a whole number of pixels"),
        ([*train, "--epochs", "0"], "train", "argument --epochs: 0 must be 1 or more"),
        ([*train, "--seed", "-3"], "train", "argument --seed: -3 is outside 0..4294967295"),
        (["train", "--preset", "no_such_preset", "--data", p["json"]], "train", "--preset no_such_preset: neither"),
        (["train", "--recipe", "gflv2_tiny_r18_demo", "--data-root", p["no_dir"]], "train",
         f"argument --data-root: {p['no_dir']} does not exist"),
        (["train", "--recipe", "no_such_recipe", "--data-root", p["root"]], "train", "Unknown recipe 'no_such_recipe'"),
        (["train", "--recipe", "gflv2_tiny_r18_demo", "--data", p["json"]], "train", "--data go with --preset"),
        ([*export, "--image-size", "800", "1333"], "export",
         "W = 1333 px is not a multiple of 32 (the network's canvas stride); nearest: 1312 or 1344"),
        ([*export, "--input-size", "7", "7"], "export", "argument --image-size/--input-size: H = 7 px is outside"),
        (["benchmark", "--image-size", "100000", "100000"], "benchmark", "H = 100000 px is outside 32..8192 px"),
        (["benchmark", "--size", "600", "0"], "benchmark", "W = 0 px is outside"),
        (["benchmark", "--train-size", "500", "512"], "benchmark", "H = 500 px is not a multiple of 32"),
        (["benchmark", "--backends", "tensorflow,mxnet"], "benchmark",
         "unknown mxnet; choose from tensorflow, jax, torch"),
        (["benchmark", "--batches", "1,0"], "benchmark", "0 must be 1 or more"),
        (["evaluate", "--preset", NANO, "--data", p["missing"]], "evaluate", f"{p['missing']} does not exist"),
        (["evaluate", "--preset", NANO, "--data", p["json"], "--score-threshold", "2"], "evaluate",
         "--score-threshold must be between 0 and 1, got 2.0"),
        (["demo", "--epochs", "0"], "demo", "argument --epochs: 0 must be 1 or more"),
        (["predict", "x.png", "--preset", NANO, "--runtime", "onnxruntime", "--precision", "bfloat16"], "predict",
         "--runtime onnxruntime runs --precision float32, int8, not 'bfloat16'"),
        (["predict", "x.png", "--preset", NANO, "--runtime", "openvino", "--precision", "int8"], "predict",
         "--precision int8 needs --calibration-data"),
        (["predict", "x.png", "--model", p["root"], "--runtime", "auto"], "predict",
         "--runtime auto applies to --preset"),
        (["evaluate", "--preset", NANO, "--data", p["json"], "--precision", "int8", "--calibration-data", p["root"]],
         "evaluate", "--runtime tf runs --precision float32, bfloat16, float16, not 'int8'"),
        (["train", "--preset", NANO, "--data", p["json"], "--no-such"], None, "unrecognized arguments: --no-such"),
    ]


def test_mistakes_are_one_line_before_tensorflow_loads(paths):
    table = cases(paths)
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps([argv for argv, _, _ in table])],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for (argv, command, fragment), case in zip(table, report["results"]):
        lines = case["stderr"].strip().splitlines()
        assert case["code"] == EXIT_USER_ERROR, (argv, case)
        assert len(lines) == 1, (argv, case["stderr"])
        assert lines[0].startswith(f"gflv2 {command}: error: " if command else "gflv2: error: "), (argv, lines[0])
        assert fragment in lines[0], (argv, lines[0])
    assert report["heavy"] == [], f"imported while checking: {report['heavy']}"
    # Without TensorFlow a mistake costs well under a second (TensorFlow's import alone is 5-25 s).
    print(f"{len(table)} mistakes in {report['seconds']:.2f} s, the slowest "
          f"{max(c['seconds'] for c in report['results']):.2f} s")
