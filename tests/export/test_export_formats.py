"""ONNX, LiteRT and OpenVINO exports, each run in its own runtime in a fresh process.

The fresh process cannot import ``gflv2_keras``: it uses only the runtime, NumPy and, for
LiteRT, the ``postprocess.py`` written next to the model. Its detections are compared with
``detector.detect`` on the same images (counts and labels equal, boxes within 0.5 px,
scores within 1e-3). A format is skipped only when its extra is not installed.
"""

import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gflv2_keras.cli import main

from serving_support import CLASS_NAMES, WITHOUT_PROJECT_PRELUDE

PRESET = "gflv2_test_r18_nano"
SIZE = (96, 128)  # the nano preset's input scale (128, 96) as a landscape image
EXTRA_MODULES = {"onnx": ("tf2onnx", "onnx", "onnxruntime"), "litert": ("ai_edge_litert",),
                 "openvino": ("tf2onnx", "onnx", "openvino")}  # fmt: skip


def needs_extra(fmt):
    missing = [m for m in EXTRA_MODULES[fmt] if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(
        bool(missing), reason=f"{fmt} extra not installed ({', '.join(missing)}): pip install 'gflv2-keras[{fmt}]'"
    )


def pattern(height, width, seed):
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:height, :width]
    base = np.stack([x * 255.0 / width, y * 255.0 / height, (x + y) % 64 * 4.0], -1)
    return np.clip(base + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)


def run_cli(*argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def setup(scoring_nano):
    """The shared scoring nano preset (``conftest.scoring_nano``), its test images and their detections."""
    detector, root = scoring_nano
    images = [pattern(*SIZE, seed) for seed in range(2)]
    return detector, root, images, [detector.detect(image) for image in images]


FRESH_SCRIPT = WITHOUT_PROJECT_PRELUDE + r"""
import importlib.util, json
import numpy as np

folder, images_path, out_path = sys.argv[1:4]
meta = json.load(open(f"{folder}/export.json"))
stored = np.load(images_path)
images = [stored[f"image{i}"] for i in range(len(stored.files))]
fmt, fixed = meta["format"], meta["canvas"] == "fixed"
if fixed:  # fixed canvas: postprocess.py letterboxes the image (and runs LiteRT's NMS)
    spec = importlib.util.spec_from_file_location("postprocess", f"{folder}/postprocess.py")
    postprocess = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(postprocess)
if fmt == "onnx":
    import onnxruntime as ort
    session = ort.InferenceSession(f"{folder}/model.onnx", providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    run = lambda feeds: dict(zip(names, session.run(None, feeds)))
elif fmt == "openvino":
    import openvino as ov
    compiled = ov.Core().compile_model(f"{folder}/model.xml", "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    run = lambda feeds: {o.get_any_name(): v for o, v in zip(compiled.outputs, compiled(feeds).values())}
else:
    from ai_edge_litert.interpreter import Interpreter
    runner = Interpreter(model_path=f"{folder}/model.tflite").get_signature_runner()
    run = lambda feeds: runner(**feeds)
results = {}
for i, image in enumerate(images):
    if fixed:
        canvas, shape = postprocess.letterbox(image, *meta["input_size"])
        out = run({"images": canvas[None], "image_shape": shape[None]})
    else:
        out = run({"images": image[None]})
    if meta["nms_inside"]:
        n = int(out["num_detections"][0])
        boxes, confidence, labels = (out[k][0, :n] for k in ("detection_boxes", "detection_scores", "detection_classes"))
    else:
        c = meta["test_config"]
        det = postprocess.postprocess(out["candidate_boxes"], out["candidate_scores"], meta["num_classes"],
                                      c["score_threshold"], c["iou_threshold"], c["max_detections"],
                                      output_boxes=out.get("candidate_output_boxes"))[0]
        boxes, confidence, labels = det["boxes"], det["confidence"], det["labels"]
    if fixed:  # canvas pixels -> the image's own pixels
        boxes = postprocess.to_original(boxes, shape, image.shape[:2])
    results[f"boxes{i}"], results[f"confidence{i}"], results[f"labels{i}"] = boxes, confidence, labels
np.savez(out_path, **results)
"""


def run_fresh(folder, images, tmp_path):
    """Each image (any sizes) through the export in a fresh ``python -I`` without the package, as a
    deployment runs it: ``postprocess.py``'s letterbox for a fixed canvas, the image as is otherwise;
    boxes in the image's own pixels."""
    np.savez(tmp_path / "images.npz", **{f"image{i}": image for i, image in enumerate(images)})
    (tmp_path / "fresh.py").write_text(FRESH_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [sys.executable, "-I", str(tmp_path / "fresh.py"), str(folder), str(tmp_path / "images.npz"),
         str(tmp_path / "out.npz")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = np.load(tmp_path / "out.npz")
    return [{k: out[f"{k}{i}"] for k in ("boxes", "confidence", "labels")} for i in range(len(images))]


def assert_parity(results, references):
    for result, reference in zip(results, references):
        assert len(reference["boxes"]) > 0, "the test needs detections"
        assert len(result["boxes"]) == len(reference["boxes"])
        np.testing.assert_array_equal(result["labels"], reference["labels"])
        np.testing.assert_allclose(result["boxes"], reference["boxes"], atol=0.5, rtol=0)
        np.testing.assert_allclose(result["confidence"], reference["confidence"], atol=1e-3, rtol=0)


@pytest.mark.parametrize("fmt", [pytest.param(f, marks=needs_extra(f)) for f in ("onnx", "litert", "openvino")])
def test_export_runs_in_its_runtime_like_detect(fmt, setup, tmp_path):
    detector, root, images, references = setup
    folder = tmp_path / fmt
    code, out, err = run_cli("export", "--format", fmt, "--preset", str(root / "preset"), "--output", str(folder))
    assert code == 0, err
    metadata = json.loads((folder / "export.json").read_text())
    assert metadata["input_size"] == list(SIZE) and metadata["class_names"] == CLASS_NAMES
    assert metadata["bounding_box_format"] == "xyxy" and "box_layout" not in metadata
    assert_parity(run_fresh(folder, images, tmp_path), references)

    # The in-package runner (gflv2 predict --model) gives the same detections.
    from gflv2_keras.export.runtimes import load_exported

    exported = load_exported(folder)
    detected = [exported.detect(image) for image in images]
    assert_parity([{"boxes": d["boxes"], "confidence": d["confidence"], "labels": d["labels"]} for d in detected],
                  references)  # fmt: skip
    # ... and refuses to replace the export without --overwrite.
    code, _, err = run_cli("export", "--format", fmt, "--preset", str(root / "preset"), "--output", str(folder))
    assert code == 2 and "--overwrite" in err


@pytest.mark.slow  # moved out of the default run for its time (issue 20)
@needs_extra("litert")
@pytest.mark.parametrize("weights", ["fp16", "int8"])
def test_litert_reduced_weights_stay_close(weights, setup, tmp_path):
    detector, root, images, references = setup
    from gflv2_keras.export.formats import export_portable
    from gflv2_keras.export.runtimes import load_exported

    full = export_portable(detector, "litert", tmp_path / "fp32")
    reduced = export_portable(detector, "litert", tmp_path / weights, weights=weights)
    assert (reduced / "model.tflite").stat().st_size < 0.7 * (full / "model.tflite").stat().st_size
    result = load_exported(reduced).detect(images[0])
    assert len(result["boxes"]) > 0
    np.testing.assert_allclose(result["confidence"][:3], references[0]["confidence"][:3], atol=5e-3, rtol=0)


@needs_extra("onnx")
def test_runner_refuses_files_of_another_format_or_corrupt(setup, tmp_path, capsys):
    detector, root, images, references = setup
    from gflv2_keras.export.formats import export_portable

    folder = export_portable(detector, "onnx", tmp_path / "onnx")
    image = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(images[0]).save(image)
    (folder / "model.onnx").write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 64)
    assert main(["predict", str(image), "--model", str(folder), "--output", str(tmp_path / "p")]) == 2
    assert "not an ONNX model" in capsys.readouterr().err
    (folder / "model.onnx").write_bytes(b"\x08\x07garbage" * 10)
    assert main(["predict", str(image), "--model", str(folder), "--output", str(tmp_path / "p")]) == 2
    assert "cannot be loaded as onnx" in capsys.readouterr().err
    assert main(["predict", str(image), "--model", str(image), "--output", str(tmp_path / "p")]) == 2
    assert "not a gflv2 export" in capsys.readouterr().err


@needs_extra("onnx")
def test_a_missing_runtime_is_one_line_naming_the_extra(setup, tmp_path, capsys, monkeypatch):
    detector, root, images, references = setup
    from PIL import Image

    from gflv2_keras.export.formats import export_portable

    folder = export_portable(detector, "onnx", tmp_path / "onnx")
    image = tmp_path / "a.png"
    Image.fromarray(images[0]).save(image)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    assert main(["predict", str(image), "--model", str(folder), "--output", str(tmp_path / "p")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "pip install 'gflv2-keras[onnx]'" in error, error


def test_unknown_format_lists_the_valid_ones(setup, tmp_path):
    code, _, err = run_cli("export", "--format", "tflite", "--preset", PRESET, "--output", str(tmp_path / "x"))
    assert code == 2 and "saved_model, onnx, litert, openvino" in err


def test_missing_runtime_names_the_extra(monkeypatch):
    from gflv2_keras.export import formats

    monkeypatch.setitem(sys.modules, "openvino", None)  # import raises ImportError
    with pytest.raises(formats.MissingRuntimeError, match=r"gflv2-keras\[openvino\]"):
        formats.require("openvino", "openvino")


@pytest.mark.slow
@pytest.mark.parametrize("fmt", [pytest.param(f, marks=needs_extra(f)) for f in ("onnx", "litert", "openvino")])
def test_r50_preset_export_runs_in_its_runtime_like_detect(fmt, tmp_path):
    """The full-size R-50 preset (random weights, threshold 0), exported at 320x480: the same check."""
    import keras

    from gflv2_keras import GFLV2Detector

    keras.utils.set_random_seed(0)
    detector = GFLV2Detector.from_preset(
        "gflv2_r50_fpn_1x_coco", load_weights=False, test_config={"score_threshold": 0.0}
    ).build_for_inference()
    detector.save_to_preset(tmp_path / "preset")
    images = [pattern(320, 480, seed) for seed in range(2)]
    references = [detector.detect(image) for image in images]
    folder = tmp_path / fmt
    code, _, err = run_cli("export", "--format", fmt, "--preset", str(tmp_path / "preset"), "--output", str(folder),
                           "--input-size", "320", "480")  # fmt: skip
    assert code == 0, err
    # Random full-size weights give near-tied scores, whose order may swap between runtimes: match
    # each detection to one of the same label, box and score instead of comparing by position.
    # Detections within 1e-3 of the 100th score may trade places across the cut-off: those are not compared.
    for result, reference in zip(run_fresh(folder, images, tmp_path), references):
        assert len(result["boxes"]) == len(reference["boxes"]) > 0
        cutoff = float(np.min(reference["confidence"])) + 1e-3
        unmatched = list(range(len(reference["boxes"])))
        for box, score, label in zip(result["boxes"], result["confidence"], result["labels"]):
            if score < cutoff:
                continue
            match = next(j for j in unmatched if reference["labels"][j] == label
                         and np.abs(reference["boxes"][j] - box).max() <= 0.5
                         and abs(reference["confidence"][j] - score) <= 1e-3)  # fmt: skip
            unmatched.remove(match)
