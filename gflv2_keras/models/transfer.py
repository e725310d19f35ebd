"""Starting a detector for new classes from a trained one (fine-tuning).

Every weight is copied from the source detector except the classification output
(official module ``bbox_head.gfl_cls``), whose number of rows depends on the number of classes;
the target keeps that layer's official initialisation (kernel normal std 0.01, bias
``-log((1 - 0.01) / 0.01)``: ``GFocalHead.init_weights`` of the official code).
"""

from gflv2_keras.layers.naming import layer_name

CLASSIFIER_OUTPUT = layer_name("bbox_head.gfl_cls")


def _key(variable):
    """``LAYER/VARIABLE`` (``bbox_head-gfl_cls/kernel``): layer names follow the official module
    paths (``gflv2_keras.layers.naming``), unique in the model, while the outer path holds
    auto-numbered container names."""
    return "/".join(variable.path.split("/")[-2:])


def transfer_weights(source, target, reinitialise=(CLASSIFIER_OUTPUT,)):
    """Copy ``source``'s weights into ``target`` (both built), except the layers ``reinitialise``.

    Args:
        source, target: built ``GFLV2Detector``s of the same architecture but for the classes.
        reinitialise: layer names whose variables keep ``target``'s initial values.

    Returns:
        ``(copied, kept)``: numbers of variables copied and left at their initial values.

    Raises:
        ValueError: any other variable is missing on one side or differs in shape; the message
        lists every such variable with both shapes.
    """
    sources = {_key(v): v for v in source.weights}
    copied, kept, problems = 0, 0, []
    for variable in target.weights:
        key = _key(variable)
        if key.split("/")[0] in reinitialise:
            kept += 1
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
