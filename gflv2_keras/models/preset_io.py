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
``preset_home() / name`` (either layout). An ``hf://`` or ``kaggle://`` handle is downloaded into
the hub's cache (``downloaded_folder``) and read like a local folder.
"""

import json
import re
import tempfile
import warnings
from pathlib import Path

import keras
import keras_hub

from gflv2_keras.presets import PRESETS, missing_weights_message, preset_home, preset_info

CONFIG_FILE = "config.json"
TASK_FILE = "task.json"
TASK_WEIGHTS_FILE = "task.weights.h5"
PREPROCESSOR_FILE = "preprocessor.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
# Handles keras-hub resolves itself (downloads into its cache).
REMOTE_SCHEMES = ("hf://", "kaggle://", "modelscope://", "gs://")
CLASS_OVERRIDES = ("num_classes", "class_names")
# Groups of a weights file that are not layer weights (``load_weights_checked`` does not compare them).
NOT_WEIGHTS = ("optimizer",)


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
            preset's start a detector for those classes, as fine-tuning does
            (``models.transfer.with_class_names``): every weight is loaded; the classifier rows
            of the names the preset also has are kept by name (reordered), those of new names
            (all rows when only ``num_classes`` is given) keep the official initialisation, and
            one line says so. The same names in another order reorder the rows; other names of
            the same count are new classes, not a relabelling. ``input_scale`` replaces the
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
        folder = downloaded_folder(preset) if is_remote(preset) else _local_folder(preset)
        if folder is None:  # a handle keras-hub fetches itself
            return _keras_hub_load(cls, preset, load_weights=False, **arguments)
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
        folder = downloaded_folder(preset)
        if folder is None:
            return _quiet_keras_hub_load(cls, str(preset), overrides)
    else:
        folder = _local_folder(preset)
    config = read_config(folder)
    if not is_legacy_config(config):
        return _keras_hub_load_checked(cls, folder, overrides)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{folder}: no {WEIGHTS_FILE} (use load_weights=False for random weights)")
    model = cls(**{**config["config"], **overrides})
    legacy = LegacyWeights(model)
    load_weights_checked(legacy, weights, folder / CONFIG_FILE, legacy.load_weights, legacy.save_weights)
    return model


def downloaded_folder(preset):
    """The local copy of an ``hf://`` or ``kaggle://`` preset, or None for the other handles.

    Downloaded into the hub's cache by the client keras-hub itself uses, through its public call
    that returns the local folder (``kagglehub.model_download``,
    ``huggingface_hub.snapshot_download``; files already cached are not fetched again), so the
    folder is loaded and checked like a local one (``load_weights_checked``). ``gs://`` and
    ``modelscope://`` handles, or a hub client that is not installed, are left to keras-hub, which
    gives no public path of the files it fetches (its own loading: a mismatch is Keras' message in
    one line, without the check of extra variables).
    """
    handle = str(preset)
    try:
        if handle.startswith("kaggle://"):
            import kagglehub

            return Path(kagglehub.model_download(handle[len("kaggle://"):]))
        if handle.startswith("hf://"):
            import huggingface_hub

            return Path(huggingface_hub.snapshot_download(repo_id=handle[len("hf://"):]))
    except ImportError:  # keras-hub's own loading says which package to install
        return None
    return None


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


def _keras_hub_load_checked(cls, folder, overrides):
    """keras-hub's loading of a local preset folder, each weights file checked against the config first.

    The steps of keras-hub's ``from_preset(load_weights=True)``: the task from ``task.json``
    without weights, then ``task.weights.h5`` (the detector's own layers,
    ``Task.load_task_weights``) and ``model.weights.h5`` (the backbone), each through
    ``load_weights_checked``. Sharded backbone weights (``model.weights.json``) are left to keras-hub.
    """
    folder = Path(folder)
    if not (folder / WEIGHTS_FILE).is_file():
        return _quiet_keras_hub_load(cls, folder, overrides)
    model = _keras_hub_load(cls, folder, load_weights=False, **overrides)
    if (folder / TASK_WEIGHTS_FILE).is_file():
        load_weights_checked(model, folder / TASK_WEIGHTS_FILE, folder / TASK_FILE, model.load_task_weights,
                             model.save_task_weights, leave_out=model.backbone)  # fmt: skip
    backbone = model.backbone
    load_weights_checked(backbone, folder / WEIGHTS_FILE, folder / CONFIG_FILE, backbone.load_weights,
                         backbone.save_weights)  # fmt: skip
    return model


def _quiet_keras_hub_load(cls, preset, overrides):
    """keras-hub's loading (remote handles, sharded weights) with Keras' warnings captured and its
    "objects could not be loaded" error in one line."""
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        try:
            return _keras_hub_load(cls, str(preset), load_weights=True, **overrides)
        except ValueError as error:
            if "could not be loaded" not in str(error):
                raise
            said = " ".join(" ".join(str(error).split("\n")[:3]).split())[:400]
            raise ValueError(f"{preset}: the weights do not fit the preset's config: {said}") from None


def load_weights_checked(target, path, config_path, load, save, leave_out=None):
    """``load(path)`` once the weights file is known to hold exactly ``target``'s variables.

    A variable of ``target`` missing from the file, one of the file that ``target`` has no
    place for, or one of another shape (weights written for another architecture: depth,
    widths, head, classes) is refused in one ``ValueError`` line naming the first mismatch
    (its layer path, the expected and the found shape) and the counts, before or instead of
    Keras' own per-layer messages, whose warnings are captured (none reaches the user).

    Args:
        target: the Keras model or layer the file is loaded into.
        path: a ``.weights.h5`` file.
        config_path: the config the model was built from (named in the message).
        load: ``load(str(path))`` loads the file into ``target`` (``load_weights``,
            ``load_task_weights``).
        save: ``save(str(path))`` writes ``target``'s variables in the same layout
            (``save_weights``, ``save_task_weights``): the expected tree, written only to
            name a mismatch.
        leave_out: a layer whose variables the file does not hold (the backbone, for
            ``task.weights.h5``).

    Raises:
        ValueError: the file is not a weights file, or does not fit ``target``.
    """
    found = weights_file_shapes(path)
    skipped = {id(v) for v in leave_out.weights} if leave_out is not None else set()
    expected_count = len([v for v in target.weights if id(v) not in skipped])
    if len(found) == expected_count:
        with warnings.catch_warnings(record=True):
            warnings.simplefilter("always")
            try:
                load(str(path))
                return
            except (ValueError, KeyError, TypeError) as error:  # Keras' own check of a layer: named below
                keras_error = error
    else:
        keras_error = None
    with tempfile.TemporaryDirectory() as scratch:
        expected_path = Path(scratch) / "expected.weights.h5"
        save(str(expected_path))
        expected = weights_file_shapes(expected_path)
    problem = describe_mismatch(expected, found)
    if problem is None:
        if keras_error is None:  # equal trees (a variable shared by two layers counts twice): load it
            with warnings.catch_warnings(record=True):
                warnings.simplefilter("always")
                load(str(path))
            return
        problem = " ".join(str(keras_error).split())[:300]
    raise ValueError(f"{path}: the weights do not fit the model of {config_path}: {problem}; the file was written "
                     "for another architecture (use the config it was saved with, or another weights file)")


def weights_file_shapes(path):
    """``{variable path in the file: shape}`` of a Keras ``.weights.h5`` file (``h5py``), its layers only.

    The ``optimizer/`` group (saved with a compiled model, as a trained preset's) is left out:
    it is training state, not the detector's weights, and Keras skips it when the optimizers differ.
    """
    import h5py

    shapes = {}

    def visit(name, item):
        if isinstance(item, h5py.Dataset) and name.split("/")[0] not in NOT_WEIGHTS:
            shapes[name] = tuple(item.shape)

    try:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
    except OSError as error:
        raise ValueError(f"{path}: not a Keras weights file ({error})") from None
    return shapes


def describe_mismatch(expected, found):
    """The counts and the first difference of two ``weights_file_shapes`` trees, or None when equal."""
    missing = sorted(set(expected) - set(found))
    extra = sorted(set(found) - set(expected))
    reshaped = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if not (missing or extra or reshaped):
        return None
    first = min(missing[:1] + extra[:1] + reshaped[:1], key=_path_order)
    if first in reshaped:
        what = f"{_readable(first)} expects shape {expected[first]}, the file has {found[first]}"
    elif first in missing:
        what = f"{_readable(first)} (shape {expected[first]}) is not in the file"
    else:
        what = f"the file's {_readable(first)} (shape {found[first]}) has no place in the model"
    return (f"{len(reshaped)} variable(s) of another shape, {len(missing)} missing from the file, {len(extra)} "
            f"extra in it (model {len(expected)}, file {len(found)}); first: {what}")


def _path_order(path):
    """Natural order of variable paths (``layer_2`` before ``layer_10``)."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"[/_]", path)]


def _readable(path):
    """``layers/a/layers/b/vars/0`` -> ``a/b variable 0`` (the file's path without Keras' container names)."""
    parts = path.split("/")
    index = parts[-1] if len(parts) >= 2 and parts[-2] == "vars" else None
    names = [p for p in (parts[:-2] if index is not None else parts) if p not in ("layers", "_layers")]
    return "/".join(names) + (f" variable {index}" if index is not None else "")


def _with_classes(cls, model, preset, classes):
    """``model`` (loaded as saved) for the classes of ``classes``; see ``load_detector``.

    Class names are matched by name, as fine-tuning does (``models.transfer.with_class_names``):
    the classifier rows of the names both lists hold are kept (reordered), those of new names
    start from the official initialisation, also when the count is unchanged (a renamed list
    is new classes, not a relabelling of the saved ones). ``num_classes`` alone, differing,
    re-initialises the whole classifier.
    """
    from gflv2_keras.models.transfer import CLASSIFIER_OUTPUT, transfer_weights, with_class_names

    num_classes = int(classes.get("num_classes", model.num_classes))
    names = classes.get("class_names")
    if names is not None:
        if len(names) != num_classes:
            raise ValueError(f"class_names has {len(names)} names but num_classes is {num_classes}")
        target, kept = with_class_names(model, names)
        if target is not model:
            new = [name for name in target.class_names if name not in kept]
            print(f"[preset] {preset}: classes {model.class_names} -> {target.class_names} ({model.num_classes} -> "
                  f"{num_classes}): every weight loaded; the {CLASSIFIER_OUTPUT} rows of {kept} matched by name"
                  + (f", of {new} re-initialised" if new else ""))  # fmt: skip
        return target
    if num_classes == model.num_classes:
        return model
    serialized = _plain(keras.saving.serialize_keras_object(model))
    serialized["config"].update(num_classes=num_classes, class_names=None)
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
