"""``--box-layout``: Keras' box-format names for ONNX, LiteRT and OpenVINO exports.

An export in format F returns ``ops.box_formats.convert_boxes`` of the xyxy detections of the
same runtime (``rel_*`` relative to the input size), NMS inside (ONNX) or in NumPy (LiteRT);
exports written before these names (``export.json`` ``"box_layout": "yxyx"``: normalised) still
read as normalised; the CLI takes every name, explains the changed ``yxyx`` in one line and
refuses unknown names.
"""

import json
import shutil

import numpy as np
import pytest

from gflv2_keras.ops.box_formats import BOUNDING_BOX_FORMATS, convert_boxes

from test_export_formats import SIZE, needs_extra, pattern, run_cli


@pytest.fixture(scope="module")
def layout_setup(scoring_nano):
    detector, root = scoring_nano
    return detector, root, pattern(*SIZE, 11)


@pytest.fixture(scope="module")
def exports(layout_setup, tmp_path_factory):
    """``exports(runtime, fmt)``: the folder of that export, written once per module."""
    from gflv2_keras.export.formats import export_portable

    detector, _, _ = layout_setup
    base = tmp_path_factory.mktemp("layouts")
    made = {}

    def get(fmt, layout):
        if (fmt, layout) not in made:
            made[fmt, layout] = export_portable(detector, fmt, base / f"{fmt}_{layout}", box_layout=layout)
        return made[fmt, layout]

    return get


def converted(boxes, fmt):
    return np.asarray(convert_boxes(np.asarray(boxes, np.float32), "xyxy", fmt, *SIZE))


def scale_of(fmt):
    """Tolerance unit: one pixel, or one pixel of the input relative to its size."""
    return 1.0 / max(SIZE) if fmt.startswith("rel_") else 1.0


def assert_same_detections(result, reference, fmt):
    assert len(result["boxes"]) == len(reference["boxes"]) > 0
    np.testing.assert_array_equal(result["labels"], reference["labels"])
    np.testing.assert_allclose(result["confidence"], reference["confidence"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(result["boxes"], converted(reference["boxes"], fmt), atol=1e-3 * scale_of(fmt), rtol=0)


@pytest.mark.parametrize(
    "fmt, layout",
    [
        pytest.param("onnx", "rel_yxyx", marks=needs_extra("onnx")),
        pytest.param("onnx", "xywh", marks=[needs_extra("onnx"), pytest.mark.slow]),  # one per runtime by default
        pytest.param("litert", "rel_yxyx", marks=[needs_extra("litert"), pytest.mark.slow]),
        pytest.param("litert", "center_yxhw", marks=needs_extra("litert")),
    ],
)
def test_box_layout_is_convert_boxes_of_the_xyxy_detections(fmt, layout, layout_setup, exports):
    from gflv2_keras.export.runtimes import load_exported

    detector, _, image = layout_setup
    plain, other = load_exported(exports(fmt, "xyxy")), load_exported(exports(fmt, layout))
    assert other.output_box_format == layout and other.bounding_box_format == "xyxy"  # what detect returns
    metadata = json.loads((exports(fmt, layout) / "export.json").read_text())
    assert metadata["bounding_box_format"] == layout and "box_layout" not in metadata
    reference = plain.run_batch(image[None])[0]
    assert_same_detections(other.run_batch(image[None])[0], reference, layout)
    # ``detect`` answers in the format asked for (xyxy pixels by default), whatever the export's.
    for asked in ("xyxy", "rel_xyxy"):
        ours, theirs = other.detect(image, bounding_box_format=asked), plain.detect(image, bounding_box_format=asked)
        np.testing.assert_allclose(ours["boxes"], theirs["boxes"], atol=1e-3 * scale_of(asked), rtol=0)
    np.testing.assert_allclose(plain.detect(image)["boxes"], detector.detect(image)["boxes"], atol=0.5, rtol=0)


def legacy_copy(folder, tmp_path, layout):
    """``folder`` as an export written before Keras' names: ``"box_layout"``, no ``"bounding_box_format"``."""
    copy = tmp_path / f"legacy_{folder.name}"
    shutil.copytree(folder, copy)
    metadata = json.loads((copy / "export.json").read_text())
    del metadata["bounding_box_format"]
    metadata["box_layout"] = layout
    (copy / "export.json").write_text(json.dumps(metadata, indent=1))
    return copy


@pytest.mark.parametrize(
    "fmt, model_layout",
    [
        # An old ONNX "yxyx" export computed (ymin, xmin, ymax, xmax) / (H, W, H, W) in the graph: rel_yxyx.
        pytest.param("onnx", "rel_yxyx", marks=needs_extra("onnx")),
        # An old LiteRT export's graph gave xyxy candidates; its postprocess normalised after NMS.
        pytest.param("litert", "xyxy", marks=needs_extra("litert")),
    ],
)
def test_an_old_yxyx_export_reads_as_normalised(fmt, model_layout, layout_setup, exports, tmp_path):
    from gflv2_keras.export.runtimes import export_box_format, load_exported

    _, _, image = layout_setup
    assert export_box_format({"box_layout": "yxyx"}) == "rel_yxyx"
    assert export_box_format({"box_layout": "xyxy"}) == "xyxy"
    assert export_box_format({}) == "xyxy"
    with pytest.raises(ValueError, match="unknown box layout"):
        export_box_format({"box_layout": "xywh"})
    old = load_exported(legacy_copy(exports(fmt, model_layout), tmp_path, "yxyx"))
    plain = load_exported(exports(fmt, "xyxy"))
    assert old.output_box_format == "rel_yxyx"
    boxes = old.run_batch(image[None])[0]["boxes"]
    assert 0 <= boxes.min() and boxes.max() <= 1 + 1e-6
    assert_same_detections(old.run_batch(image[None])[0], plain.run_batch(image[None])[0], "rel_yxyx")
    np.testing.assert_allclose(old.detect(image)["boxes"], plain.detect(image)["boxes"], atol=1e-3, rtol=0)


@needs_extra("onnx")
def test_cli_box_layout_yxyx_is_pixels_with_a_note(layout_setup, exports, tmp_path):
    from gflv2_keras.export.runtimes import load_exported

    _, root, image = layout_setup
    folder = tmp_path / "yxyx"
    code, out, err = run_cli("export", "--format", "onnx", "--preset", str(root / "preset"), "--output", str(folder),
                             "--box-layout", "yxyx")  # fmt: skip
    assert code == 0, err
    notes = [line for line in (out + err).splitlines() if "rel_yxyx" in line]
    assert len(notes) == 1 and "pixels" in notes[0], out + err
    exported = load_exported(folder)
    assert exported.output_box_format == "yxyx"
    reference = load_exported(exports("onnx", "xyxy")).run_batch(image[None])[0]
    assert_same_detections(exported.run_batch(image[None])[0], reference, "yxyx")


def test_cli_refuses_unknown_or_misplaced_box_layouts(layout_setup, tmp_path):
    _, root, _ = layout_setup
    code, _, err = run_cli("export", "--format", "onnx", "--preset", str(root / "preset"), "--output",
                           str(tmp_path / "x"), "--box-layout", "normalized")  # fmt: skip
    assert code == 2 and "--box-layout" in err and "rel_yxyx" in err and err.count("\n") == 1, err
    code, _, err = run_cli("export", "--preset", str(root / "preset"), "--output", str(tmp_path / "sm"),
                           "--box-layout", "rel_yxyx")  # fmt: skip
    assert code == 2 and "--box-layout" in err and "onnx" in err, err
    assert not (tmp_path / "x").exists() and not (tmp_path / "sm").exists()


def test_help_names_every_box_format():
    import argparse

    from gflv2_keras.export import cli

    subparsers = argparse.ArgumentParser().add_subparsers()
    cli.register(subparsers)
    words = set(cli.BOX_LAYOUT_HELP.replace(",", " ").replace("(", " ").replace(")", " ").split())
    assert set(BOUNDING_BOX_FORMATS) <= words
    assert "--box-layout FORMAT" in subparsers.choices["export"].format_help()
