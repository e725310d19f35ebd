"""Starting a detector for new classes from a trained one (fine-tuning).

Every weight is copied from the source detector except the classification output
(official module ``bbox_head.gfl_cls``), whose number of rows depends on the number of classes.
Its rows are matched by class name (``data.class_map``): the row (kernel column and bias) of
every class that both detectors name is copied, and so is GFLv2's extra background row when at
least one class row is; the rows of new classes keep the target's official initialisation
(kernel normal std 0.01, bias ``-log((1 - 0.01) / 0.01)``: ``GFocalHead.init_weights`` of the
official code). With no name in common (or a detector without names) the whole layer keeps
that initialisation.
"""

import keras
import numpy as np

from gflv2_keras.layers.naming import layer_name

CLASSIFIER_OUTPUT = layer_name("bbox_head.gfl_cls")


def _key(variable):
    """``LAYER/VARIABLE`` (``bbox_head-gfl_cls/kernel``): layer names follow the official module
    paths (``gflv2_keras.layers.naming``), unique in the model, while the outer path holds
    auto-numbered container names."""
    return "/".join(variable.path.split("/")[-2:])


def class_rows(source, target):
    """``[(target index, source index)]`` of the classifier rows both detectors name alike.

    Class rows by name (``class_names`` of both; none when either has no names), plus the GFLv2
    background row (index ``num_classes``, when both heads have it) if any class row matched.
    """
    from gflv2_keras.data.class_map import label_map

    source_names, target_names = getattr(source, "class_names", None), getattr(target, "class_names", None)
    if source_names is None or target_names is None:
        return []
    to_source = label_map(target_names, source_names)
    rows = [(t, int(s)) for t, s in enumerate(to_source) if s >= 0]
    if rows and source.head.use_dgqp and target.head.use_dgqp:
        rows.append((target.num_classes, source.num_classes))
    return rows


def transfer_weights(source, target, reinitialise=(CLASSIFIER_OUTPUT,)):
    """Copy ``source``'s weights into ``target`` (both built), except the layers ``reinitialise``.

    Args:
        source, target: built ``GFLV2Detector``s of the same architecture but for the classes.
        reinitialise: layer names whose variables keep ``target``'s initial values; for the
            classification output, the rows of the classes both detectors name are copied
            (``class_rows``, matched by name).

    Returns:
        ``(copied, kept)``: numbers of variables copied and left at their initial values (the
        classification output's variables count as kept, whatever rows were copied into them).

    Raises:
        ValueError: any other variable is missing on one side or differs in shape; the message
        lists every such variable with both shapes.
    """
    sources = {_key(v): v for v in source.weights}
    rows = class_rows(source, target) if CLASSIFIER_OUTPUT in reinitialise else []
    copied, kept, problems = 0, 0, []
    for variable in target.weights:
        key = _key(variable)
        if key.split("/")[0] in reinitialise:
            kept += 1
            if rows and key.split("/")[0] == CLASSIFIER_OUTPUT and key in sources:
                _copy_rows(sources[key], variable, rows)
            continue
        origin = sources.pop(key, None)
        if origin is None:
            problems.append(f"{key}: not in the source")
        elif tuple(origin.shape) != tuple(variable.shape):
            problems.append(f"{key}: source shape {tuple(origin.shape)}, target shape {tuple(variable.shape)}")
        else:
            variable.assign(origin.value)
            copied += 1
    problems += [f"{key}: only in the source" for key in sources if key.split("/")[0] not in reinitialise]
    if problems:
        raise ValueError(
            f"cannot start from these weights: {len(problems)} variable(s) do not fit the new detector "
            f"(only the classification output {', '.join(reinitialise)} may differ): " + "; ".join(problems[:20])
            + (" ..." if len(problems) > 20 else "")
        )
    return copied, kept


def _copy_rows(origin, variable, rows):
    """Copies the output channels (last axis: kernel ``[3, 3, in, C']``, bias ``[C']``) ``rows``."""
    value = keras.ops.convert_to_numpy(variable.value).copy()
    source = keras.ops.convert_to_numpy(origin.value)
    if value.shape[:-1] != source.shape[:-1]:
        return  # a tower of another width: the shape check of the other layers reports it
    targets, sources = (np.array(i, np.int64) for i in zip(*rows))
    value[..., targets] = source[..., sources]
    variable.assign(value)


def preset_class_names(preset):
    """The ``class_names`` of a preset name or local folder (None when it has none), without loading it."""
    from gflv2_keras.models.preset_io import preset_config

    names = preset_config(preset)[0].get("class_names")
    return None if names is None else [str(n) for n in names]


def with_class_names(detector, class_names):
    """``detector`` for the classes ``class_names`` (names, in that order), matched by name.

    * the same names in the same order: ``detector`` itself;
    * a detector without names and as many classes: ``detector`` itself, named ``class_names``
      (its classifier rows are taken by position: nothing else is known of them);
    * otherwise a new detector of the same architecture and configuration for ``class_names``,
      with every weight of ``detector`` (``transfer_weights``: classifier rows by name, new
      classes at the official initialisation). Call it where ``detector`` was built (the same
      ``tf.distribute`` strategy scope and dtype policy).

    Returns:
        ``(detector, rows)``: the detector for ``class_names`` and the names whose classifier
        rows came from ``detector`` (all of them when it is returned as it is).
    """
    class_names = [str(n) for n in class_names]
    names = detector.class_names
    if names is not None and list(names) == class_names:
        return detector, class_names
    if names is None and detector.num_classes == len(class_names):
        detector.class_names = class_names
        return detector, class_names
    serialized = keras.saving.serialize_keras_object(detector)
    serialized["config"].update(num_classes=len(class_names), class_names=class_names)
    target = keras.saving.deserialize_keras_object(serialized)
    if not target.built:
        target.build_for_inference()
    transfer_weights(detector, target)
    kept = [class_names[t] for t, _ in class_rows(detector, target) if t < len(class_names)]
    return target, kept
