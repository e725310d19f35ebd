"""``gflv2 presets``: list the built-in presets with their published metrics."""

from gflv2_keras.presets import PRESETS, list_presets, preset_home


def register(subparsers):
    parser = subparsers.add_parser(
        "presets",
        description="List the built-in presets: published COCO AP (minival, test-dev), the official FPS and whether "
        "the preset's weights are on disk (in $GFLV2_KERAS_HOME/presets/NAME; nothing is downloaded).",
    )
    parser.set_defaults(func=run)


def run(args):
    del args
    print(f"{'preset':38s} {'AP minival':>10s} {'AP test-dev':>11s} {'FPS*':>6s}  weights on disk")
    for name in list_presets():
        meta = PRESETS[name]["metadata"]
        present = (preset_home() / name / "model.weights.h5").is_file()
        ap = meta.get("coco_box_ap_minival", "-")
        ap_dev = meta.get("coco_box_ap_test_dev", "-")
        fps = meta.get("fps_rtx2080ti_batch1", "-")
        print(f"{name:38s} {ap!s:>10s} {ap_dev!s:>11s} {fps!s:>6s}  {'yes' if present else 'no'}")
    print(f"* official FPS on one RTX 2080Ti, batch 1. Preset folders are looked up in {preset_home()}")
    return 0
