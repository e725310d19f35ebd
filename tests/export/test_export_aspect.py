"""Exports keep the aspect ratio; ``gflv2 predict --model`` runs every export (issue 20).

* A fixed-size export (ONNX, LiteRT) resizes a portrait or landscape image keeping its ratio into
  its canvas and pads it: its detections are those of the official pipeline run on the same
  keep-ratio resize padded to the same canvas (the reference below is built from TensorFlow's
  resize and ``detection_graph.detect_batch`` with a preset scale that leaves the resized image
  as it is), not of a stretched image.
* A ``--dynamic-size`` export (ONNX, OpenVINO) is ``detector.detect`` (what ``predict --preset``
  runs) on non-square images of several sizes.
* ``gflv2 predict --model`` takes the SavedModel's version folder and base folder and each
  portable export (folder or model file), and writes the detections of that export.
* A full disk during ``gflv2 export`` (TensorFlow's ``ResourceExhaustedError``, or ``ENOSPC``
  from a converter) ends in one line naming the output, and nothing partial is left.
"""

import errno
import json
import shutil

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from test_export_formats import SIZE, assert_parity, needs_extra, pattern, run_cli, run_fresh

LANDSCAPE, PORTRAIT = pattern(60, 100, 31), pattern(150, 90, 32)  # neither is the canvas' 96x128 shape


def keep_ratio(height, width, canvas):
    """The rule written out: ``factor = min(H / h, W / w)``, each side ``int(side * factor + 0.5)``."""
    factor = min(canvas[0] / height, canvas[1] / width)
    return int(height * factor + 0.5), int(width * factor + 0.5)


@pytest.fixture(scope="module")
def probe(scoring_nano):
    """The scoring nano preset loaded again, its input scale to be set per reference."""
    from gflv2_keras import GFLV2Detector

    _, root = scoring_nano
    return GFLV2Detector.from_preset(root / "preset").build_for_inference()


def padded_canvas_reference(probe, image, canvas):
    """The official pipeline on ``image`` resized keeping its ratio into ``canvas`` and padded to it.

    TensorFlow resizes (``preprocessing.resize_image``, the official bilinear); the probe's scale is
    that resized size, so its own keep-ratio resize is the identity (factor 1), and ``canvas=``
    pads the network input to the export's canvas. Boxes are divided by the official factor.
    """
    from gflv2_keras.models import detection_graph
    from gflv2_keras.models.preprocessing import resize_image

    h, w = image.shape[:2]
    new_h, new_w = keep_ratio(h, w, canvas)
    resized = tf.cast(resize_image(tf.constant(image[None]), new_h, new_w), tf.uint8)
    probe.preprocessor.image_converter.image_scale = (max(new_h, new_w), min(new_h, new_w))
    padded = tuple(-(-side // 32) * 32 for side in canvas)
    found = detection_graph.detect_batch(probe, resized, bounding_box_format="xyxy", canvas=padded)
    count = int(found["num_detections"][0])
    factor = np.float32([new_w, new_h, new_w, new_h]) / np.float32([w, h, w, h])
    return {"boxes": np.asarray(found["boxes"][0, :count]) / factor,
            "confidence": np.asarray(found["confidence"][0, :count]), "labels": np.asarray(found["labels"][0, :count])}


def stretched(image, size):
    """What the old runner fed a fixed-size export: the image stretched to ``size`` (PIL bilinear)."""
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))


def test_letterbox_is_the_keep_ratio_rule_and_tensorflows_resize():
    from gflv2_keras.export.numpy_postprocess import keep_ratio_size, letterbox, resize_bilinear, to_original
    from gflv2_keras.models.preprocessing import resize_image, static_rescale_size

    for height, width in ((60, 100), (150, 90), (96, 128), (3, 2000), (1000, 7), (97, 129), (40, 40)):
        expected = tuple(max(1, v) for v in keep_ratio(height, width, SIZE))
        assert keep_ratio_size(height, width, *SIZE) == expected, (height, width)
        if width >= height:  # the canvas' orientation: the official size at the scale (128, 96)
            official = static_rescale_size(height, width, (128, 96))
            assert keep_ratio_size(height, width, *SIZE) == tuple(max(1, v) for v in official)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    for size in ((74, 106), (20, 29), (37, 53), (61, 17), (1, 5)):
        expected = resize_image(tf.constant(image), *size).numpy().astype(np.uint8)
        np.testing.assert_array_equal(resize_bilinear(image, *size), expected, err_msg=str(size))
    canvas, shape = letterbox(PORTRAIT, *SIZE)
    assert canvas.shape == (*SIZE, 3) and tuple(shape) == (96, 58)
    assert not canvas[:, 58:].any() and canvas[:, :58].any()
    boxes = np.float32([[0, 0, 58, 96], [10, 20, 30, 40]])
    expected = [[0, 0, 90, 150], [10 * 90 / 58, 20 * 150 / 96, 30 * 90 / 58, 40 * 150 / 96]]
    np.testing.assert_allclose(to_original(boxes, shape, PORTRAIT.shape), expected, rtol=1e-6)


@pytest.fixture(scope="module")
def exports(scoring_nano, tmp_path_factory):
    """``exports(fmt, dynamic)``: the scoring nano preset exported once per module and kind."""
    from gflv2_keras.export.formats import export_portable

    detector, _ = scoring_nano
    base = tmp_path_factory.mktemp("aspect")
    made = {}

    def get(fmt, dynamic=False):
        if (fmt, dynamic) not in made:
            made[fmt, dynamic] = export_portable(detector, fmt, base / f"{fmt}_{'dynamic' if dynamic else 'fixed'}",
                                                 input_size="dynamic" if dynamic else None)  # fmt: skip
        return made[fmt, dynamic]

    return get


@pytest.mark.parametrize("fmt", [pytest.param(f, marks=needs_extra(f)) for f in ("onnx", "litert")])
def test_fixed_canvas_keeps_the_aspect_ratio(fmt, exports, probe, tmp_path):
    from gflv2_keras.export.runtimes import load_exported

    folder = exports(fmt)
    metadata = json.loads((folder / "export.json").read_text())
    assert metadata["canvas"] == "fixed" and metadata["input_size"] == list(SIZE)
    assert metadata["inputs"] == ["images", "image_shape"] and (folder / "postprocess.py").is_file()
    exported = load_exported(folder)
    references = [padded_canvas_reference(probe, image, SIZE) for image in (LANDSCAPE, PORTRAIT)]
    detected = [exported.detect(image) for image in (LANDSCAPE, PORTRAIT)]
    assert_parity(detected, references)
    # A deployment without the package (postprocess.py's letterbox, then the runtime) gets the same.
    assert_parity(run_fresh(folder, [LANDSCAPE, PORTRAIT], tmp_path), references)
    # Not the stretched image's detections (what the runner computed before).
    old = exported.run_batch(stretched(PORTRAIT, SIZE)[None])[0]
    scale = np.float32([PORTRAIT.shape[1] / SIZE[1], PORTRAIT.shape[0] / SIZE[0]] * 2)
    assert len(old["boxes"]) != len(references[1]["boxes"]) or not np.allclose(old["boxes"] * scale,
                                                                              references[1]["boxes"], atol=0.5)


# OpenVINO's dynamic export is the ONNX graph converted: slow run (as test_runtime_choice's OpenVINO case).
@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=needs_extra("onnx")),
                                 pytest.param("openvino", marks=[needs_extra("openvino"), pytest.mark.slow])])
def test_dynamic_size_export_is_predict(fmt, exports, scoring_nano):
    from gflv2_keras.export.runtimes import load_exported

    detector, _ = scoring_nano
    folder = exports(fmt, dynamic=True)
    metadata = json.loads((folder / "export.json").read_text())
    assert metadata["canvas"] == "per_image" and metadata["input_size"] is None
    assert metadata["inputs"] == ["images"] and not (folder / "postprocess.py").exists()
    exported = load_exported(folder)
    assert exported.input_scale == tuple(detector.input_scale)
    images = [LANDSCAPE, PORTRAIT, pattern(71, 45, 33)]
    assert_parity([exported.detect(image) for image in images], [detector.detect(image) for image in images])


def test_dynamic_size_is_refused_for_litert_and_with_input_size(scoring_nano, tmp_path):
    _, root = scoring_nano
    for extra, words in ((["--format", "litert"], "litert needs a fixed input size"),
                         (["--format", "onnx", "--input-size", "64", "96"], "exclude each other")):  # fmt: skip
        code, _, err = run_cli("export", "--preset", str(root / "preset"), "--output", str(tmp_path / "x"),
                               "--dynamic-size", *extra)  # fmt: skip
        assert code == 2 and words in err and err.count("\n") == 1, err
    assert not (tmp_path / "x").exists()


def predicted(tmp_path, model, image, name):
    """``gflv2 predict IMAGE --model MODEL``'s JSON detections for one PNG image."""
    source = tmp_path / f"{name}_in"
    source.mkdir()
    Image.fromarray(image).save(source / "image.png")
    code, out, err = run_cli("predict", str(source / "image.png"), "--model", str(model), "--output",
                             str(tmp_path / f"{name}_out"))  # fmt: skip
    assert code == 0, err
    record = json.loads((tmp_path / f"{name}_out" / "image.json").read_text())
    assert (record["height"], record["width"]) == image.shape[:2]
    return {
        "boxes": np.float32([d["box"] for d in record["detections"]]).reshape(-1, 4),
        "confidence": np.float32([d["confidence"] for d in record["detections"]]),
        "labels": np.int64([d["label"] for d in record["detections"]]),
        "class_names": [d["class_name"] for d in record["detections"]],
    }


def test_predict_model_takes_the_saved_model_folders(exported, tmp_path):
    """The default export (``gflv2 export --output BASE`` wrote ``BASE/3``): version and base folder."""
    from serving_support import CLASS_NAMES

    reference = exported.detector.detect(PORTRAIT)
    for name, model in (("version", exported.path), ("base", exported.base),
                        ("file", exported.path / "saved_model.pb")):  # fmt: skip
        found = predicted(tmp_path, model, PORTRAIT, name)
        assert_parity([found], [reference])
        assert found["class_names"] == [CLASS_NAMES[label] for label in reference["labels"]]


@pytest.mark.parametrize(
    "fmt, dynamic, as_file",
    [
        pytest.param("onnx", False, False, marks=needs_extra("onnx")),
        pytest.param("litert", False, True, marks=needs_extra("litert")),
        pytest.param("openvino", True, True, marks=needs_extra("openvino")),
    ],
)
def test_predict_model_takes_every_portable_export(fmt, dynamic, as_file, exports, tmp_path):
    from gflv2_keras.export.formats import MODEL_FILES
    from gflv2_keras.export.runtimes import load_exported

    folder = exports(fmt, dynamic)
    found = predicted(tmp_path, folder / MODEL_FILES[fmt] if as_file else folder, LANDSCAPE, fmt)
    assert_parity([found], [load_exported(folder).detect(LANDSCAPE)])


@needs_extra("onnx")
def test_an_export_from_before_keep_ratio_refuses_other_sizes(exports, tmp_path):
    from gflv2_keras.export.runtimes import load_exported

    legacy = tmp_path / "legacy"
    shutil.copytree(exports("onnx"), legacy)
    metadata = json.loads((legacy / "export.json").read_text())
    for key in ("canvas", "inputs", "input_scale"):
        del metadata[key]
    (legacy / "export.json").write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match=r"before keep-ratio canvases .* re-export"):
        load_exported(legacy).detect(PORTRAIT)


def test_a_full_disk_is_one_line_and_leaves_nothing(scoring_nano, tmp_path, monkeypatch):
    from gflv2_keras.export import formats
    from gflv2_keras.export import saved_model as export_module

    _, root = scoring_nano
    reason = "\n".join(["Failed to write variables/variables.data-00000-of-00001: No space left on device"]
                       + [f"  [[{{node SaveV2_{i}}}]]" for i in range(58)])  # fmt: skip

    def full_saved_model(endpoints, directory):
        (directory / "saved_model.pb").write_bytes(b"partial")
        raise tf.errors.ResourceExhaustedError(None, None, reason)

    monkeypatch.setattr(export_module, "write_saved_model", full_saved_model)
    base = tmp_path / "models" / "nano"
    code, _, err = run_cli("export", "--preset", str(root / "preset"), "--output", str(base), "--no-warmup")
    assert code == 2 and err.count("\n") == 1, err
    assert str(base / "1") in err and "No space left on device" in err, err
    assert not base.exists() or not [p for p in base.iterdir() if p.name == "1" or ".tmp-" in p.name]

    def full_onnx(function, folder, weights, detector):
        (folder / "model.onnx").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "model.onnx"))

    monkeypatch.setitem(formats.WRITERS, "onnx", full_onnx)
    target = tmp_path / "onnx_out"
    code, _, err = run_cli("export", "--format", "onnx", "--preset", str(root / "preset"), "--output", str(target))
    assert code == 2 and err.count("\n") == 1, err
    assert f"{target}: cannot write the export: No space left on device" in err, err
    assert not [p for p in tmp_path.iterdir() if p.name == "onnx_out" or p.name.startswith(".onnx_out.tmp-")]
