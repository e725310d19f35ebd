"""``compile_for_inference`` and ``gflv2 predict|evaluate --runtime`` (issue 22).

* ``onnxruntime`` / ``openvino`` give ``detector.detect``'s detections on images of other sizes
  than the canvas (labels exact, boxes within 0.01 px, scores within 1e-4); a second call
  reuses the cached export (no export runs: counted); the fingerprint follows the weights, not
  the layer names or the dtype policy; ``tf`` in bfloat16 is the preset loaded in bfloat16.
* ``auto`` measures once, writes its choice, reuses it (and says so), and ``detect``s exactly as
  the runtime it chose; ``gflv2 predict --runtime auto`` writes the JSON of ``--runtime CHOSEN``.
* ``int8`` calibrated on 4 tiny images runs and returns boxes in the original image's pixels.
* Bad combinations end in one line, exit code 2, nothing written; a second process waits for an
  export being written instead of writing it too.

One cache folder per module: each export is made once. Each nano export costs 8-20 s of CPU
(LiteRT 8, ONNX 17, OpenVINO 19), so the default run exports ONNX float32 and int8 only (auto
chooses between tf and onnxruntime there); OpenVINO, LiteRT and ``evaluate`` are in the slow tests.
"""

import json
import os
import re
import socket
import threading
import time

import numpy as np
import pytest
from PIL import Image

from test_export_formats import needs_extra, pattern, run_cli

IMAGES = [pattern(60, 100, 41), pattern(150, 90, 42)]  # neither is the 96x128 input scale
EXPORT_EXTRAS = {"onnxruntime": "onnx", "openvino": "openvino", "litert": "litert"}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("runtime_cache")


@pytest.fixture
def export_calls(monkeypatch):
    """The ``export_portable`` calls made during a test (the real function still runs)."""
    from gflv2_keras.export import formats

    calls, real = [], formats.export_portable

    def counting(detector, fmt, output, *args, **kwargs):
        calls.append((fmt, kwargs.get("weights"), str(output)))
        return real(detector, fmt, output, *args, **kwargs)

    monkeypatch.setattr(formats, "export_portable", counting)
    return calls


def installed(*runtimes):
    return [pytest.param(r, marks=needs_extra(EXPORT_EXTRAS[r])) for r in runtimes]


def assert_same_detections(found, expected, box_atol=0.01, score_atol=1e-4):
    assert len(expected["labels"]) > 0, "the test needs detections"
    np.testing.assert_array_equal(found["labels"], expected["labels"])
    np.testing.assert_allclose(found["boxes"], expected["boxes"], atol=box_atol, rtol=0)
    np.testing.assert_allclose(found["confidence"], expected["confidence"], atol=score_atol, rtol=0)


@pytest.mark.parametrize("runtime", [*installed("onnxruntime"),
                                     *[pytest.param(*p.values, marks=[*p.marks, pytest.mark.slow])
                                       for p in installed("openvino")]])  # fmt: skip
def test_exported_runtime_detects_like_the_detector_and_is_exported_once(runtime, scoring_nano, cache, export_calls):
    from gflv2_keras.inference.runtime_choice import CompiledDetector

    detector, _ = scoring_nano
    lines = []
    compiled = detector.compile_for_inference(runtime, cache_dir=cache, log=lines.append)
    assert isinstance(compiled, CompiledDetector) and (compiled.runtime, compiled.precision) == (runtime, "float32")
    assert compiled.folder.parent.parent == cache / "models" and (compiled.folder / "export.json").is_file()
    assert json.loads((compiled.folder / "export.json").read_text())["canvas"] == "per_image"
    for image in IMAGES:
        assert_same_detections(compiled.detect(image), detector.detect(image))
    rel = compiled.detect(IMAGES[1], bounding_box_format="rel_xyxy")["boxes"]  # formats as detect's
    np.testing.assert_allclose(rel, detector.detect(IMAGES[1], bounding_box_format="rel_xyxy")["boxes"], atol=1e-4)

    made = len(export_calls)
    again = detector.compile_for_inference(runtime, cache_dir=cache, log=lines.append)
    assert len(export_calls) == made, "the second call must reuse the cached export"
    assert again.folder == compiled.folder and any("cached export" in line for line in lines)
    assert_same_detections(again.detect(IMAGES[0]), compiled.detect(IMAGES[0]), box_atol=0, score_atol=0)


@pytest.fixture(scope="module")
def bfloat16_preset(scoring_nano):
    """The scoring preset loaded again, in ``mixed_bfloat16``."""
    from gflv2_keras import GFLV2Detector

    _, root = scoring_nano
    return GFLV2Detector.from_preset(str(root / "preset"), dtype="mixed_bfloat16")


def test_fingerprint_follows_the_weights_not_names_or_dtype(scoring_nano, bfloat16_preset):
    from gflv2_keras.inference.runtime_cache import model_fingerprint

    detector, _ = scoring_nano
    reference = model_fingerprint(detector)
    # Loaded again: other layer numbers, another dtype policy, the same weights: one cache entry
    # (every export is traced in float32).
    assert model_fingerprint(bfloat16_preset) == reference
    bias = bfloat16_preset.head.gfl_cls.bias
    original = np.array(bias.numpy())
    try:
        bias.assign(original + np.eye(1, len(original), 0, dtype="float32")[0] * 1e-3)  # one value changes
        assert model_fingerprint(bfloat16_preset) != reference
    finally:
        bias.assign(original)
    assert model_fingerprint(bfloat16_preset) == reference


@needs_extra("onnx")
def test_auto_is_measured_once_and_detects_as_the_runtime_it_chose(scoring_nano, cache, export_calls):
    from gflv2_keras.inference.runtime_choice import MIN_AGREEMENT, compile_for_inference

    detector, _ = scoring_nano
    options = dict(cache_dir=cache, candidates=("tf", "onnxruntime"), probe_image=IMAGES[0], repeats=2)
    lines = []
    chosen = compile_for_inference(detector, "auto", log=lines.append, remeasure=True, **options)
    made = len(export_calls)  # the exports of the earlier tests, or made now
    assert chosen.runtime in ("tf", "onnxruntime") and chosen.reason.startswith("auto: measured")
    decisions = [line.rsplit("cached in ", 1)[1] for line in lines if "chose" in line]
    assert len(decisions) == 1
    decision = json.loads(open(decisions[0]).read())
    assert decision["runtime"] == chosen.runtime and decision["probe"] == "the probe image 100x60"
    rows = {row["runtime"]: row for row in decision["candidates"]}
    assert set(rows) == {"tf", "onnxruntime"}
    assert all(row["qualified"] and row["agreement"] >= MIN_AGREEMENT and row["median_ms"] > 0 for row in rows.values())
    assert rows[chosen.runtime]["median_ms"] == min(row["median_ms"] for row in rows.values())
    assert sum("[runtime]   " in line for line in lines) == 2 and any("chose" in line for line in lines)

    lines.clear()
    again = compile_for_inference(detector, "auto", log=lines.append, **options)
    assert again.runtime == chosen.runtime and "cached choice" in again.reason
    assert not any("measuring" in line for line in lines) and any("--remeasure" in line for line in lines)
    direct = compile_for_inference(detector, chosen.runtime, cache_dir=cache, log=lambda line: None)
    for image in IMAGES:
        assert_same_detections(again.detect(image), direct.detect(image), box_atol=0, score_atol=0)

    lines.clear()
    compile_for_inference(detector, "auto", log=lines.append, remeasure=True, **options)
    assert any("measuring" in line for line in lines)
    assert len(export_calls) == made, "auto reuses the runtimes' cached exports"


@needs_extra("onnx")
def test_predict_runtime_auto_writes_the_json_of_the_chosen_runtime(scoring_nano, cache, tmp_path, monkeypatch):
    from gflv2_keras.inference import runtime_choice

    detector, root = scoring_nano
    # in the cache already, unless this test runs alone
    runtime_choice.compile_for_inference(detector, "onnxruntime", cache_dir=cache, log=lambda line: None)
    for i, image in enumerate(IMAGES):
        Image.fromarray(image).save(tmp_path / f"image{i}.png")
    # auto among the runtimes of the default run (every runtime: the slow test below)
    monkeypatch.setattr(runtime_choice, "CANDIDATES", ("tf", "onnxruntime"))
    common = ["predict", str(tmp_path / "image0.png"), str(tmp_path / "image1.png"), "--preset", str(root / "preset"),
              "--cache-dir", str(cache)]  # fmt: skip
    code, out, err = run_cli(*common, "--runtime", "auto", "--output", str(tmp_path / "auto"))
    assert code == 0, err
    # "auto float32: chose X (...)" when measured, "auto float32: X (measured ...)" when cached
    chosen = re.search(r"auto float32: (?:chose )?(tf|onnxruntime)\b", out).group(1)
    assert "exporting" not in out, "the preset loaded by the CLI has the fingerprint of the same detector"
    args = ["--runtime", chosen] + (["--cache-dir", str(cache)] if chosen != "tf" else [])
    code, _, err = run_cli(*common[:-2], *args, "--output", str(tmp_path / chosen))
    assert code == 0, err
    for i in range(len(IMAGES)):
        auto = json.loads((tmp_path / "auto" / f"image{i}.json").read_text())
        direct = json.loads((tmp_path / chosen / f"image{i}.json").read_text())
        assert auto["detections"] and auto["detections"] == direct["detections"]


@needs_extra("onnx")
def test_int8_with_four_calibration_images_returns_original_pixels(scoring_nano, cache, tmp_path):
    from gflv2_keras.inference.runtime_choice import agreement, compile_for_inference

    detector, _ = scoring_nano
    folder = tmp_path / "calibration"
    folder.mkdir()
    for seed in range(4):
        Image.fromarray(pattern(72, 120, 50 + seed)).save(folder / f"{seed}.png")
    lines = []
    compiled = compile_for_inference(detector, "onnxruntime", "int8", calibration_data=folder, cache_dir=cache,
                                     log=lines.append)  # fmt: skip
    assert compiled.precision == "int8" and any("4 calibration images" in line for line in lines)
    metadata = json.loads((compiled.folder / "export.json").read_text())
    assert metadata["activations"] == "int8" and metadata["canvas"] == "per_image"
    assert not (compiled.folder.parent / "onnx-fp32-per_image").exists(), "int8 has its own fingerprint"
    image = pattern(150, 200, 60)  # larger than the 128x96 input scale: resized inside, boxes mapped back
    found, reference = compiled.detect(image), detector.detect(image)
    boxes = found["boxes"]
    assert len(boxes) > 0 and boxes.min() >= -0.5
    assert boxes[:, 2].max() <= 200.5 and boxes[:, 3].max() <= 150.5 and boxes[:, 2].max() > 128
    top = {key: value[:10] for key, value in reference.items()}
    kept = agreement(top, found, iou=0.5) * max(len(top["labels"]), len(found["labels"]))
    assert kept >= 5, f"only {kept} of float32's top 10 detections kept in int8"


def test_tf_bfloat16_is_the_preset_in_bfloat16_and_invalid_arguments_raise(scoring_nano, bfloat16_preset, tmp_path):
    from gflv2_keras.inference.runtime_choice import compile_for_inference

    detector, _ = scoring_nano
    twin = compile_for_inference(detector, "tf", "bfloat16", cache_dir=tmp_path)
    assert twin.model.dtype_policy.name == "mixed_bfloat16" and detector.dtype_policy.name == "float32"
    assert compile_for_inference(detector, "tf", cache_dir=tmp_path).model is detector
    assert_same_detections(twin.detect(IMAGES[1]), bfloat16_preset.detect(IMAGES[1]), box_atol=0, score_atol=0)
    cases = [
        (dict(runtime="onnxruntime", precision="bfloat16"), "not 'bfloat16' (bfloat16 runs in tf, openvino)"),
        (dict(runtime="tf", precision="int8", calibration_data=tmp_path), "int8 runs in onnxruntime, openvino"),
        (dict(runtime="openvino", precision="int8"), "int8 needs calibration data"),
        (dict(runtime="onnxruntime", calibration_data=tmp_path), "calibration data is for precision int8"),
        (dict(runtime="onnx"), "unknown runtime 'onnx'"),
        (dict(runtime="auto", candidates=("tf", "tensorrt")), "auto candidates must be among"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            compile_for_inference(detector, cache_dir=tmp_path, **kwargs)
    assert not (tmp_path / "models").exists(), "nothing exported for a refused call"


def test_an_export_being_written_by_another_process_is_waited_for(tmp_path):
    from gflv2_keras.inference.runtime_cache import cached_export
    from gflv2_keras.utils.locks import lock_beside

    target = tmp_path / "models" / "abc" / "onnx-fp32-per_image"
    target.parent.mkdir(parents=True)
    # The lock of another live process exporting it (this test's parent process, on this host).
    lock_file = lock_beside(target, "--cache-dir").path
    lock_file.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "process_start": None,
                                     "started": "now", "command": "gflv2 predict --runtime auto", "token": "other"}))

    def finish():
        time.sleep(1.5)
        target.mkdir()
        (target / "export.json").write_text("{}")
        lock_file.unlink()

    writes, lines = [], []
    thread = threading.Thread(target=finish)
    thread.start()
    folder, written = cached_export(target, writes.append, lines.append)
    thread.join()
    assert (folder, written, writes) == (target, False, [])
    assert any("waiting for another process" in line for line in lines)
    folder, written = cached_export(tmp_path / "models" / "abc" / "litert-fp32-fixed", lambda p: p.mkdir(), print)
    assert written and folder.is_dir()


BAD_COMBINATIONS = [
    (["--runtime", "tf", "--precision", "int8", "--calibration-data", "{data}"], "--runtime tf runs --precision"),
    (["--runtime", "onnxruntime", "--precision", "bfloat16"], "not 'bfloat16' (bfloat16 runs in tf, openvino)"),
    (["--runtime", "litert", "--precision", "int8", "--calibration-data", "{data}"], "--runtime litert runs"),
    (["--runtime", "openvino", "--precision", "int8"], "--precision int8 needs --calibration-data"),
    (["--runtime", "onnxruntime", "--calibration-data", "{data}"], "--calibration-data is for --precision int8"),
    (["--runtime", "tf", "--cache-dir", "{data}"], "--cache-dir is for the exported runtimes"),
    (["--runtime", "onnxruntime", "--remeasure"], "--remeasure is for --runtime auto"),
]


def test_bad_combinations_are_one_line_and_exit_2(scoring_nano, tmp_path):
    _, root = scoring_nano
    Image.fromarray(IMAGES[0]).save(tmp_path / "a.png")
    data = str(tmp_path)
    out = tmp_path / "out"
    predict = ["predict", str(tmp_path / "a.png"), "--output", str(out)]
    evaluate = ["evaluate", "--preset", str(root / "preset"), "--data", str(tmp_path / "a.png")]
    cases = [([*predict, "--preset", str(root / "preset"), *[a.format(data=data) for a in argv]], message)
             for argv, message in BAD_COMBINATIONS]  # fmt: skip
    cases += [([*evaluate, *[a.format(data=data) for a in argv]], message) for argv, message in BAD_COMBINATIONS[:3]]
    cases += [
        ([*predict, "--model", str(tmp_path), "--runtime", "onnxruntime"], "--runtime onnxruntime applies to --preset"),
        ([*predict, "--preset", str(root / "preset"), "--runtime", "openvino", "--box-uncertainty"],
         "need --runtime tf, not openvino"),
        ([*predict, "--preset", str(root / "preset"), "--runtime", "auto", "--explain", "0"], "need --runtime tf"),
    ]
    for argv, message in cases:
        code, _, err = run_cli(*argv)
        assert code == 2 and message in err and err.count("\n") == 1, (argv, err)
    assert not out.exists()


@pytest.mark.slow  # the LiteRT export and every runtime timed: ~1 min on 2 cores
@needs_extra("onnx")
@needs_extra("openvino")
@needs_extra("litert")
def test_auto_over_every_runtime_and_evaluate(scoring_nano, cache, tmp_path):
    """Every candidate measured (LiteRT's fixed canvas must also agree on the probe turned 90
    degrees), and ``gflv2 evaluate --runtime auto`` scores what ``--runtime CHOSEN`` scores."""
    from gflv2_keras.data.synthetic import make_synthetic_coco
    from gflv2_keras.inference.runtime_choice import compile_for_inference

    detector, root = scoring_nano
    lines = []
    chosen = compile_for_inference(detector, "auto", cache_dir=cache, probe_image=IMAGES[0], repeats=2,
                                   log=lines.append)  # fmt: skip
    rows = {row["runtime"]: row for row in chosen.measurements}
    assert set(rows) == {"tf", "onnxruntime", "openvino", "litert"}
    litert = rows["litert"]
    assert litert["qualified"] == (litert["median_ms"] is not None)
    assert "turned 90 degrees" in litert["note"] if litert["qualified"] else "left out" in litert["note"]
    assert all(rows[r]["qualified"] for r in ("tf", "onnxruntime", "openvino")), rows

    paths = make_synthetic_coco(str(tmp_path / "coco"), num_train=1, num_val=2, image_size=(72, 120), seed=4,
                                classes=["triangle"])  # fmt: skip
    common = ["evaluate", "--preset", str(root / "preset"), "--annotations", paths["val_annotations"], "--images",
              paths["val_images"], "--no-plots"]  # fmt: skip
    code, out, err = run_cli(*common, "--runtime", "auto", "--cache-dir", str(cache), "--remeasure",
                             "--metrics", str(tmp_path / "auto.json"))  # fmt: skip
    assert code == 0, err
    record = json.loads((tmp_path / "auto.json").read_text())
    ran = record["runtime"]["runtime"]
    extra = ["--cache-dir", str(cache)] if ran != "tf" else []
    code, _, err = run_cli(*common, "--runtime", ran, *extra, "--metrics", str(tmp_path / "direct.json"))
    assert code == 0, err
    assert json.loads((tmp_path / "direct.json").read_text())["stats"] == record["stats"]
