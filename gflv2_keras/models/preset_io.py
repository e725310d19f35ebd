"""Reading and writing preset folders of ``GFLV2ObjectDetector``.

Two layouts are read, one is written:

* **keras-hub** (written since keras-hub support): ``config.json`` (the ``GFLV2Backbone``,
  serialised with its ``registered_name``), ``model.weights.h5`` (backbone weights),
  ``task.json`` / ``task.weights.h5`` (the detector and its own weights), ``preprocessor.json``
  (the image converter) and ``metadata.json`` (keras-hub's versions and parameter count, plus our
  provenance). ``keras_hub.models.ObjectDetector.from_preset(DIR)``,
  ``keras_hub.models.Backbone.from_preset(DIR)`` and ``keras_hub.upload_preset`` work on it.
* **before keras-hub** (``gflv2 convert`` / ``gflv2 train`` of earlier versions): ``config.json``
  ``{"class_name": "GFLV2Detector", "config": {constructor arguments}}`` with no
  ``registered_name``, and ``model.weights.h5`` holding the whole detector under its old attribute
  tree (``backbone/...``, ``layers/fpn/...``, ``head/...``). ``LegacyWeights`` reproduces that
  tree over the new model's layers, so the file loads tensor for tensor.

Named presets (``gflv2_keras.presets``) are plain data; their weights live in the preset folder
``preset_home() / name`` (either layout).
"""

import json
from pathlib import Path

import keras
import keras_hub

from gflv2_keras.presets import PRESETS, missing_weights_message, preset_home, preset_info

CONFIG_FILE = "config.json"
TASK_FILE = "task.json"
PREPROCESSOR_FILE = "preprocessor.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
# Handles keras-hub resolves itself (downloads into its cache).
REMOTE_SCHEMES = ("hf://", "kaggle://", "modelscope://", "gs://")
CLASS_OVERRIDES = ("num_classes", "class_names")


def is_remote(preset):
    """Whether ``preset`` is a keras-hub handle (``hf://``, ``kaggle://``, ...)."""
    return str(preset).startswith(REMOTE_SCHEMES)


def read_config(folder):
    """The parsed ``config.json`` of a preset folder; errors name the file."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a preset folder: it has no {CONFIG_FILE}")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as error:
        raise ValueError(f"{path}: not a preset config ({type(error).__name__}: {str(error)[:120]})") from None
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise ValueError(f"{path}: not a preset config (no 'config' object)")
    return config


def is_legacy_config(config):
    """A ``config.json`` of the layout before keras-hub (a whole detector, no ``registered_name``)."""
    return "registered_name" not in config and config.get("class_name") in ("GFLV2Detector", "GFLV2ObjectDetector")


def load_detector(cls, preset, load_weights=True, **overrides):
    """Build ``cls`` from a preset name, folder (either layout) or keras-hub handle.

    Args:
        cls: ``GFLV2ObjectDetector`` (or a subclass).
        preset: a name of ``gflv2_keras.presets.PRESETS``, a preset folder, or a keras-hub handle.
        load_weights: load the saved weights (else random initialisation of the same architecture).
        **overrides: constructor arguments. ``num_classes`` / ``class_names`` differing from the
            preset's start a detector for new classes: every weight is loaded except the
            classification output, which keeps its official initialisation
            (``models.transfer``), and one line says so. ``input_scale`` replaces the
            preprocessor's keep-ratio target.

    Raises:
        FileNotFoundError: a name whose weights are not on disk (saying how to get them), a
            folder without ``config.json``, a path that does not exist.
        ValueError: an unknown name, an unreadable config, weights that do not fit.
    """
    overrides = dict(overrides)
    classes = {key: overrides.pop(key) for key in CLASS_OVERRIDES if key in overrides}
    if classes.get("class_names") is not None and "num_classes" not in classes:
        classes["num_classes"] = len(classes["class_names"])
    input_scale = overrides.pop("input_scale", None)
    if not load_weights:
        model = _build_without_weights(cls, preset, {**overrides, **classes})
    else:
        model = _load_as_saved(cls, preset, overrides)
        if classes:
            model = _with_classes(cls, model, preset, classes)
    if input_scale is not None:
        model.preprocessor.image_converter.image_scale = tuple(int(v) for v in input_scale)
    return model


def _build_without_weights(cls, preset, arguments):
    """The preset's architecture with fresh weights (``arguments`` override its config)."""
    if str(preset) in PRESETS:
        config = preset_info(str(preset))["config"]
    else:
        folder = _local_folder(preset)
        config = read_config(folder)
        if not is_legacy_config(config):
            return _keras_hub_load(cls, folder, load_weights=False, **arguments)
        config = config["config"]
    if "num_classes" in arguments and int(arguments["num_classes"]) != int(config.get("num_classes", 80)):
        arguments.setdefault("class_names", None)  # the preset's names belong to its own classes
    return cls(**{**config, **arguments})


def _load_as_saved(cls, preset, overrides):
    """The preset with its saved weights, exactly (``overrides``: non-class constructor arguments)."""
    if str(preset) in PRESETS:
        folder = preset_home() / str(preset)
        if not (folder / WEIGHTS_FILE).is_file():
            raise FileNotFoundError(missing_weights_message(str(preset), folder / WEIGHTS_FILE))
    elif is_remote(preset):
        return _keras_hub_load(cls, str(preset), load_weights=True, **overrides)
    else:
        folder = _local_folder(preset)
    config = read_config(folder)
    if not is_legacy_config(config):
        return _keras_hub_load(cls, folder, load_weights=True, **overrides)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{folder}: no {WEIGHTS_FILE} (use load_weights=False for random weights)")
    model = cls(**{**config["config"], **overrides})
    LegacyWeights(model).load_weights(str(weights))
    return model


def _local_folder(preset):
    folder = Path(preset)
    if folder.is_dir():
        return folder
    if folder.exists():
        raise FileNotFoundError(f"{preset}: not a preset folder (a preset folder holds {CONFIG_FILE})")
    if "/" in str(preset) or "\\" in str(preset):
        raise FileNotFoundError(f"{preset}: no such preset folder (a preset folder holds {CONFIG_FILE})")
    preset_info(str(preset))  # raises "Unknown preset ..." with the list of names


def _keras_hub_load(cls, preset, load_weights, **overrides):
    """keras-hub's own task loading (``task.json``, ``task.weights.h5``, backbone and preprocessor)."""
    return keras_hub.models.ObjectDetector.from_preset.__func__(cls, str(preset), load_weights=load_weights, **overrides)


def _with_classes(cls, model, preset, classes):
    """``model`` (loaded as saved) for the classes of ``classes``; see ``load_detector``."""
    from gflv2_keras.models.transfer import CLASSIFIER_OUTPUT, transfer_weights

    num_classes = int(classes.get("num_classes", model.num_classes))
    names = classes.get("class_names")
    if num_classes == model.num_classes:
        if names is not None:
            if len(names) != num_classes:
                raise ValueError(f"class_names has {len(names)} names but num_classes is {num_classes}")
            model.class_names = list(names)
        return model
    serialized = _plain(keras.saving.serialize_keras_object(model))
    serialized["config"].update(num_classes=num_classes, class_names=list(names) if names is not None else None)
    target = keras.saving.deserialize_keras_object(serialized)
    copied, kept = transfer_weights(model, target)
    print(
        f"[preset] {preset}: {copied} weight tensors loaded; {CLASSIFIER_OUTPUT} ({kept} tensors) re-initialised "
        f"because the classes changed ({model.num_classes} -> {num_classes})"
    )
    return target


class LegacyWeights(keras.Model):
    """The attribute tree of the detector before keras-hub, over a ``GFLV2ObjectDetector``'s layers.

    The old ``model.weights.h5`` stores the encoder under ``backbone/``, the FPN under
    ``layers/fpn/`` and the head under ``head/`` (Keras saves by attribute and class names);
    ``LegacyWeights(detector).load_weights(path)`` reads such a file into the detector itself.
    """

    def __init__(self, detector):
        super().__init__()
        self.backbone = detector.backbone.image_encoder
        self.neck = detector.backbone.feature_pyramid
        self.head = detector.head
        self.built = True  # the layers are the detector's, already built


def save_detector(model, directory, metadata=None, overwrite=False, max_shard_size=10):
    """Write ``model`` as a keras-hub preset folder at ``directory`` (see the module docstring).

    The folder is filled next to ``directory`` and renamed into place
    (``utils.files.publish_directory``); an existing folder is replaced only with
    ``overwrite=True``, else ``FileExistsError`` names it. ``metadata`` entries are added to
    keras-hub's ``metadata.json`` together with ``parameters`` (the official parameter count).
    """
    from gflv2_keras.utils.files import publish_directory

    if not model.built:
        model.build_for_inference()

    def write(folder):
        keras_hub.models.Task.save_to_preset(model, str(folder), max_shard_size=max_shard_size)
        meta_path = folder / METADATA_FILE
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        meta.update({"parameters": model.count_params_official(), **(metadata or {})})
        meta_path.write_text(json.dumps(_plain(meta), indent=2))

    publish_directory(directory, write, overwrite=overwrite, what="preset folder")


def preset_config(preset):
    """``(constructor arguments, has_weights)`` of a preset name or local folder, without building it.

    The arguments are the flat form every layout maps to (``backbone`` encoder dict,
    ``fpn_channels``, ``num_classes``, ``class_names``, ``head``, ``input_scale``, ...), for
    tools that need a preset's classes or scale before loading it (fine-tuning recipes).
    """
    if str(preset) in PRESETS:
        return preset_info(str(preset))["config"], (preset_home() / str(preset) / WEIGHTS_FILE).is_file()
    folder = _local_folder(preset)
    config = read_config(folder)
    has_weights = (folder / WEIGHTS_FILE).is_file()
    if is_legacy_config(config):
        return dict(config["config"]), has_weights
    task_path = folder / TASK_FILE
    try:
        task = json.loads(task_path.read_text())["config"]
        backbone = task["backbone"]["config"]
        converter = task["preprocessor"]["config"]["image_converter"]["config"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{task_path}: not a GFLv2 task config ({type(error).__name__}: {error})") from None
    flat = {key: task[key] for key in ("num_classes", "head", "test_config", "train_config", "class_names",
                                       "bounding_box_format", "inference_jit") if key in task}  # fmt: skip
    flat.update(backbone=backbone["encoder"], fpn_channels=backbone["fpn_channels"],
                input_scale=converter["image_scale"])  # fmt: skip
    return flat, has_weights


def _plain(value):
    return json.loads(json.dumps(value, default=str))
