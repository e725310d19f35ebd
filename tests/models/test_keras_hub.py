"""keras-hub interoperability: our presets load through keras-hub's own entry points, presets of the
layout before keras-hub still load, and a preset survives ``keras_hub.upload_preset`` and comes back
from its handle (a local stand-in for the hub: no network)."""

import json
import shutil
from pathlib import Path

import keras
import keras_hub
import numpy as np
import pytest

from gflv2_keras import GFLV2Backbone, GFLV2Detector, GFLV2ObjectDetector, GFLV2ObjectDetectorPreprocessor

LEGACY = Path(__file__).resolve().parents[1] / "data" / "legacy_presets"


@pytest.fixture(scope="module")
def legacy_expected():
    return json.loads((LEGACY / "expected_detections.json").read_text()), np.load(LEGACY / "image.npy")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A nano detector with non-trivial weights, saved as a keras-hub preset folder."""
    keras.utils.set_random_seed(5)
    detector = GFLV2ObjectDetector.from_preset(
        "gflv2_test_r18_nano", load_weights=False, class_names=["ring", "bar", "diamond"],
        test_config={"score_threshold": 0.0},
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("hub") / "nano"
    detector.save_to_preset(folder, metadata={"description": "test preset"})
    return detector, folder


def _image(seed=0, size=(90, 120)):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _assert_same_detections(found, expected):
    assert len(expected["labels"]) > 0
    np.testing.assert_array_equal(found["labels"], expected["labels"])
    np.testing.assert_allclose(found["boxes"], expected["boxes"], atol=1e-4)
    np.testing.assert_allclose(found["confidence"], expected["confidence"], atol=1e-6)


def test_the_folder_has_keras_hubs_layout(saved):
    _, folder = saved
    assert {"config.json", "model.weights.h5", "task.json", "task.weights.h5", "preprocessor.json",
            "metadata.json"} <= {p.name for p in folder.iterdir()}  # fmt: skip
    config = json.loads((folder / "config.json").read_text())
    assert config["registered_name"] == "gflv2_keras>GFLV2Backbone"
    task = json.loads((folder / "task.json").read_text())
    assert task["registered_name"] == "gflv2_keras>GFLV2ObjectDetector"
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["keras_version"] == keras.version() and metadata["keras_hub_version"] == keras_hub.__version__
    assert metadata["tasks"] == ["ObjectDetector"] and metadata["description"] == "test preset"
    assert metadata["parameters"] > 0


def test_keras_hub_loads_task_backbone_and_preprocessor(saved):
    detector, folder = saved
    image = _image()
    task = keras_hub.models.ObjectDetector.from_preset(str(folder))
    assert type(task) is GFLV2ObjectDetector and task.class_names == ["ring", "bar", "diamond"]
    _assert_same_detections(task.detect(image), detector.detect(image))

    backbone = keras_hub.models.Backbone.from_preset(str(folder))
    assert isinstance(backbone, GFLV2Backbone)
    x = np.random.default_rng(1).normal(size=(1, 64, 96, 3)).astype("float32")
    for got, want in zip(backbone(x), detector.backbone(x)):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(want), atol=1e-5)

    preprocessor = keras_hub.models.ObjectDetectorPreprocessor.from_preset(str(folder))
    assert isinstance(preprocessor, GFLV2ObjectDetectorPreprocessor)
    assert tuple(preprocessor.image_scale) == tuple(detector.input_scale)


def test_our_from_preset_reads_the_folder_with_overrides(saved):
    detector, folder = saved
    image = _image(2)
    again = GFLV2Detector.from_preset(str(folder), bounding_box_format="rel_yxyx")
    found = again.detect(image)
    expected = detector.detect(image, bounding_box_format="rel_yxyx")
    _assert_same_detections(found, expected)
    fresh = GFLV2Detector.from_preset(str(folder), load_weights=False)
    assert fresh.num_classes == 3 and fresh.count_params() == detector.count_params()


@pytest.mark.parametrize("name", ["nano_gflv2", "nano_gflv1"])
def test_a_preset_of_the_layout_before_keras_hub_still_loads(legacy_expected, name):
    expected, image = legacy_expected
    config = json.loads((LEGACY / name / "config.json").read_text())
    assert "registered_name" not in config  # really the old layout
    detector = GFLV2Detector.from_preset(str(LEGACY / name))
    _assert_same_detections(detector.detect(image), {k: np.asarray(v) for k, v in expected[name].items()})


def test_a_legacy_preset_converts_to_the_new_layout(legacy_expected, tmp_path):
    expected, image = legacy_expected
    detector = GFLV2Detector.from_preset(str(LEGACY / "nano_gflv2"))
    detector.save_to_preset(tmp_path / "new")
    task = keras_hub.models.ObjectDetector.from_preset(str(tmp_path / "new"))
    _assert_same_detections(task.detect(image), {k: np.asarray(v) for k, v in expected["nano_gflv2"].items()})


def test_new_classes_from_a_keras_hub_folder_keep_every_other_weight(saved):
    detector, folder = saved
    five = GFLV2Detector.from_preset(str(folder), class_names=list("abcde"))
    assert five.num_classes == 5 and five.head.gfl_cls.kernel.shape[-1] == 6
    np.testing.assert_array_equal(five.head.gfl_reg.kernel.numpy(), detector.head.gfl_reg.kernel.numpy())
    first = detector.backbone.weights[0]
    np.testing.assert_array_equal(five.backbone.weights[0].numpy(), first.numpy())


@pytest.fixture
def local_kaggle(tmp_path, monkeypatch):
    """``kagglehub``'s upload and download, served from a local folder instead of the network."""
    import kagglehub

    hub = tmp_path / "hub"

    def model_upload(handle, local_model_dir, *args, **kwargs):
        shutil.copytree(local_model_dir, hub / handle)

    def model_download(handle, path=None, *args, **kwargs):
        found = hub / handle / (path or "")
        if not found.exists():
            raise ValueError(f"'{path}' is not present in the model files")
        return str(found)

    monkeypatch.setattr(kagglehub, "model_upload", model_upload)
    monkeypatch.setattr(kagglehub, "model_download", model_download)
    return hub


def test_upload_round_trip_to_a_handle(saved, local_kaggle):
    detector, folder = saved
    handle = "kaggle://someone/gflv2/keras/nano"
    keras_hub.upload_preset(handle, str(folder))
    assert (local_kaggle / "someone/gflv2/keras/nano" / "task.json").is_file()
    image = _image(3)
    _assert_same_detections(GFLV2ObjectDetector.from_preset(handle).detect(image), detector.detect(image))
    _assert_same_detections(keras_hub.models.ObjectDetector.from_preset(handle).detect(image), detector.detect(image))


def test_keras_saving_round_trip_and_compile_config(saved, tmp_path):
    detector, _ = saved
    path = tmp_path / "nano.keras"
    detector.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is GFLV2ObjectDetector and type(loaded.optimizer).__name__ == "CoupledSGD"
    image = _image(4)
    _assert_same_detections(loaded.detect(image), detector.detect(image))


def test_keras_export_serves_any_image_size(saved, tmp_path):
    import tensorflow as tf

    detector, _ = saved
    detector.export(str(tmp_path / "raw"), verbose=False)
    served = tf.saved_model.load(str(tmp_path / "raw"))
    for size in ((64, 64), (96, 160)):
        x = np.random.default_rng(sum(size)).normal(size=(1, *size, 3)).astype("float32")
        got = served.serve(x)
        want = detector(x)
        np.testing.assert_allclose(np.asarray(got["confidence"]), keras.ops.convert_to_numpy(want["confidence"]),
                                   atol=1e-5)  # fmt: skip
