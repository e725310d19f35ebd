"""Starting from a preset with other classes: every weight but the classifier output is kept."""

import math

import numpy as np
import pytest

from gflv2_keras import GFLV2Detector
from gflv2_keras.models.transfer import CLASSIFIER_OUTPUT, transfer_weights


@pytest.fixture(scope="module")
def trained_preset(tmp_path_factory, nano_factory):
    """A nano preset folder with non-initial weights everywhere (3 classes)."""
    detector = nano_factory(class_names=["a", "b", "c"])
    rng = np.random.default_rng(0)
    for variable in detector.weights:
        variable.assign(rng.normal(size=variable.shape).astype("float32"))
    folder = tmp_path_factory.mktemp("preset") / "nano"
    detector.save_to_preset(folder)
    return folder, _by_key(detector)


def _by_key(detector):
    return {"/".join(v.path.split("/")[-2:]): v.numpy() for v in detector.weights}


@pytest.mark.slow  # moved out of the default run for its time (issue 20)
def test_new_classes_keep_every_other_weight_and_reinitialise_the_classifier(trained_preset, capsys):
    folder, saved = trained_preset
    detector = GFLV2Detector.from_preset(str(folder), num_classes=2, class_names=["cat", "dog"])
    printed = capsys.readouterr().out
    assert CLASSIFIER_OUTPUT in printed and "3 -> 2" in printed
    assert detector.num_classes == 2 and detector.class_names == ["cat", "dog"]
    weights = _by_key(detector)
    assert set(weights) == set(saved)
    for key, value in weights.items():
        if key.startswith(f"{CLASSIFIER_OUTPUT}/"):
            continue
        np.testing.assert_array_equal(value, saved[key], err_msg=key)
    kernel, bias = weights[f"{CLASSIFIER_OUTPUT}/kernel"], weights[f"{CLASSIFIER_OUTPUT}/bias"]
    assert kernel.shape[-1] == 3 and bias.shape == (3,)  # 2 classes + the official extra column
    np.testing.assert_allclose(bias, -math.log(0.99 / 0.01), rtol=1e-6)
    assert abs(kernel.std() - 0.01) < 0.003 and abs(kernel.mean()) < 0.003


def test_class_names_alone_set_the_number_of_classes(trained_preset):
    folder, _ = trained_preset
    detector = GFLV2Detector.from_preset(str(folder), class_names=["x", "y", "z", "w"])
    assert detector.num_classes == 4


def test_same_classes_load_exactly(trained_preset, capsys):
    folder, saved = trained_preset
    detector = GFLV2Detector.from_preset(str(folder), class_names=["p", "q", "r"])
    assert "re-initialised" not in capsys.readouterr().out
    for key, value in _by_key(detector).items():
        np.testing.assert_array_equal(value, saved[key], err_msg=key)


def test_other_mismatches_stay_errors_naming_the_variables(nano_factory):
    source = nano_factory(class_names=["a", "b", "c"])
    target = nano_factory(num_classes=2, head={"feat_channels": 32, "stacked_convs": 1, "norm_groups": 4})
    with pytest.raises(ValueError, match=r"bbox_head-cls_convs-0-conv/kernel: source shape .* target shape"):
        transfer_weights(source, target)


def test_missing_preset_folder_and_config_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such preset folder"):
        GFLV2Detector.from_preset(str(tmp_path / "nope" / "preset"))
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        GFLV2Detector.from_preset(str(tmp_path))
