"""Calibrated (static) int8 ONNX and OpenVINO exports (``--weights int8 --calibration-data PATH``).

* The calibration set reads a COCO JSON, a Pascal VOC root, a YOLO data.yaml and a plain folder
  of the same 8 images into the same pixels; unreadable, missing and empty inputs are named.
* The int8 exports really quantize activations (``QuantizeLinear`` / ``FakeQuantize`` nodes on
  the convolutions' inputs; top-k, gathers and NMS read float tensors), load in a fresh process
  that cannot import ``gflv2_keras`` and return, with NMS inside as the float exports, detections
  in the original image's pixels (images of another size than the canvas) that reproduce most of
  ``detector.detect``'s; the in-package runner gives the same detections.
* CLI mistakes around calibration are one line; ``int8`` without calibration data says it is
  weights-only. (The int8 rows of ``gflv2 benchmark --runtime``: ``test_runtime_benchmark.py``.)
"""

import hashlib
import json
import re

import numpy as np
import pytest

from test_export_formats import needs_extra, pattern, run_cli, run_fresh

SIZE = (96, 128)  # the nano preset's landscape input size


@pytest.fixture(scope="module")
def calibration_root(tmp_path_factory):
    """8 tiny synthetic images in the four layouts ``--calibration-data`` reads."""
    from gflv2_keras.data.coco import load_coco
    from gflv2_keras.data.layouts import write_voc, write_yolo
    from gflv2_keras.data.synthetic import make_synthetic_coco

    root = tmp_path_factory.mktemp("calibration")
    paths = make_synthetic_coco(str(root / "coco"), num_train=8, num_val=1, image_size=(72, 120), seed=5)
    dataset = load_coco(paths["train_annotations"], paths["train_images"], for_training=False, verbose=False)
    return {
        "coco": (paths["train_annotations"], paths["train_images"]),
        "voc": (write_voc(dataset, str(root / "voc"), split="train"), None),
        "yolo": (write_yolo(dataset, str(root / "yolo"), split="train"), None),
        "folder": (paths["train_images"], None),
    }


@pytest.fixture(scope="module")
def scored_nano(tmp_path_factory, nano_factory):
    """A nano detector whose scores and boxes are spread out (random weights with a sharpened
    head, so that rankings are not near-ties that any rounding reorders), saved as a preset."""
    from serving_support import CLASS_NAMES

    detector = nano_factory(seed=2, test_config={"score_threshold": 0.05}, class_names=CLASS_NAMES)
    head = detector.head
    for layer, factor in ((head.gfl_cls, 60.0), (head.gfl_reg, 40.0), (head.reg_conf[1], 100.0)):
        kernel = layer.kernel
        kernel.assign(kernel * factor)
    root = tmp_path_factory.mktemp("int8_preset")
    detector.save_to_preset(root / "preset")
    return detector, root / "preset"


def digests(images):
    return sorted(hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest() for image in images)


def test_calibration_reads_every_layout_and_a_folder(calibration_root):
    from gflv2_keras.export.calibration import calibration_images

    seen = {}
    for layout, (path, image_dir) in calibration_root.items():
        lines = []
        images = calibration_images(path, count=None, image_dir=image_dir, log=lines.append)
        assert images.layout == layout and len(images) == 8
        assert any("only 8 calibration images" in line for line in lines), lines
        seen[layout] = digests(images)
        assert seen[layout] == digests(images), "a second pass (NNCF iterates twice) gives the same images"
    assert seen["coco"] == seen["voc"] == seen["yolo"] == seen["folder"]
    subset = calibration_images(calibration_root["folder"][0], count=3, log=lambda line: None)
    assert [p.rsplit("/", 1)[-1] for p in subset.paths] == ["000001.jpg", "000005.jpg", "000008.jpg"]


def test_calibration_names_what_it_cannot_use(tmp_path, calibration_root):
    from PIL import Image

    from gflv2_keras.export.calibration import calibration_images

    with pytest.raises(ValueError, match=r"nowhere: not found"):
        calibration_images(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty: folder has no images"):
        calibration_images(tmp_path / "empty")
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"none of its 1 images is readable.*broken\.jpg"):
        calibration_images(folder)
    Image.fromarray(pattern(40, 50, 0)).save(folder / "good.png")
    lines = []
    images = calibration_images(folder, log=lines.append)
    assert [p.rsplit("/", 1)[-1] for p in images.paths] == ["good.png"]
    assert any("broken.jpg" in line and "left out" in line for line in lines), lines


@pytest.mark.parametrize("fmt", [pytest.param(f, marks=needs_extra(f)) for f in ("onnx", "openvino")])
def test_calibrated_int8_export_runs_fresh_in_its_runtime(fmt, scored_nano, calibration_root, tmp_path):
    if fmt == "openvino":
        pytest.importorskip("nncf", reason="pip install 'gflv2-keras[openvino]' (nncf)")
    detector, preset = scored_nano
    coco_json, coco_images = calibration_root["coco"]
    folder = tmp_path / f"{fmt}_int8"
    code, out, err = run_cli("export", "--format", fmt, "--preset", str(preset), "--output", str(folder),
                             "--weights", "int8", "--calibration-data", coco_json,
                             "--calibration-image-dir", coco_images)  # fmt: skip
    assert code == 0, err
    metadata = json.loads((folder / "export.json").read_text())
    assert metadata["weights"] == "int8" and metadata["quantization"]["method"] == "static"
    assert metadata["quantization"]["calibration_images"] == 8 and metadata["nms_inside"]

    # Activations are quantized: quantize nodes feed the convolutions.
    if fmt == "onnx":
        import onnx

        graph = onnx.load(str(folder / "model.onnx")).graph
        quantize = [n for n in graph.node if n.op_type == "QuantizeLinear"]
        convs = [n for n in graph.node if n.op_type == "Conv"]
        dequantized = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
        assert len(quantize) >= len(convs) > 0
        assert all(n.input[0] in dequantized for n in convs), "every Conv reads a dequantized int8 activation"
        after_head = [n for n in graph.node if n.op_type in ("TopK", "NonMaxSuppression", "GatherND")]
        assert after_head and not any(i in dequantized for n in after_head for i in n.input), "decoding stays float"
    else:
        xml = (folder / "model.xml").read_text()
        assert len(re.findall(r'type="FakeQuantize"', xml)) >= len(re.findall(r'type="Convolution"', xml)) > 0

    # Images of another size than the canvas (1.5x): the fresh process letterboxes them with
    # postprocess.py and maps the boxes back, so they must land in the images' own pixels.
    images = [pattern(SIZE[0] * 3 // 2, SIZE[1] * 3 // 2, seed) for seed in range(3)]
    results = run_fresh(folder, images, tmp_path)
    references = [detector.detect(image) for image in images]
    for image, result, reference in zip(images, results, references):
        assert len(result["boxes"]) > 0 and len(reference["boxes"]) > 0
        boxes, (height, width) = result["boxes"], image.shape[:2]
        assert boxes.min() >= -0.5 and boxes[:, 2].max() <= width + 0.5 and boxes[:, 3].max() <= height + 0.5
        assert boxes[:, 2].max() > SIZE[1] + 1, "boxes beyond the canvas: original pixels, not canvas pixels"
        assert_mostly_reproduced(result, reference)

    # The in-package runner (gflv2 predict --model) gives the fresh process' detections.
    from gflv2_keras.export.runtimes import load_exported

    found = load_exported(folder).detect(images[0])
    np.testing.assert_allclose(found["boxes"], results[0]["boxes"], atol=1e-3)
    np.testing.assert_array_equal(found["labels"], results[0]["labels"])


def assert_mostly_reproduced(result, reference, top=10, iou=0.7):
    """Most of the float detector's ``top`` detections have an int8 one of the same label within ``iou``."""
    from gflv2_keras.evaluation.matching import box_iou

    overlaps = box_iou(reference["boxes"][:top], result["boxes"])
    same_label = reference["labels"][:top, None] == result["labels"][None, :]
    matched = int(np.sum(np.max(np.where(same_label, overlaps, 0.0), axis=1, initial=0.0) >= iou))
    assert matched >= 0.7 * min(top, len(reference["boxes"])), (matched, len(reference["boxes"]))


@needs_extra("onnx")
def test_calibration_options_are_checked_in_one_line(scored_nano, calibration_root, tmp_path):
    _, preset = scored_nano
    folder_data = calibration_root["folder"][0]
    cases = [
        (("--format", "onnx", "--weights", "fp32", "--calibration-data", folder_data), "--calibration-data"),
        (("--format", "litert", "--weights", "int8", "--calibration-data", folder_data), "onnx and openvino"),
        (("--format", "openvino", "--weights", "int8"), "--calibration-data"),
        (("--format", "onnx", "--weights", "int8", "--calibration-data", str(tmp_path / "none")), "none: not found"),
        (("--weights", "int8", "--calibration-data", folder_data), "saved_model"),
    ]
    for argv, expected in cases:
        code, _, err = run_cli("export", "--preset", str(preset), "--output", str(tmp_path / "out"), *argv)
        assert code == 2 and expected in err and err.count("\n") == 1, (argv, err)
        assert not (tmp_path / "out").exists()


def test_int8_without_calibration_data_says_it_is_weights_only(tmp_path):
    code, _, err = run_cli("export", "--format", "onnx", "--weights", "int8", "--preset", str(tmp_path / "no_preset"),
                           "--output", str(tmp_path / "out"))  # fmt: skip
    assert "weights only (int8-dynamic)" in err and "--calibration-data" in err
    assert code == 2 and "no_preset" in err.splitlines()[-1]  # then the missing preset, in one line
