"""A preset whose weights do not fit its config is refused in one line naming the first mismatch.

Both directions (weights of a larger network under a nano config, and the reverse), other widths,
both preset layouts, and through the CLI; a matching preset still loads exactly and silently.
"""

import json
import shutil
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest

from gflv2_keras import GFLV2Detector

NANO = "gflv2_test_r18_nano"
LEGACY = Path(__file__).resolve().parents[1] / "data" / "legacy_presets" / "nano_gflv2"
CONFIG_FILES = ("config.json", "task.json", "preprocessor.json", "metadata.json")
NANO_BACKBONE = {"type": "resnet", "depth": 18, "base_channels": 8, "frozen_stages": -1, "norm_eval": False}
# A larger network: ResNet-34 and a 2-conv head (the nano preset: ResNet-18, 1 conv).
LARGER = {"backbone": {**NANO_BACKBONE, "depth": 34},
          "head": {"feat_channels": 16, "stacked_convs": 2, "norm_groups": 4}}


def _save(root, name, seed, trained=False, **changes):
    keras.utils.set_random_seed(seed)
    detector = GFLV2Detector.from_preset(NANO, load_weights=False, **changes).build_for_inference()
    if trained:  # as a trained preset: the file also holds the optimizer's state, which is not a weight
        detector.compile(optimizer=keras.optimizers.SGD(momentum=0.9))
        detector.optimizer.build(detector.trainable_variables)
    detector.save_to_preset(root / name)
    return detector, root / name


@pytest.fixture(scope="module")
def presets(tmp_path_factory):
    root = tmp_path_factory.mktemp("mismatch")
    nano, nano_dir = _save(root, "nano", 1, trained=True)
    _, larger_dir = _save(root, "larger", 2, **LARGER)
    return {"nano": nano, "nano_dir": nano_dir, "larger_dir": larger_dir}


def _config_of(weights_dir, config_dir, folder):
    """A preset folder with the weights of ``weights_dir`` and the config files of ``config_dir``."""
    shutil.copytree(weights_dir, folder)
    for name in CONFIG_FILES:
        shutil.copy(config_dir / name, folder / name)
    return folder


def _said(caught):
    """The warnings a user would see (building a model raises NumPy deprecation notices, hidden by default)."""
    return [str(w.message)[:120] for w in caught if not issubclass(w.category, DeprecationWarning)]


def _refusal(preset, **overrides):
    """The ``ValueError`` of loading ``preset``; asserts that Keras said nothing on the way."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ValueError) as refused:
            GFLV2Detector.from_preset(str(preset), **overrides)
    assert _said(caught) == []
    message = str(refused.value)
    assert "\n" not in message and "the weights do not fit" in message
    return message


def test_weights_of_a_larger_network_under_a_nano_config_are_refused(presets, tmp_path, capfd):
    folder = _config_of(presets["larger_dir"], presets["nano_dir"], tmp_path / "nano_config_larger_weights")
    message = _refusal(folder)
    assert str(folder / "model.weights.h5") in message or str(folder / "task.weights.h5") in message
    assert "extra in it" in message and "0 missing from the file" in message
    assert "first: the file's " in message and "has no place in the model" in message
    assert capfd.readouterr().err == ""


def test_a_larger_config_than_its_weights_is_refused(presets, tmp_path, capfd):
    folder = _config_of(presets["nano_dir"], presets["larger_dir"], tmp_path / "larger_config_nano_weights")
    message = _refusal(folder)
    assert "0 extra in it" in message and "is not in the file" in message
    assert capfd.readouterr().err == ""


def test_a_new_class_list_does_not_excuse_other_mismatches(presets, tmp_path):
    folder = _config_of(presets["larger_dir"], presets["nano_dir"], tmp_path / "mismatch_with_classes")
    _refusal(folder, class_names=list("abcde"))


def test_a_matching_preset_loads_exactly_and_silently(presets, capfd):
    import h5py

    with h5py.File(presets["nano_dir"] / "task.weights.h5", "r") as f:
        assert "optimizer" in f  # saved with its training state
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = GFLV2Detector.from_preset(str(presets["nano_dir"]))
    assert _said(caught) == [] and capfd.readouterr().err == ""
    for got, want in zip(loaded.weights, presets["nano"].weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(want))
    # A new class list, the one change allowed, is tests/models/test_keras_hub.py's
    # test_new_classes_from_a_keras_hub_folder_keep_every_other_weight (through the same check).


@pytest.mark.parametrize("change, first", [
    ({"depth": 34}, "first: backbone/stages/container/basic_block_2/bn1 variable 0 (shape (8,)) is not in the file"),
    ({"base_channels": 16},
     "first: backbone/stages/container/basic_block/bn1 variable 0 expects shape (16,), the file has (8,)"),
])
def test_a_legacy_preset_with_another_config_is_refused(tmp_path, change, first):
    folder = tmp_path / "legacy"
    shutil.copytree(LEGACY, folder)
    config = json.loads((folder / "config.json").read_text())
    config["config"]["backbone"].update(change)
    (folder / "config.json").write_text(json.dumps(config))
    message = _refusal(folder)
    weights, config = folder / "model.weights.h5", folder / "config.json"
    assert message.startswith(f"{weights}: the weights do not fit the model of {config}: ")
    assert first in message


def test_the_cli_says_it_in_one_line(presets, tmp_path, capsys):
    from PIL import Image

    from gflv2_keras.cli import main

    folder = _config_of(presets["larger_dir"], presets["nano_dir"], tmp_path / "cli_mismatch")
    Image.fromarray(np.zeros((40, 50, 3), np.uint8)).save(tmp_path / "a.png")
    code = main(["predict", str(tmp_path / "a.png"), "--preset", str(folder), "--output", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("gflv2 predict: error: ")
    assert "the weights do not fit" in err[0]
    assert not (tmp_path / "out").exists()  # the folder the run created for its lock is gone again


@pytest.fixture
def hub(monkeypatch):
    """``{handle: folder}`` served by kagglehub's and huggingface_hub's downloads (no network): the
    calls of this package (whole folders) and those of keras-hub's own loading (one file each)."""
    import huggingface_hub
    import kagglehub

    served = {}

    def file(handle, path=None):
        found = served[handle] / (path or "") if handle in served else None
        if found is None or not found.exists():
            raise ValueError(f"'{path}' is not present in the model files")
        return str(found)

    monkeypatch.setattr(kagglehub, "model_download", lambda handle, path=None, **kw: file(handle, path))
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: file(repo_id))
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo_id, filename, **kw: file(repo_id, filename))
    return served


@pytest.mark.parametrize("handle", ["kaggle://someone/gflv2/keras/nano", "hf://someone/gflv2-nano"])
def test_a_hub_handle_is_checked_like_a_folder(presets, tmp_path, hub, handle):
    name = handle.split("://", 1)[1]
    hub[name] = _config_of(presets["larger_dir"], presets["nano_dir"], tmp_path / "served")
    message = _refusal(handle)  # extra variables: Keras alone would not name them
    assert "extra in it" in message and "first: the file's " in message and "has no place in the model" in message
    assert str(hub[name]) in message  # the downloaded file, in the hub's cache

    hub[name] = presets["nano_dir"]
    loaded = GFLV2Detector.from_preset(handle)
    for got, want in zip(loaded.weights, presets["nano"].weights):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(want))
    assert GFLV2Detector.from_preset(handle, load_weights=False).num_classes == presets["nano"].num_classes
