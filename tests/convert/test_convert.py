"""``gflv2 convert``: official PyTorch checkpoints → preset folders, checked against an independent
PyTorch implementation of the official model (``tests/torch_reference``).

Parity: a random reference model is saved as an official-format checkpoint, converted, loaded
with ``GFLV2Detector.from_preset(DIR)`` and run on the same normalised input. Joint scores and
box logits must agree within 1e-4 (Keras float32 vs the float64 reference), and detections from
the reference post-processing (``GFocalHead._get_bboxes_single``, NumPy) must equal those of the Keras post-processing:
same count and labels, boxes within 1e-2 px, scores within 1e-4.

Default tests use reduced models that still take every code path (Bottleneck and BasicBlock,
ResNeXt groups, DCNv1/DCNv2 in the official stage layouts, Res2Net stage/normal blocks, FPN,
DGQP head); full-size official presets are ``@pytest.mark.slow``.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import keras  # noqa: E402

from gflv2_keras import GFLV2Detector  # noqa: E402
from gflv2_keras.cli import main as cli_main  # noqa: E402
from gflv2_keras.convert import (  # noqa: E402
    CheckpointMismatchError,
    CheckpointReadError,
    DCNMismatchError,
    convert_checkpoint,
    convert_state_dict,
    read_official_checkpoint,
)
from gflv2_keras.convert.checkpoint import import_torch  # noqa: E402
from gflv2_keras.layers.naming import layer_name  # noqa: E402
from gflv2_keras.layers.walk import find_layer  # noqa: E402
from gflv2_keras.ops.postprocess import postprocess as keras_postprocess  # noqa: E402
from gflv2_keras.models.preset_io import CONFIG_FILE, METADATA_FILE  # noqa: E402
from gflv2_keras.presets import PRESETS  # noqa: E402
from torch_reference import gflv2_torch as ref  # noqa: E402

SCORE_TOL = 1e-4
BOX_LOGIT_TOL = 1e-4
BOX_PX_TOL = 1e-2
NMS_PRE = 100  # below the P3 point count of the test inputs, so the per-level top-k path runs
INPUT_HW = (96, 128)
IMAGE_SHAPE = (90.0, 125.0)  # resized, unpadded (h, w) that boxes are clamped to
SCALE_FACTOR = (0.75, 0.8)  # (h, w) resized / original

DCN_V1 = {"modulated": False, "deform_groups": 1}
DCN_V2 = {"modulated": True, "deform_groups": 1}
F, T = False, True


def small(backbone, num_classes=6, head=None):
    return {
        "backbone": backbone,
        "num_classes": num_classes,
        "fpn_channels": 32,
        "head": head or {"feat_channels": 32, "stacked_convs": 2, "norm_groups": 8},
    }


SMALL_CONFIGS = {
    # ResNet-50 layout at 1/4 width, full 4-conv towers.
    "r50_w16": small(
        {"type": "resnet", "depth": 50, "base_channels": 16},
        head={"feat_channels": 32, "stacked_convs": 4, "norm_groups": 8},
    ),
    # R-101-dcn stage layout (c3-c5, stride-2 first blocks included), with a DCNv2 (27-channel,
    # modulated) checkpoint in case one turns up; DCNv1 is covered by the ResNeXt and Res2Net cases.
    "r50_w16_dcnv2_c3c5": small(
        {"type": "resnet", "depth": 50, "base_channels": 16, "stage_with_dcn": [F, T, T, T], "dcn": DCN_V2}
    ),
    # X-101-dcn layout at depth 50: ResNeXt 32x4d, grouped DCNv1 with an ungrouped offset conv in c4-c5.
    # (base_channels stays 64: reduced ResNeXt widths differ between mmdet and the Keras model.)
    "x50_32x4d_dcnv1_c4c5": small(
        {"type": "resnext", "depth": 50, "groups": 32, "base_width": 4, "stage_with_dcn": [F, F, T, T], "dcn": DCN_V1}
    ),
    # R2-101-dcn layout at depth 50 and 1/4 width: Res2Net v1d, DCNv1 on every convs.i in c4-c5.
    "r2_50_w16_dcnv1_c4c5": small(
        {"type": "res2net", "depth": 50, "base_channels": 16, "base_width": 8, "scales": 4,
         "stage_with_dcn": [F, F, T, T], "dcn": DCN_V1}
    ),
    # The nano preset: ResNet-18 BasicBlocks, one-conv towers.
    "r18_nano_preset": PRESETS["gflv2_test_r18_nano"]["config"],
}


# ----------------------------------------------------------------------------- helpers
def _input(seed=0, hw=INPUT_HW):
    """A normalised RGB batch: NCHW float64 for torch, NHWC float32 for Keras (same values)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, size=(1, *hw, 3)).astype(np.float32)
    nhwc = (pixels - np.array([123.675, 116.28, 103.53], np.float32)) / np.array([58.395, 57.12, 57.375], np.float32)
    return torch.from_numpy(nhwc.transpose(0, 3, 1, 2).astype(np.float64)), nhwc


def _architecture_folder(config, directory):
    """A preset folder holding only ``config.json``: enough for ``from_preset(load_weights=False)``."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CONFIG_FILE).write_text(json.dumps({"class_name": "GFLV2Detector", "config": config}))
    return directory


def _class_names(n):
    return [f"class_{i}" for i in range(n)]


def _keras_detections(detector, scores, box_logits, hw=INPUT_HW):
    sizes, points, strides = detector.points_for(*hw)
    out = keras_postprocess(
        scores, box_logits, points, strides, sizes,
        {"image_shape": np.array([IMAGE_SHAPE], np.float32), "scale_factor": np.array([SCALE_FACTOR], np.float32)},
        num_classes=detector.num_classes, reg_max=detector.reg_max, nms_pre=NMS_PRE,
    )
    n = int(out["num_detections"][0])
    return (np.asarray(out["boxes"][0, :n]), np.asarray(out["confidence"][0, :n]),
            np.asarray(out["labels"][0, :n]).astype(np.int64))


def _match_detections(reference, keras_dets):
    """Max |box| and |score| differences after pairing detections one-to-one.

    Pairs by label and nearest box (not by rank, which near-equal scores may swap). Fails if
    the counts differ or a reference detection has no partner of the same label.
    """
    ref_boxes, ref_scores, ref_labels = reference
    k_boxes, k_scores, k_labels = keras_dets
    assert len(ref_labels) == len(k_labels), f"{len(ref_labels)} reference detections vs {len(k_labels)} Keras"
    assert len(ref_labels) > 0, "the test model produced no detections; the comparison would be vacuous"
    used = np.zeros(len(k_labels), bool)
    box_err = score_err = 0.0
    for box, score, label in zip(ref_boxes, ref_scores, ref_labels):
        candidates = np.flatnonzero((k_labels == label) & ~used)
        assert len(candidates), f"no Keras detection of label {label} left for reference box {box}"
        j = candidates[np.argmin(np.abs(k_boxes[candidates] - box).max(axis=1))]
        used[j] = True
        box_err = max(box_err, float(np.abs(k_boxes[j] - box).max()))
        score_err = max(score_err, float(abs(k_scores[j] - score)))
    return box_err, score_err


def _run_parity(config, tmp_path, preset=None, hw=INPUT_HW, seed=0):
    """Reference model → checkpoint → ``convert_checkpoint`` → ``from_preset(DIR)`` → both forwards."""
    class_names = config.get("class_names") or _class_names(config["num_classes"])
    model = ref.build_reference(config, seed=seed)
    checkpoint = ref.save_checkpoint(model, tmp_path / "official.pth", meta=ref.official_meta(class_names))
    output = tmp_path / "converted"
    result = convert_checkpoint(
        checkpoint, preset or _architecture_folder(config, tmp_path / "architecture"), output, log=lambda *_: None
    )
    detector = GFLV2Detector.from_preset(str(output))
    x_torch, x_keras = _input(seed, hw)
    with torch.no_grad():
        levels = model(x_torch)
    ref_scores, ref_boxes = ref.flatten_outputs(levels)
    out = detector(x_keras, training=False)
    k_scores, k_boxes = np.asarray(out["confidence"]), np.asarray(out["box_logits"])
    return {
        "detector": detector,
        "result": result,
        "checkpoint": checkpoint,
        "output": output,
        "class_names": class_names,
        "score_err": float(np.abs(k_scores - ref_scores).max()),
        "box_logit_err": float(np.abs(k_boxes - ref_boxes).max()),
        "box_logit_scale": float(np.abs(ref_boxes).max()),
        "reference_detections": ref.postprocess(levels, IMAGE_SHAPE, SCALE_FACTOR, detector.num_classes,
                                                nms_pre=NMS_PRE),
        "keras_detections": _keras_detections(detector, k_scores, k_boxes, hw),
        "shapes_equal": k_scores.shape == ref_scores.shape and k_boxes.shape == ref_boxes.shape,
    }


def _report(name, case, box_err, score_err):
    print(
        f"\n[parity {name}] scores {case['score_err']:.2e}, box logits {case['box_logit_err']:.2e} "
        f"(|logit| max {case['box_logit_scale']:.1f}), detections {len(case['keras_detections'][2])}: "
        f"boxes {box_err:.2e} px, scores {score_err:.2e}"
    )


# ----------------------------------------------------------------------------- parity (reduced models)
@pytest.fixture(scope="module", params=sorted(SMALL_CONFIGS))
def parity_case(request, tmp_path_factory):
    keras.utils.set_random_seed(0)
    case = _run_parity(SMALL_CONFIGS[request.param], tmp_path_factory.mktemp(request.param))
    case["name"] = request.param
    return case


def test_raw_outputs_match_reference(parity_case):
    assert parity_case["shapes_equal"]
    assert parity_case["score_err"] < SCORE_TOL, parity_case["name"]
    assert parity_case["box_logit_err"] < BOX_LOGIT_TOL, parity_case["name"]


def test_detections_match_reference_postprocessing(parity_case):
    box_err, score_err = _match_detections(parity_case["reference_detections"], parity_case["keras_detections"])
    _report(parity_case["name"], parity_case, box_err, score_err)
    assert box_err < BOX_PX_TOL
    assert score_err < SCORE_TOL


def test_preset_folder_records_provenance(parity_case):
    result, detector = parity_case["result"], parity_case["detector"]
    checkpoint = parity_case["checkpoint"]
    meta = json.loads((parity_case["output"] / METADATA_FILE).read_text())
    source = meta["converted_from"]
    assert source["file"] == checkpoint.name
    assert source["sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest() == result["sha256"]
    assert meta["checkpoint_meta"]["mmdet_version"] == "2.6.0"
    assert meta["checkpoint_meta"]["epoch"] == 12
    assert meta["checkpoint_meta"]["CLASSES"] == parity_case["class_names"]
    assert detector.class_names == parity_case["class_names"]  # taken from meta["CLASSES"]
    assert result["parameters"] == detector.count_params_official() == meta["parameters"]
    # Every tensor of the checkpoint is either mapped or one of the known bookkeeping tensors.
    state, _ = read_official_checkpoint(checkpoint)
    assert result["tensors"] + len(result["ignored"]) == len(state)
    assert all(k.endswith(("num_batches_tracked", "integral.project")) for k in result["ignored"])


# ----------------------------------------------------------------------------- strictness
TINY_DCN = small(
    {"type": "resnet", "depth": 50, "base_channels": 8, "stage_with_dcn": [F, F, T, T], "dcn": DCN_V1},
    num_classes=3,
    head={"feat_channels": 16, "stacked_convs": 1, "norm_groups": 4},
)


def _with_backbone(config, **changes):
    return {**config, "backbone": {**config["backbone"], **changes}}


def _state_dict(config, seed=1):
    model = ref.build_reference(config, seed=seed, dtype=torch.float32)
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def tiny():
    """A built Keras detector with DCNv1 in c4-c5 and a matching official-format state dict."""
    keras.utils.set_random_seed(0)
    detector = GFLV2Detector(**TINY_DCN).build_for_inference()
    return detector, _state_dict(TINY_DCN)


def _snapshot(detector):
    return [np.array(w.numpy()) for w in detector.weights]


def _unchanged(detector, snapshot):
    return all(np.array_equal(a, w.numpy()) for a, w in zip(snapshot, detector.weights))


def test_tiny_state_dict_converts(tiny):
    detector, state = tiny
    report = convert_state_dict(detector, state)
    assert report.tensors == len(state) - len(report.ignored)
    assert "DCNv1 (18 offset channels) in c4, c5" in report.dcn
    layer = find_layer(detector, "backbone.layer3.0.conv2")
    np.testing.assert_array_equal(layer.offset_kernel.numpy(),
                                  state["backbone.layer3.0.conv2.conv_offset.weight"].transpose(2, 3, 1, 0))


def test_missing_key_is_reported_and_nothing_is_loaded(tiny):
    detector, state = tiny
    broken = dict(state)
    del broken["backbone.layer2.1.bn2.running_var"]
    snapshot = _snapshot(detector)
    with pytest.raises(CheckpointMismatchError) as info:
        convert_state_dict(detector, broken, source="checkpoint x.pth")
    assert "backbone.layer2.1.bn2.running_var" in str(info.value)
    assert "x.pth" in str(info.value)
    assert info.value.missing == ["backbone.layer2.1.bn2.running_var"]
    assert _unchanged(detector, snapshot)


def test_unexpected_key_is_reported(tiny):
    detector, state = tiny
    with pytest.raises(CheckpointMismatchError) as info:
        convert_state_dict(detector, {**state, "bbox_head.extra_conv.weight": np.zeros((2, 2, 1, 1), np.float32)})
    assert info.value.unexpected == ["bbox_head.extra_conv.weight"]
    assert "bbox_head.extra_conv.weight" in str(info.value)


def test_wrong_shape_is_reported(tiny):
    detector, state = tiny
    wrong = {**state, "bbox_head.gfl_cls.weight": np.zeros((81, 16, 3, 3), np.float32)}
    with pytest.raises(CheckpointMismatchError) as info:
        convert_state_dict(detector, wrong)
    assert info.value.mismatched == [("bbox_head.gfl_cls.weight", (81, 16, 3, 3), (4, 16, 3, 3))]
    assert "checkpoint (81, 16, 3, 3), model expects (4, 16, 3, 3)" in str(info.value)


def test_all_problems_are_listed_in_one_error(tiny):
    detector, state = tiny
    broken = dict(state)
    del broken["neck.fpn_convs.4.conv.bias"], broken["bbox_head.scales.3.scale"]
    broken["backbone.layer1.0.conv1.weight"] = np.zeros((8, 8, 3, 3), np.float32)
    broken["backbone.fc.weight"] = np.zeros((10, 256), np.float32)
    snapshot = _snapshot(detector)
    with pytest.raises(CheckpointMismatchError) as info:
        convert_state_dict(detector, broken)
    error = info.value
    assert sorted(error.missing) == ["bbox_head.scales.3.scale", "neck.fpn_convs.4.conv.bias"]
    assert error.unexpected == ["backbone.fc.weight"]
    assert [m[0] for m in error.mismatched] == ["backbone.layer1.0.conv1.weight"]
    for key in ("bbox_head.scales.3.scale", "neck.fpn_convs.4.conv.bias", "backbone.fc.weight",
                "backbone.layer1.0.conv1.weight"):
        assert key in str(error)
    assert _unchanged(detector, snapshot)


@pytest.mark.parametrize(
    "checkpoint_backbone, found, expected",
    [
        ({"dcn": DCN_V2}, "DCNv2 (27 offset channels) in c4, c5", "DCNv1 (18 offset channels) in c4, c5"),
        ({"stage_with_dcn": [F, T, T, T]}, "DCNv1 (18 offset channels) in c3, c4, c5",
         "DCNv1 (18 offset channels) in c4, c5"),
        ({"stage_with_dcn": [F, F, F, F], "dcn": None}, "no DCN", "DCNv1 (18 offset channels) in c4, c5"),
    ],
)
def test_dcn_flavour_and_stage_mismatches_are_explained(tiny, checkpoint_backbone, found, expected):
    detector, _ = tiny
    state = _state_dict(_with_backbone(TINY_DCN, **checkpoint_backbone))
    snapshot = _snapshot(detector)
    with pytest.raises(DCNMismatchError) as info:
        convert_state_dict(detector, state, source="checkpoint dcn.pth")
    message = str(info.value)
    assert f"checkpoint dcn.pth has {found}" in message
    assert f"expects {expected}" in message
    assert "type='DCN', which is DCNv1" in message
    assert _unchanged(detector, snapshot)


def test_dcn_checkpoint_into_plain_preset_is_explained():
    plain = GFLV2Detector(**_with_backbone(TINY_DCN, stage_with_dcn=[F, F, F, F], dcn=None))
    snapshot = _snapshot(plain)
    with pytest.raises(DCNMismatchError, match=r"has DCNv1 \(18 offset channels\) in c4, c5 .* expects no DCN"):
        convert_state_dict(plain, _state_dict(TINY_DCN))
    assert _unchanged(plain, snapshot)


def test_legacy_conv2_offset_names_are_accepted(tiny):
    detector, _ = tiny
    other = _state_dict(TINY_DCN, seed=7)  # values differ from whatever the detector holds now
    legacy = {k.replace("conv2.conv_offset.", "conv2_offset."): v for k, v in other.items()}
    assert "backbone.layer3.0.conv2_offset.weight" in legacy
    assert not any("conv_offset" in k for k in legacy)
    report = convert_state_dict(detector, legacy)
    assert "backbone.layer3.0.conv2_offset.weight" in report.legacy_keys
    assert report.tensors == len(other) - len(report.ignored)
    layer = find_layer(detector, "backbone.layer4.2.conv2")
    np.testing.assert_array_equal(layer.offset_kernel.numpy(),
                                  other["backbone.layer4.2.conv2.conv_offset.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(layer.offset_bias.numpy(), other["backbone.layer4.2.conv2.conv_offset.bias"])


def test_official_and_legacy_offset_names_together_are_rejected(tiny):
    detector, state = tiny
    both = {**state, "backbone.layer3.0.conv2_offset.weight": state["backbone.layer3.0.conv2.conv_offset.weight"]}
    with pytest.raises(CheckpointMismatchError, match="official and legacy names"):
        convert_state_dict(detector, both)


def test_integral_project_is_checked_not_loaded(tiny):
    detector, state = tiny
    assert "bbox_head.integral.project" in state
    report = convert_state_dict(detector, state)
    assert "bbox_head.integral.project" in report.ignored
    bad = {**state, "bbox_head.integral.project": np.arange(17, dtype=np.float32) * 2}
    with pytest.raises(CheckpointMismatchError, match="integral.project"):
        convert_state_dict(detector, bad)


def test_model_weights_without_a_rule_are_reported():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name=layer_name("bbox_head.fc"))])
    with pytest.raises(CheckpointMismatchError, match="no conversion rule for weight .*bbox_head-fc"):
        convert_state_dict(model, {"bbox_head.fc.weight": np.zeros((2, 4), np.float32)})


# ----------------------------------------------------------------------------- reading files
@pytest.fixture(scope="module")
def nano_state():
    return _state_dict(PRESETS["gflv2_test_r18_nano"]["config"])


def _torch_state(state):
    return {k: torch.from_numpy(v) for k, v in state.items()}


def test_bare_state_dict_legacy_format_and_module_prefix_are_accepted(tmp_path, nano_state):
    path = tmp_path / "bare.pth"
    torch.save({f"module.{k}": v for k, v in _torch_state(nano_state).items()}, path,
               _use_new_zipfile_serialization=False)
    state, meta = read_official_checkpoint(path)
    assert meta == {}
    assert sorted(state) == sorted(nano_state)
    np.testing.assert_array_equal(state["bbox_head.gfl_cls.weight"], nano_state["bbox_head.gfl_cls.weight"])
    assert state["bbox_head.scales.0.scale"].shape == ()


def test_numpy_scalars_and_optimizer_in_checkpoint_are_accepted(tmp_path, nano_state):
    path = tmp_path / "with_meta.pth"
    meta = {"epoch": 24, "CLASSES": ("a", "b", "c"), "hook_msgs": {"best_score": np.float64(0.412)}}
    torch.save({"meta": meta, "state_dict": _torch_state(nano_state), "optimizer": {"state": {}, "param_groups": []}},
               path)
    state, read_meta = read_official_checkpoint(path)
    assert len(state) == len(nano_state)
    assert read_meta["hook_msgs"]["best_score"] == pytest.approx(0.412)


def test_pickle_needing_a_non_allow_listed_global_is_refused(tmp_path, nano_state):
    path = tmp_path / "evil.pth"
    torch.save({"meta": {"hook": os.system}, "state_dict": _torch_state(nano_state)}, path)
    with pytest.raises(CheckpointReadError) as info:
        read_official_checkpoint(path)
    message = str(info.value)
    assert "evil.pth" in message and "refusing" in message
    assert "system" in message  # names the offending global (posix.system / nt.system)


def test_unreadable_and_missing_files(tmp_path):
    garbage = tmp_path / "garbage.pth"
    garbage.write_text("not a checkpoint")
    with pytest.raises(CheckpointReadError, match="garbage.pth"):
        read_official_checkpoint(garbage)
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        read_official_checkpoint(tmp_path / "nothing.pth")
    not_tensors = tmp_path / "list.pth"
    torch.save({"weights": [1, 2, 3]}, not_tensors)
    with pytest.raises(CheckpointReadError, match="not a checkpoint"):
        read_official_checkpoint(not_tensors)


def test_missing_torch_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(ImportError, match=r"pip install 'gflv2-keras\[convert\]'"):
        import_torch()


def test_cli_convert(tmp_path, capsys, nano_state):
    checkpoint = tmp_path / "nano.pth"
    torch.save({"meta": {"epoch": 1}, "state_dict": _torch_state(nano_state)}, checkpoint)
    output = tmp_path / "nano_preset"
    args = ["convert", "--checkpoint", str(checkpoint), "--preset", "gflv2_test_r18_nano", "--output", str(output)]
    assert cli_main(args) == 0
    printed = capsys.readouterr().out
    assert "mapped" in printed and "parameters" in printed
    detector = GFLV2Detector.from_preset(str(output))
    layer = find_layer(detector, "bbox_head.scales.2")
    assert float(layer.scale.numpy()) == pytest.approx(float(nano_state["bbox_head.scales.2.scale"]))
    # A wrong preset fails with a message and exit status 2, writing nothing.
    wrong = tmp_path / "wrong_preset"
    args = ["convert", "--checkpoint", str(checkpoint), "--preset", "gflv2_tiny_r18_demo", "--output", str(wrong)]
    assert cli_main(args) == 2
    assert "does not match the model" in capsys.readouterr().err
    assert not wrong.exists()


def test_cli_convert_never_replaces_an_existing_preset_without_overwrite(tmp_path, capsys, nano_state):
    checkpoint = tmp_path / "nano.pth"
    torch.save({"state_dict": _torch_state(nano_state)}, checkpoint)
    output = tmp_path / "trained_preset"
    output.mkdir()
    (output / "model.weights.h5").write_bytes(b"the user's trained weights")
    before = {p.name: p.read_bytes() for p in output.iterdir()}
    args = ["convert", "--checkpoint", str(checkpoint), "--preset", "gflv2_test_r18_nano", "--output", str(output)]
    assert cli_main(args) == 2
    error = capsys.readouterr().err
    assert f"{output} already exists" in error and "--overwrite" in error and "Traceback" not in error
    assert {p.name: p.read_bytes() for p in output.iterdir()} == before
    # The lock of a killed convert into the same folder (utils.locks) is taken over, with one line.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = {"pid": dead.pid, "host": socket.gethostname(), "command": "gflv2 convert (killed)", "token": "x"}
    (tmp_path / ".trained_preset.lock").write_text(json.dumps(stale))
    assert cli_main(args + ["--overwrite"]) == 0
    error = capsys.readouterr().err
    assert "took over the lock of a run that no longer exists" in error and f"pid {dead.pid} " in error
    assert GFLV2Detector.from_preset(str(output)).count_params_official() > 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".trained_preset")]  # no staging, no lock left


# ----------------------------------------------------------------------------- the reference itself
@pytest.mark.parametrize("modulated, groups, stride", [(False, 1, 1), (True, 1, 2), (False, 2, 2)])
def test_reference_dcn_matches_scalar_loop(modulated, groups, stride):
    """The reference DCN (grid_sample) equals a literal transcription of mmcv's bilinear rule."""
    gen = torch.Generator().manual_seed(3)
    layer = ref.DeformConv2dPack(4, 6, 3, stride, 1, groups=groups, modulated=modulated).double()
    with torch.no_grad():
        layer.weight.copy_(torch.randn(layer.weight.shape, generator=gen))
        layer.conv_offset.weight.copy_(torch.randn(layer.conv_offset.weight.shape, generator=gen) * 0.5)
        # Offsets of a couple of pixels: some taps leave the image.
        layer.conv_offset.bias.copy_(torch.randn(layer.conv_offset.bias.shape, generator=gen) * 2)
    x = torch.randn(2, 4, 5, 7, generator=gen, dtype=torch.float64)
    raw = layer.conv_offset(x)
    offset, mask = (raw[:, :18], torch.sigmoid(raw[:, 18:])) if modulated else (raw, None)
    expected = ref.naive_deform_conv(x, offset.detach(), None if mask is None else mask.detach(),
                                     layer.weight.detach(), stride, 1, groups)
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, atol=1e-12)


def test_reference_dcn_with_zero_offsets_is_a_convolution():
    layer = ref.DeformConv2dPack(4, 6, 3, 2, 1, groups=2).double()
    with torch.no_grad():
        layer.weight.normal_()
        layer.conv_offset.weight.zero_()
        layer.conv_offset.bias.zero_()
    x = torch.randn(1, 4, 1, 5, dtype=torch.float64)  # a size-1 axis takes the padded grid_sample path
    expected = torch.nn.functional.conv2d(x, layer.weight, None, 2, 1, groups=2)
    torch.testing.assert_close(layer(x), expected, atol=1e-12, rtol=0)


def test_reference_state_dict_is_official_format():
    model = ref.build_reference({"backbone": {"type": "resnet", "depth": 50}, "num_classes": 80}, dtype=torch.float32)
    state = model.state_dict()
    assert len(state) == 372  # official R-50 GFLv2 state dict
    assert sum(p.numel() for p in model.parameters()) == 32_444_251
    assert state["bbox_head.gfl_cls.weight"].shape == (81, 256, 3, 3)
    assert state["bbox_head.scales.0.scale"].shape == ()
    assert state["bbox_head.reg_conf.2.weight"].shape == (1, 64, 1, 1)
    assert "backbone.layer1.0.downsample.1.num_batches_tracked" in state


# ----------------------------------------------------------------------------- full size (slow)
@pytest.mark.slow
@pytest.mark.parametrize(
    "preset",
    [
        "gflv2_r50_fpn_1x_coco",
        "gflv2_r101_fpn_ms2x_coco",
        "gflv2_r101_dcn_fpn_ms2x_coco",
        "gflv2_x101_32x4d_dcn_fpn_ms2x_coco",
        "gflv2_r2_101_dcn_fpn_ms2x_coco",
    ],
)
def test_full_size_official_preset_parity(preset, tmp_path):
    keras.utils.set_random_seed(0)
    config = PRESETS[preset]["config"]
    case = _run_parity(config, tmp_path, preset=preset)
    assert case["result"]["parameters"] == PRESETS[preset]["metadata"]["official_params"]
    box_err, score_err = _match_detections(case["reference_detections"], case["keras_detections"])
    _report(preset, case, box_err, score_err)
    assert case["score_err"] < SCORE_TOL
    assert case["box_logit_err"] < BOX_LOGIT_TOL
    assert box_err < BOX_PX_TOL
    assert score_err < SCORE_TOL
