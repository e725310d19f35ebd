"""Export test fixtures: the nano preset exported once per session through the CLI."""

import contextlib
import io
import time
from types import SimpleNamespace

import numpy as np
import pytest
import tensorflow as tf

from gflv2_keras.cli import main
from gflv2_keras.export import saved_model as export_module

from serving_support import CLASS_NAMES, PRESET as NANO_PRESET, decode, sample_images


@pytest.fixture(scope="session")
def scoring_nano(tmp_path_factory, nano_factory):
    """``(detector, root)``: the nano preset with random weights and threshold 0 (so there are
    detections), saved as the preset folder ``root / "preset"``.

    Its BatchNorm statistics are frozen (``norm_eval``, as in every official config; the nano
    preset itself trains them), so every export folds them into the convolutions, as ``detect``
    does, and the parity tests compare the folded graphs."""
    from gflv2_keras.presets import preset_info

    backbone = {**preset_info(NANO_PRESET)["config"]["backbone"], "norm_eval": True}
    detector = nano_factory(seed=0, test_config={"score_threshold": 0.0}, class_names=CLASS_NAMES, backbone=backbone)
    root = tmp_path_factory.mktemp("export")
    detector.save_to_preset(root / "preset")
    return detector, root


@pytest.fixture(scope="session")
def exported(scoring_nano):
    """That preset exported via the CLI as TF Serving model version 3."""
    detector, root = scoring_nano
    base = root / "models" / "gflv2_nano"
    stdout = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(stdout):
        code = main(["export", "--preset", str(root / "preset"), "--output", str(base), "--version", "3"])
    seconds = time.perf_counter() - start
    print(f"\nnano export via CLI: {seconds:.1f} s, {export_module.directory_size(base / '3') / 2**20:.2f} MiB")
    images = sample_images()
    return SimpleNamespace(
        detector=detector,
        root=root,
        base=base,
        path=base / "3",
        code=code,
        stdout=stdout.getvalue(),
        encoded=[data for data, _ in images.values()],
        original=[pixels for _, pixels in images.values()],
    )


@pytest.fixture(scope="session")
def loaded(exported):
    return tf.saved_model.load(str(exported.path))


@pytest.fixture(scope="session")
def references(exported):
    """``detector.detect`` on each image decoded in-process by the same decoder."""
    decoded = [decode(data) for data in exported.encoded]
    for pixels, original in zip(decoded, exported.original):
        if original is not None:  # lossless formats decode to the pixels that were encoded
            np.testing.assert_array_equal(pixels, original)
    return decoded, [exported.detector.detect(pixels) for pixels in decoded]
