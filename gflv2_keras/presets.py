"""Named model configurations (presets): one per row of the official model table, plus small ones.

A preset is plain data: the detector config (``GFLV2ObjectDetector`` constructor arguments),
and metadata with its provenance and published metrics. Weights are never downloaded (no network
is assumed): a preset's weights live in a preset folder made by ``gflv2 convert`` (official
checkpoints), ``gflv2 train``/``gflv2 demo`` or ``save_to_preset`` (``models.preset_io`` reads
and writes them).
Folders for named presets are looked up in ``$GFLV2_KERAS_HOME/presets/<name>``
(default ``~/.cache/gflv2_keras/presets/<name>``).
"""

import copy
import os
from pathlib import Path

COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)  # fmt: skip

_DCN = {"modulated": False, "deform_groups": 1}  # mmcv type='DCN' is DCNv1 (docs/parity.md)
_OFFICIAL_SOURCE = "implus/GFocalV2 (MMDetection 2.6 fork), configs/gfocal/"


def _coco_preset(backbone, config_file, recipe, ap_minival, ap_test_dev, fps, multiscale, params, link, description):
    return {
        "config": {
            "backbone": backbone,
            "num_classes": 80,
            "fpn_channels": 256,
            "head": {},
            "input_scale": [1333, 800],
            "class_names": list(COCO_CLASSES),
        },
        "metadata": {
            "description": description,
            "official_config": _OFFICIAL_SOURCE + config_file,
            "coco_box_ap_minival": ap_minival,
            "coco_box_ap_test_dev": ap_test_dev,
            "fps_rtx2080ti_batch1": fps,
            "multiscale_training": multiscale,
            "official_params": params,
            "checkpoint_url": link,
            "recipe": recipe,
        },
    }


_R50 = {"type": "resnet", "depth": 50}
_R101 = {"type": "resnet", "depth": 101}
_DRIVE = "https://drive.google.com/file/d/{}/view"

PRESETS = {
    "gflv2_r50_fpn_1x_coco": _coco_preset(
        _R50, "gfocal_r50_fpn_1x.py", "gflv2_r50_fpn_1x_coco", 41.0, 41.1, 19.4, False, 32_444_251,
        _DRIVE.format("1wSE9-c7tcQwIDPC6Vm_yfOokdPfmYmy7"), "GFLv2, ResNet-50 FPN, 1x schedule, COCO",
    ),
    "gflv2_r50_fpn_ms2x_coco": _coco_preset(
        _R50, "gfocal_r50_fpn_ms2x.py", "gflv2_r50_fpn_ms2x_coco", 43.9, 44.4, 19.4, True, 32_444_251,
        _DRIVE.format("17-1cKRdR5J3SfZ9NBCwe6QE554uTS30F"), "GFLv2, ResNet-50 FPN, multi-scale 2x, COCO",
    ),
    "gflv2_r101_fpn_ms2x_coco": _coco_preset(
        _R101, "gfocal_r101_fpn_ms2x.py", "gflv2_r101_fpn_ms2x_coco", 45.8, 46.0, 14.6, True, 51_436_379,
        _DRIVE.format("1qomgA7mzKW0bwybtG4Avqahv67FUxmNx"), "GFLv2, ResNet-101 FPN, multi-scale 2x, COCO",
    ),
    "gflv2_r101_dcn_fpn_ms2x_coco": _coco_preset(
        {**_R101, "stage_with_dcn": [False, True, True, True], "dcn": _DCN},
        "gfocal_r101_dcn_fpn_ms2x.py", "gflv2_r101_dcn_fpn_ms2x_coco", 48.0, 48.2, 12.7, True, 52_722_551,
        _DRIVE.format("1xsBjxmqsJoYZYPMr0k06X5K9nnPrexcx"),
        "GFLv2, ResNet-101 with DCN (v1, as configured) in c3-c5, multi-scale 2x, COCO",
    ),
    "gflv2_x101_32x4d_dcn_fpn_ms2x_coco": _coco_preset(
        {"type": "resnext", "depth": 101, "groups": 32, "base_width": 4,
         "stage_with_dcn": [False, False, True, True], "dcn": _DCN},
        "gfocal_x101_dcn_fpn_ms2x.py", "gflv2_x101_32x4d_dcn_fpn_ms2x_coco", 48.8, 49.0, 10.7, True, 53_470_767,
        _DRIVE.format("1AHDVQoclYPSP0Ync2a5FCsr_rhq2QdMH"),
        "GFLv2, ResNeXt-101 32x4d with DCN (v1, as configured) in c4-c5, multi-scale 2x, COCO",
    ),
    "gflv2_r2_101_dcn_fpn_ms2x_coco": _coco_preset(
        {"type": "res2net", "depth": 101, "scales": 4, "base_width": 26,
         "stage_with_dcn": [False, False, True, True], "dcn": _DCN},
        "gfocal_r2n101_dcn_fpn_ms2x.py", "gflv2_r2_101_dcn_fpn_ms2x_coco", 49.9, 50.5, 10.9, True, 53_580_319,
        _DRIVE.format("1sAXfYLXIxZgMrC44LBqDgfYImThZ_kud"),
        "GFLv2, Res2Net-101 v1d 26w4s with DCN (v1, as configured) in c4-c5, multi-scale 2x, COCO",
    ),
    # Small presets trained from scratch (no frozen stages, BN statistics updated).
    "gflv2_tiny_r18_demo": {
        "config": {
            "backbone": {"type": "resnet", "depth": 18, "base_channels": 16, "frozen_stages": -1, "norm_eval": False},
            "num_classes": 5,
            "fpn_channels": 64,
            "head": {"feat_channels": 64, "stacked_convs": 2, "norm_groups": 16},
            "input_scale": [256, 256],
            "class_names": ["rectangle", "ellipse", "triangle", "cross", "star"],
        },
        "metadata": {
            "description": "Tiny GFLv2 (ResNet-18 at 1/4 width, 2-conv head) for the synthetic-shapes demo on a CPU",
            "recipe": "gflv2_tiny_r18_demo",
        },
    },
    "gflv2_test_r18_nano": {
        "config": {
            "backbone": {"type": "resnet", "depth": 18, "base_channels": 8, "frozen_stages": -1, "norm_eval": False},
            "num_classes": 3,
            "fpn_channels": 16,
            "head": {"feat_channels": 16, "stacked_convs": 1, "norm_groups": 4},
            "input_scale": [128, 96],
        },
        "metadata": {"description": "Smallest working GFLv2, for unit tests"},
    },
}  # fmt: skip

def list_presets():
    """Names of the built-in presets."""
    return sorted(PRESETS)


def preset_home():
    """Folder holding preset folders of named presets (``$GFLV2_KERAS_HOME/presets``)."""
    root = os.environ.get("GFLV2_KERAS_HOME", os.path.join(Path.home(), ".cache", "gflv2_keras"))
    return Path(root) / "presets"


def preset_info(name):
    """The config and metadata of a named preset (copies)."""
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}. Available presets: {', '.join(list_presets())}")
    return copy.deepcopy(PRESETS[name])


def missing_weights_message(preset, weights):
    """What to do when the weights of a named preset are not on disk (several lines)."""
    info = PRESETS.get(preset)
    lines = [f"No weights for preset {preset!r}: {weights} does not exist (nothing is downloaded)."]
    if info and "checkpoint_url" in info["metadata"]:
        lines += [
            f"Download the official checkpoint from {info['metadata']['checkpoint_url']}, then convert it:",
            "  pip install 'gflv2-keras[convert]'",
            f"  gflv2 convert --checkpoint FILE.pth --preset {preset} --output {weights.parent}",
        ]
    else:
        lines.append(f"Train it (gflv2 train / gflv2 demo) and save it to {weights.parent}, or pass a preset folder.")
    lines.append("Use load_weights=False for randomly initialised weights.")
    return "\n".join(lines)
