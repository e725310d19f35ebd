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
    detector = GFLV2Detector.from_preset(str(folder), class_names=["a", "b", "c"])
    assert "re-initialised" not in capsys.readouterr().out
    for key, value in _by_key(detector).items():
        np.testing.assert_array_equal(value, saved[key], err_msg=key)


@pytest.fixture(scope="module")
def scoring_preset(tmp_path_factory, nano_factory):
    """A nano preset (classes a, b, c) whose classifier rows differ a lot, so each class scores its own way."""
    detector = nano_factory(seed=3, class_names=["a", "b", "c"])
    rng = np.random.default_rng(4)
    for variable in detector.head.gfl_cls.weights:
        variable.assign(rng.normal(0.0, 0.5, size=variable.shape).astype("float32"))
    folder = tmp_path_factory.mktemp("scoring") / "nano"
    detector.save_to_preset(folder)
    return detector, folder


def test_the_same_names_in_another_order_reorder_the_classifier_rows(scoring_preset, capsys):
    saved, folder = scoring_preset
    names = ["c", "a", "b"]
    detector = GFLV2Detector.from_preset(str(folder), class_names=names)
    assert "matched by name" in capsys.readouterr().out
    assert detector.class_names == names
    for got, want in zip(detector.head.gfl_cls.weights, saved.head.gfl_cls.weights):
        got, want = got.numpy(), want.numpy()
        for row, name in enumerate(names):  # bit for bit, moved to the name's new index
            np.testing.assert_array_equal(got[..., row], want[..., saved.class_names.index(name)])
        np.testing.assert_array_equal(got[..., 3], want[..., 3])  # GFLv2's extra row
    saved_weights = _by_key(saved)
    for key, value in _by_key(detector).items():
        if not key.startswith(f"{CLASSIFIER_OUTPUT}/"):
            np.testing.assert_array_equal(value, saved_weights[key], err_msg=key)

    # The head's outputs, of which the detections are a function: the joint score of "a" is still "a"'s.
    image = np.random.default_rng(5).normal(size=(1, 64, 96, 3)).astype("float32")
    before, after = saved(image, training=False), detector(image, training=False)
    old, new = np.asarray(before["confidence"]), np.asarray(after["confidence"])
    assert old.shape == new.shape and old.shape[-1] == 4  # 3 classes + GFLv2's extra column
    assert np.ptp(old[..., :3], axis=-1).max() > 0.1  # the classes score differently: the check can fail
    for row, name in enumerate(names):
        np.testing.assert_allclose(new[..., row], old[..., saved.class_names.index(name)], atol=1e-6, rtol=0)
    np.testing.assert_allclose(new[..., 3], old[..., 3], atol=1e-6, rtol=0)
    np.testing.assert_allclose(np.asarray(after["box_logits"]), np.asarray(before["box_logits"]), atol=1e-6, rtol=0)


def test_other_names_of_the_same_count_are_new_classes_as_in_fine_tuning(trained_preset, capsys):
    from gflv2_keras.models.transfer import with_class_names

    folder, saved = trained_preset
    names = ["a", "x", "c"]
    detector = GFLV2Detector.from_preset(str(folder), class_names=names)
    printed = capsys.readouterr().out
    assert "['a', 'c'] matched by name" in printed and "of ['x'] re-initialised" in printed
    # What the CLI's fine-tuning makes of the same preset (training.trainer: loaded as saved, then by name).
    fine_tuned, kept = with_class_names(GFLV2Detector.from_preset(str(folder)), names)
    assert kept == ["a", "c"]
    for got, tuned in zip(_by_key(detector).items(), _by_key(fine_tuned).items()):
        key, value = got
        assert key == tuned[0]
        if key.startswith(f"{CLASSIFIER_OUTPUT}/"):
            value, tuned_value, source = value, tuned[1], saved[key]
            for row, origin in ((0, 0), (2, 2), (3, 3)):  # a, c and the extra row: the saved rows
                np.testing.assert_array_equal(value[..., row], source[..., origin])
                np.testing.assert_array_equal(tuned_value[..., row], source[..., origin])
            if key.endswith("/bias"):  # x: the official initialisation, not the saved "b"
                assert value[1] == pytest.approx(-math.log(0.99 / 0.01), rel=1e-6)
            else:
                assert abs(value[..., 1].std() - 0.01) < 0.005
        else:
            np.testing.assert_array_equal(value, saved[key], err_msg=key)
            np.testing.assert_array_equal(tuned[1], saved[key], err_msg=key)


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
