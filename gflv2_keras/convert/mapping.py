"""Official PyTorch state dict → ``GFLV2Detector`` weights, one tensor to one Keras variable.

Every weight-bearing Keras layer is named after its official module path (the naming rule of
``gflv2_keras.layers.naming``), so the official key of a weight is ``module_path(layer.name) + "."
+ torch_param_name``. The rules below are per layer *type*, which makes ResNet, ResNeXt, Res2Net,
DCN stages, the FPN and the head convert without special cases (keys are ``<module path>.`` + the
names listed):

* ``Conv2D`` / ``PaddedConv2D``: ``weight`` (O, I/groups, kh, kw) → ``kernel`` (kh, kw, I/groups, O)
  by ``transpose(2, 3, 1, 0)``; ``bias`` → ``bias``.
* ``BatchNormalization``: ``weight, bias, running_mean, running_var`` → ``gamma, beta,
  moving_mean, moving_variance``; ``num_batches_tracked`` is ignored.
* ``GroupNormalization``: ``weight, bias`` → ``gamma, beta``.
* ``Scale``: the 0-dim ``scale`` → the scalar ``scale``.
* ``DeformConv2D``: ``weight`` (and ``bias``) as a conv; ``conv_offset.weight`` (18 or 27, C,
  kh, kw) → ``offset_kernel`` as a conv, ``conv_offset.bias`` → ``offset_bias``. The legacy mmcv
  names ``<module path>_offset.weight/bias`` are accepted too.

``bbox_head.integral.project`` (the constant 0..reg_max buffer) is checked, not loaded.

Conversion is strict and atomic: missing keys, unexpected keys and shape mismatches are all
collected and reported in one :class:`CheckpointMismatchError`, and no variable is touched
unless every tensor maps. A DCN layout (DCNv1 with 18 offset channels or DCNv2 with 27, and the
stages carrying DCN) that differs from the model's is reported first, with what the
checkpoint has and what the preset expects.
"""

import re
from dataclasses import dataclass, field

import keras
import numpy as np

from gflv2_keras.layers.deform_conv2d import DeformConv2D
from gflv2_keras.layers.naming import module_path
from gflv2_keras.layers.scale import Scale
from gflv2_keras.layers.walk import sublayers

CONSTANT_BUFFER_SUFFIX = ".integral.project"


class CheckpointMismatchError(ValueError):
    """The checkpoint does not fit the model. Nothing was loaded.

    Attributes:
        missing: official keys the model needs that the checkpoint lacks.
        unexpected: checkpoint keys the model has no place for.
        mismatched: ``(key, checkpoint_shape, expected_shape)`` triples (PyTorch layout).
    """

    def __init__(self, message, missing=(), unexpected=(), mismatched=()):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)


class DCNMismatchError(CheckpointMismatchError):
    """The checkpoint's deformable convs (flavour or stages) differ from the model's."""


@dataclass(frozen=True)
class TensorRule:
    """How one checkpoint tensor becomes one Keras variable.

    Attributes:
        keys: the official key, then accepted legacy aliases.
        variable: the Keras variable to fill.
        torch_shape: the shape the checkpoint tensor must have (PyTorch layout).
        to_keras: maps the checkpoint array (PyTorch layout) to the variable's layout.
    """

    keys: tuple
    variable: object
    torch_shape: tuple
    to_keras: object


@dataclass
class ConversionReport:
    """What :func:`convert_state_dict` did.

    Attributes:
        tensors: checkpoint tensors copied into Keras variables.
        parameters: parameters in the official sense (weights, biases, norm affines, scales;
            not BatchNorm running statistics).
        ignored: checkpoint keys deliberately not loaded (``num_batches_tracked``,
            ``integral.project``).
        legacy_keys: legacy key names that were accepted (``...conv2_offset.weight``).
        dcn: description of the deformable convolutions found.
    """

    tensors: int
    parameters: int
    ignored: list = field(default_factory=list)
    legacy_keys: list = field(default_factory=list)
    dcn: str = "no DCN"

    def summary(self):
        lines = [
            f"mapped {self.tensors} tensors ({self.parameters:,} parameters), "
            f"ignored {len(self.ignored)} bookkeeping tensors, DCN: {self.dcn}"
        ]
        if self.legacy_keys:
            lines.append(f"accepted {len(self.legacy_keys)} legacy mmcv key names (e.g. {self.legacy_keys[0]})")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- layouts
def _conv_kernel_rule(keys, variable):
    """(O, I/g, kh, kw) checkpoint weight → (kh, kw, I/g, O) Keras kernel."""
    kh, kw, cin, cout = (int(d) for d in variable.shape)
    return TensorRule(tuple(keys), variable, (cout, cin, kh, kw), lambda a: np.transpose(a, (2, 3, 1, 0)))


def _same_layout_rule(keys, variable):
    """Vectors and scalars: identical layout in both frameworks."""
    return TensorRule(tuple(keys), variable, tuple(int(d) for d in variable.shape), lambda a: a)


def _variables(layer):
    return {v.name: v for v in layer.weights}


def _key(layer, param):
    """The official checkpoint key of ``layer``'s PyTorch parameter ``param``."""
    return f"{module_path(layer.name)}.{param}"


# ----------------------------------------------------------------------------- one function per layer type
# Each returns (rules, ignorable_keys) for one layer.
def conv_rules(layer):
    """``Conv2D``/``PaddedConv2D``: ``weight`` and, if the layer has one, ``bias``."""
    v = _variables(layer)
    rules = [_conv_kernel_rule([_key(layer, "weight")], v["kernel"])]
    if "bias" in v:
        rules.append(_same_layout_rule([_key(layer, "bias")], v["bias"]))
    return rules, []


def batch_norm_rules(layer):
    """``BatchNormalization``: affine and running statistics; ``num_batches_tracked`` is ignored."""
    v = _variables(layer)
    pairs = (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"), ("running_var", "moving_variance"))
    rules = [_same_layout_rule([_key(layer, t)], v[k]) for t, k in pairs if k in v]
    return rules, [_key(layer, "num_batches_tracked")]


def group_norm_rules(layer):
    """``GroupNormalization``: ``weight`` → gamma, ``bias`` → beta."""
    v = _variables(layer)
    pairs = (("weight", "gamma"), ("bias", "beta"))
    rules = [_same_layout_rule([_key(layer, t)], v[k]) for t, k in pairs if k in v]
    return rules, []


def scale_rules(layer):
    """``Scale``: the 0-dim ``scale`` parameter."""
    return [_same_layout_rule([_key(layer, "scale")], _variables(layer)["scale"])], []


def deform_conv_rules(layer):
    """``DeformConv2D``: main ``weight`` (+ ``bias``) and the ``conv_offset`` conv.

    mmcv before module version 2 saved the offset conv of a module ``a.b.conv2`` as
    ``a.b.conv2_offset.*``; ``DeformConv2dPack._load_from_state_dict`` renames it on load, so
    both names are accepted.
    """
    rules, _ = conv_rules(layer)  # the main kernel (and bias) are named as in a plain conv
    v, path = _variables(layer), module_path(layer.name)
    rules.append(_conv_kernel_rule([f"{path}.conv_offset.weight", f"{path}_offset.weight"], v["offset_kernel"]))
    rules.append(_same_layout_rule([f"{path}.conv_offset.bias", f"{path}_offset.bias"], v["offset_bias"]))
    return rules, []


# Match order matters only if a class derives from another one listed later.
RULES = (
    (DeformConv2D, deform_conv_rules),
    (keras.layers.Conv2D, conv_rules),
    (keras.layers.BatchNormalization, batch_norm_rules),
    (keras.layers.GroupNormalization, group_norm_rules),
    (Scale, scale_rules),
)


def collect_rules(model):
    """All tensor rules of a built model, plus the checkpoint keys it may ignore.

    Raises:
        CheckpointMismatchError: if a Keras weight has no conversion rule, or two layers
            claim the same official key (both are bugs in the model, not the checkpoint).
    """
    rules, ignorable, covered = [], set(), set()
    for layer in sublayers(model):
        for cls, make_rules in RULES:
            if isinstance(layer, cls):
                layer_rules, layer_ignorable = make_rules(layer)
                rules += layer_rules
                ignorable.update(layer_ignorable)
                covered.update(id(rule.variable) for rule in layer_rules)
                break
    uncovered = [w.path for w in model.weights if id(w) not in covered]
    seen, duplicates = set(), []
    for rule in rules:
        if rule.keys[0] in seen:
            duplicates.append(rule.keys[0])
        seen.add(rule.keys[0])
    if uncovered or duplicates:
        lines = ["The Keras model cannot be converted:"]
        lines += [f"  no conversion rule for weight {p}" for p in uncovered]
        lines += [f"  two layers map to the official key {k}" for k in duplicates]
        raise CheckpointMismatchError("\n".join(lines))
    return rules, ignorable


# ----------------------------------------------------------------------------- DCN layout
_STAGE = re.compile(r"(?:^|\.)layer(\d+)\.")
_OFFSET_PARAM = r"(?:\.conv_offset|_offset)\."  # official DCN offset branch, or mmcv's legacy name
_OFFSET_WEIGHT = re.compile(_OFFSET_PARAM + r"weight$")
_OFFSET_TENSOR = re.compile(_OFFSET_PARAM + r"(?:weight|bias)$")


def _stage_of(key):
    match = _STAGE.search(key)
    return int(match.group(1)) if match else 0


def checkpoint_dcn_layout(state_dict):
    """``{stage index L (layerL): sorted offset-channel counts}`` of a checkpoint's DCNs."""
    layout = {}
    for key, value in state_dict.items():
        if _OFFSET_WEIGHT.search(key) and np.ndim(value) == 4:
            layout.setdefault(_stage_of(key), set()).add(int(np.shape(value)[0]))
    return {stage: sorted(counts) for stage, counts in sorted(layout.items())}


def model_dcn_layout(model):
    """Same as :func:`checkpoint_dcn_layout` for the Keras model's ``DeformConv2D`` layers."""
    layout = {}
    for layer in sublayers(model):
        if isinstance(layer, DeformConv2D):  # offset_channels is known before the layer is built
            layout.setdefault(_stage_of(module_path(layer.name)), set()).add(int(layer.offset_channels))
    return {stage: sorted(counts) for stage, counts in sorted(layout.items())}


def _flavour(channels):
    # 3x3 kernels, one deform group: 2*9 offsets (DCNv1) or 2*9 offsets + 9 mask logits (DCNv2).
    return {18: "DCNv1", 27: "DCNv2"}.get(channels, "DCN")


def describe_dcn_layout(layout):
    """``{2: [18], 3: [18]}`` → ``'DCNv1 (18 offset channels) in c3, c4 (layer2, layer3)'``."""
    if not layout:
        return "no DCN"
    by_channels = {}
    for stage, counts in layout.items():
        for count in counts:
            by_channels.setdefault(count, []).append(stage)
    parts = []
    for count, stages in sorted(by_channels.items()):
        levels = ", ".join(f"c{s + 1}" if s else "the stem" for s in stages)
        names = ", ".join(f"layer{s}" if s else "stem" for s in stages)
        parts.append(f"{_flavour(count)} ({count} offset channels) in {levels} ({names})")
    return "; ".join(parts)


def check_dcn_layout(model, state_dict, source="the checkpoint"):
    """Raise :class:`DCNMismatchError` if DCN flavour or stages differ between checkpoint and model."""
    found, expected = checkpoint_dcn_layout(state_dict), model_dcn_layout(model)
    if found == expected:
        return describe_dcn_layout(found)
    backbone = getattr(model, "backbone_config", {})
    config = {k: backbone[k] for k in ("type", "depth", "stage_with_dcn", "dcn") if k in backbone}
    raise DCNMismatchError(
        f"{source} has {describe_dcn_layout(found)}, but the preset's backbone {config} expects "
        f"{describe_dcn_layout(expected)}.\n"
        "The official 'dcnv2' GFocalV2 models are configured with mmcv type='DCN', which is DCNv1 "
        "(18 offset channels): R-101 in c3-c5, X-101 and R2-101 in c4-c5 only (docs/parity.md, DCN in the official configs). Pick the "
        "preset that matches the checkpoint, or override the backbone's 'stage_with_dcn' and "
        "'dcn' ({'modulated': True} for 27 offset channels)."
    )


# ----------------------------------------------------------------------------- conversion
def _check_constant_buffer(key, value, model):
    """``integral.project`` must be 0..reg_max; returns a problem string or None."""
    reg_max = getattr(model, "reg_max", None)
    expected = np.arange(reg_max + 1, dtype=np.float64) if reg_max is not None else None
    if expected is not None and (np.shape(value) != expected.shape or not np.allclose(value, expected)):
        return f"{key}: checkpoint holds {np.asarray(value).tolist()}, the model integrates over bins 0..{reg_max}"
    return None


def _shape(shape):
    return "(" + ", ".join(str(d) for d in shape) + ")"


def convert_state_dict(detector, state_dict, source="the checkpoint"):
    """Copy an official state dict into a ``GFLV2Detector``, strictly and atomically.

    Args:
        detector: a ``GFLV2Detector`` (built here with a small forward pass if needed).
        state_dict: ``{official key: array}`` in PyTorch layout (see ``read_official_checkpoint``).
        source: how to name the checkpoint in error messages (e.g. its file name).

    Returns:
        A :class:`ConversionReport`.

    Raises:
        DCNMismatchError: DCN flavour (18 vs 27 offset channels) or DCN stages differ.
        CheckpointMismatchError: one error listing every missing key, unexpected key and shape
            mismatch. The detector's weights are unchanged when anything is raised.
    """
    dcn = check_dcn_layout(detector, state_dict, source)  # before building: a wrong preset fails fast
    if not detector.built or not detector.weights:
        detector.build_for_inference()
    rules, ignorable = collect_rules(detector)
    assignments, ignored, legacy = _match_rules(rules, ignorable, state_dict, source, detector)
    _assign(assignments)
    return ConversionReport(
        tensors=len(assignments), parameters=_parameter_count(assignments), ignored=ignored, legacy_keys=legacy,
        dcn=dcn,
    )


def load_backbone_weights(detector, state_dict, source="the checkpoint"):
    """Initialise a detector's backbone from ImageNet classification weights, strictly.

    This is how every official recipe starts (``pretrained='torchvision://resnet50'`` etc.).
    Keys may be bare (torchvision ``conv1.weight``, ``layer1.0.conv1.weight``) or carry the
    ``backbone.`` prefix; the classifier (``fc.*``) is ignored. The deformable convs' offset
    branches are absent from classification weights and keep their zero initialisation, as
    in mmdet's loading; every other backbone tensor must be present with the right shape.

    Returns:
        A :class:`ConversionReport`. Raises :class:`CheckpointMismatchError` listing every
        problem; nothing is loaded then.
    """
    prefixed = {}
    for key, value in state_dict.items():
        key = key[len("module."):] if key.startswith("module.") else key
        key = key if key.startswith("backbone.") else "backbone." + key
        prefixed[key] = value
    classifier = [k for k in prefixed if k.startswith("backbone.fc.")]
    for key in classifier:
        del prefixed[key]
    if not detector.built or not detector.weights:
        detector.build_for_inference()
    # The official ``backbone`` modules, however the Keras model nests them (the FPN is ``neck``).
    rules, ignorable = collect_rules(detector)
    rules = [rule for rule in rules if rule.keys[0].startswith("backbone.")]
    ignorable = {key for key in ignorable if key.startswith("backbone.")}
    assignments, ignored, legacy = _match_rules(
        rules, ignorable, prefixed, source, detector, optional=_OFFSET_TENSOR.search
    )
    _assign(assignments)
    return ConversionReport(
        tensors=len(assignments), parameters=_parameter_count(assignments), ignored=ignored + classifier,
        legacy_keys=legacy, dcn=None,
    )


def _match_rules(rules, ignorable, state_dict, source, detector, optional=lambda key: False):
    """Pair every rule with its tensor; raise one error listing all problems.

    ``optional(key)`` marks official keys that may be absent (the weight keeps its value).

    Returns:
        ``(assignments [(rule, value)], ignored keys, legacy keys used)``.
    """
    assignments, consumed, legacy = [], set(), []
    missing, mismatched, problems = [], [], []
    for rule in rules:
        present = [k for k in rule.keys if k in state_dict]
        if not present:
            if not optional(rule.keys[0]):
                missing.append((rule.keys[0], rule.torch_shape))
            continue
        if len(present) > 1:
            problems.append(f"{' and '.join(present)}: the same tensor under its official and legacy names")
        key = present[0]
        consumed.update(present)
        if key != rule.keys[0]:
            legacy.append(key)
        value = np.asarray(state_dict[key])
        if tuple(value.shape) != rule.torch_shape:
            mismatched.append((key, tuple(value.shape), rule.torch_shape))
            continue
        assignments.append((rule, value))

    ignored, unexpected = [], []
    for key, value in state_dict.items():
        if key in consumed:
            continue
        if key in ignorable:
            ignored.append(key)
        elif key.endswith(CONSTANT_BUFFER_SUFFIX):
            ignored.append(key)
            problem = _check_constant_buffer(key, value, detector)
            if problem:
                problems.append(problem)
        else:
            unexpected.append(key)

    if missing or unexpected or mismatched or problems:
        lines = [f"{source} does not match the model; no weights were loaded."]
        if missing:
            lines.append(f"{len(missing)} missing keys (the model needs them, the checkpoint lacks them):")
            lines += [f"  {key}  expected shape {_shape(shape)}" for key, shape in missing]
        if unexpected:
            lines.append(f"{len(unexpected)} unexpected keys (in the checkpoint, not in the model):")
            lines += [f"  {key}  shape {_shape(np.shape(state_dict[key]))}" for key in unexpected]
        if mismatched:
            lines.append(f"{len(mismatched)} shape mismatches (PyTorch layout):")
            lines += [f"  {key}: checkpoint {_shape(got)}, model expects {_shape(want)}"
                      for key, got, want in mismatched]
        if problems:
            lines.append(f"{len(problems)} other problems:")
            lines += [f"  {p}" for p in problems]
        lines.append("Check that the preset (backbone, num_classes) matches the checkpoint.")
        raise CheckpointMismatchError("\n".join(lines), [k for k, _ in missing], unexpected, mismatched)
    return assignments, ignored, legacy


def _assign(assignments):
    for rule, value in assignments:
        rule.variable.assign(np.asarray(rule.to_keras(value), dtype=rule.variable.dtype))


def _parameter_count(assignments):
    return sum(int(value.size) for rule, value in assignments if not rule.variable.name.startswith("moving_"))


# ----------------------------------------------------------------------------- whole files
def _sha256(path, chunk=1 << 20):
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def convert_checkpoint(checkpoint, preset, output_dir, log=print, overwrite=False):
    """Convert an official ``.pth`` checkpoint into a preset folder.

    Builds ``preset`` (a name from ``list_presets()`` or a preset folder) with random weights,
    copies every checkpoint tensor into it (:func:`convert_state_dict`) and writes
    ``output_dir`` (``config.json``, ``model.weights.h5``, ``metadata.json``), which
    ``GFLV2Detector.from_preset(output_dir)`` loads. ``metadata.json`` records the provenance:
    source file name, size and SHA-256, the checkpoint's ``meta`` (``mmdet_version``, ``epoch``,
    ``CLASSES``, ``config``, ...) and the preset's published metrics.

    If the checkpoint's ``meta["CLASSES"]`` has ``num_classes`` names, they become the
    detector's ``class_names``.

    Args:
        checkpoint: path to the official checkpoint (or a bare state dict file).
        preset: preset name or folder describing the architecture.
        output_dir: folder to write; an existing one is replaced only with ``overwrite=True``
            (checked before the checkpoint is read, and again when writing).
        log: progress printer (``print``; pass ``lambda *_: None`` for silence).

    Returns:
        ``{"output_dir", "preset", "checkpoint", "sha256", "tensors", "parameters",
        "ignored", "dcn"}``.

    Raises:
        FileExistsError: ``output_dir`` exists and ``overwrite`` is false.
        FileNotFoundError, ImportError, CheckpointReadError: see ``read_official_checkpoint``.
        CheckpointMismatchError / DCNMismatchError: see :func:`convert_state_dict`.
    """
    from pathlib import Path

    from gflv2_keras.convert.checkpoint import plain_meta, read_official_checkpoint
    from gflv2_keras.models.detector import GFLV2Detector
    from gflv2_keras.presets import PRESETS

    from gflv2_keras.utils.files import refuse_existing

    refuse_existing(output_dir, overwrite, "preset folder")
    path = Path(checkpoint)
    log(f"Reading {path} ...")
    state_dict, meta = read_official_checkpoint(path)
    digest = _sha256(path)
    facts = ", ".join(f"{k}={meta[k]}" for k in ("mmdet_version", "epoch", "iter") if k in meta)
    log(f"  {len(state_dict)} tensors{'; ' + facts if facts else ''}; sha256 {digest[:16]}...")

    log(f"Building preset {preset} ...")
    detector = GFLV2Detector.from_preset(str(preset), load_weights=False).build_for_inference()
    classes = meta.get("CLASSES")
    if isinstance(classes, (list, tuple)) and len(classes) == detector.num_classes:
        classes = [str(c) for c in classes]
        if classes != detector.class_names:
            log("  using the class names stored in the checkpoint")
            detector.class_names = classes

    log(f"Mapping tensors onto {len(detector.weights)} Keras variables ...")
    report = convert_state_dict(detector, state_dict, source=f"checkpoint {path.name}")

    metadata = dict(PRESETS[preset]["metadata"]) if str(preset) in PRESETS else {}
    metadata.update(
        {
            "preset": str(preset),
            "converted_from": {
                "file": path.name,
                "sha256": digest,
                "bytes": path.stat().st_size,
                "tensors": report.tensors,
                "ignored_tensors": len(report.ignored),
                "dcn": report.dcn,
            },
            "checkpoint_meta": plain_meta(meta),
        }
    )
    log(f"Writing {output_dir} ...")
    detector.save_to_preset(str(output_dir), metadata=metadata, overwrite=overwrite)
    log(report.summary())
    log(f"Done: GFLV2Detector.from_preset({str(output_dir)!r})")
    return {
        "output_dir": str(output_dir),
        "preset": str(preset),
        "checkpoint": str(path),
        "sha256": digest,
        "tensors": report.tensors,
        "parameters": report.parameters,
        "ignored": report.ignored,
        "dcn": report.dcn,
    }
