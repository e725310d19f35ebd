"""A mistake on the command line is one line at once: checked before TensorFlow loads.

Every case runs ``gflv2_keras.cli.main`` in one fresh interpreter, which reports each case's exit
code, stderr and time, and at the end which heavy modules were ever imported: none may be. The
refusals to replace an output (a used work dir, a demo's used ``--output``, an existing export,
a demo ``--overwrite`` of folders another live run holds) are among the cases.
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
    """The probe's current folder ``root`` with data paths and outputs that a run would replace."""
    root = tmp_path_factory.mktemp("fast_errors")
    (root / "train.json").write_text("{}")  # a COCO path by its name; never read: the error comes first
    for file in ("used_work/checkpoints/ckpt-000000001.npz",  # --work-dir
                 "work_dirs/gflv2_tiny_r18_demo/recipe.json",  # --recipe's default work dir
                 "work_dirs/finetune_train/history.json",  # --preset ... --data train.json's default work dir
                 "demo/work_dir_quick/log.csv",  # a demo --quick run in --output demo
                 "saved_model/1/saved_model.pb",  # an export's version folder
                 "model_onnx/model.onnx"):  # an export folder  # fmt: skip
        (root / file).parent.mkdir(parents=True)
        (root / file).write_text("a previous run's")
    return {"missing": str(root / "missing.json"), "json": str(root / "train.json"), "root": str(root),
            "no_dir": str(root / "no_such_folder"), "out": str(root / "out"),
            **{name: str(root / name) for name in ("used_work", "demo", "saved_model", "model_onnx")}}  # fmt: skip


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
        (["benchmark", "--precision", "int8"], "benchmark",
         "--precision int8 is not a precision of the inference table (int8: --runtime)"),
        (["benchmark", "--runtime", "tf,tensorrt"], "benchmark", "unknown tensorrt; choose from tf, onnxruntime"),
        (["benchmark", "--runtime", "--precision", "float16"], "benchmark",
         "--precision float16 is not a precision of the --runtime race"),
        (["benchmark", "--runtime", "litert", "--precision", "bfloat16"], "benchmark",
         "no row for --runtime litert in --precision bfloat16"),
        (["evaluate", "--preset", NANO, "--data", p["missing"]], "evaluate", f"{p['missing']} does not exist"),
        (["evaluate", "--preset", NANO, "--data", p["json"], "--score-threshold", "2"], "evaluate",
         "--score-threshold must be between 0 and 1, got 2.0"),
        (["demo", "--epochs", "0"], "demo", "argument --epochs: 0 must be 1 or more"),
        ([*train, "--work-dir", p["used_work"]], "train",
         f"{p['used_work']} already holds a training run (checkpoints): pass --resume"),
        (["train", "--recipe", "gflv2_tiny_r18_demo", "--data-root", p["root"]], "train",
         "work_dirs/gflv2_tiny_r18_demo already holds a training run (recipe.json)"),
        (train, "train", "work_dirs/finetune_train already holds a training run (history.json)"),
        (["demo", "--quick", "--output", p["demo"]], "demo", f"{p['demo']} holds a previous demo run"),
        (["export", "--preset", NANO, "--output", p["saved_model"]], "export",
         f"{p['saved_model']}/1 already exists; choose another --version or pass --overwrite"),
        (["export", "--preset", NANO, "--output", p["model_onnx"], "--format", "onnx"], "export",
         f"{p['model_onnx']} already exists; choose another --output or pass --overwrite"),
        ([*export[:-1], "tflite"], "export", "unknown --format 'tflite'; valid: saved_model, onnx, litert, openvino"),
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


def probe(argvs, cwd):
    """Runs ``gflv2`` with each of ``argvs`` in one fresh interpreter in ``cwd``; ``PROBE``'s report."""
    result = subprocess.run([sys.executable, "-c", PROBE, json.dumps(argvs)], capture_output=True, text=True,
                            timeout=300, cwd=cwd)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def assert_one_line(argv, case, command, fragment):
    lines = case["stderr"].strip().splitlines()
    assert case["code"] == EXIT_USER_ERROR, (argv, case)
    assert len(lines) == 1, (argv, case["stderr"])
    assert lines[0].startswith(f"gflv2 {command}: error: " if command else "gflv2: error: "), (argv, lines[0])
    assert fragment in lines[0], (argv, lines[0])


def test_mistakes_are_one_line_before_tensorflow_loads(paths):
    table = cases(paths)
    report = probe([argv for argv, _, _ in table], cwd=paths["root"])
    for (argv, command, fragment), case in zip(table, report["results"]):
        assert_one_line(argv, case, command, fragment)
    assert report["heavy"] == [], f"imported while checking: {report['heavy']}"
    # Without TensorFlow a mistake costs well under a second (TensorFlow's import alone is 5-25 s).
    print(f"{len(table)} mistakes in {report['seconds']:.2f} s, the slowest "
          f"{max(c['seconds'] for c in report['results']):.2f} s")


HOLDER = r"""
import sys
from gflv2_keras.utils.locks import lock_folder
lock = lock_folder(sys.argv[1], command="the other run").acquire()
print("held", flush=True)
sys.stdin.readline()
lock.release()
"""


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("held", ["", "work_dir_quick", "data_quick"])
def test_demo_overwrite_refuses_folders_another_run_holds(tmp_path, held):
    """``gflv2 demo --overwrite`` locks ``--output``, its work dir and its data folder before deleting:
    held by another live process (a demo, ``gflv2 train --work-dir``), it refuses and deletes nothing."""
    output = tmp_path / "demo"
    for name in ("work_dir_quick/checkpoints/ckpt-000000002.npz", "work_dir_quick/log.csv",
                 "data_quick/annotations/train.json", "data_quick/dataset.json", "predictions.png"):  # fmt: skip
        (output / name).parent.mkdir(parents=True, exist_ok=True)
        (output / name).write_text(f"the previous run's {name}")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(output / held)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _files(output)  # the holder's lock file included
        argv = ["demo", "--quick", "--overwrite", "--output", str(output)]
        report = probe([argv], cwd=tmp_path)
        assert_one_line(argv, report["results"][0], "demo",
                        f"{output / held if held else output} is in use by another gflv2 run (pid {holder.pid} ")
        assert report["heavy"] == [], f"imported while checking: {report['heavy']}"
        assert _files(output) == before
    finally:
        holder.communicate("\n", timeout=30)
    assert holder.returncode == 0


def test_a_recipe_files_used_default_work_dir_is_refused_by_its_precheck(tmp_path, monkeypatch):
    """``python recipes/NAME.py`` checks ``work_dirs/NAME`` of the recipe it was given (no ``--recipe`` there)."""
    from gflv2_keras.recipes import load_recipe
    from gflv2_keras.training.cli import check_train_args, recipe_parser

    recipe = load_recipe("gflv2_tiny_r18_demo")
    monkeypatch.chdir(tmp_path)
    check_train_args(recipe_parser(recipe).parse_args([]), recipe)  # an empty folder: nothing to refuse
    (tmp_path / "work_dirs" / recipe["name"] / "checkpoints").mkdir(parents=True)
    with pytest.raises(ValueError, match=f"{tmp_path / 'work_dirs' / recipe['name']} already holds a training run"):
        check_train_args(recipe_parser(recipe).parse_args([]), recipe)
    check_train_args(recipe_parser(recipe).parse_args(["--resume"]), recipe)  # continuing it is what --resume is for
