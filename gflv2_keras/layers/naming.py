"""Layer names of the official model: the one naming rule of the package.

**The naming rule.** A Keras layer that holds the weights of the official PyTorch module at
path ``P`` (``backbone.layer1.0.bn1``, ``neck.lateral_convs.0.conv``, ``bbox_head.scales.2``)
is named ``P`` with every ``"."`` replaced by ``"-"`` (``backbone-layer1-0-bn1``). PyTorch
module paths never contain ``"-"``, so the rule is reversible: the checkpoint key ``P.weight``
belongs to exactly one layer, and conversion is a one-to-one mapping. Dots are not used because
Keras variable paths (``.../backbone-layer1-0-bn1/gamma``) are the keys of the PyTorch
backend's ``ParameterDict``, which refuses them.

Everything that names layers (backbones, FPN, head) or reads official keys from layer names
(``convert.mapping``, tests) goes through :func:`layer_name` and :func:`module_path`.
"""

SEPARATOR = "-"


def layer_name(path):
    """The Keras layer name of the official module ``path``: ``backbone.layer1.0.bn1`` → ``backbone-layer1-0-bn1``.

    Raises:
        ValueError: ``path`` contains ``"-"``, so it is not a PyTorch module path and the
            name could not be mapped back.
    """
    if SEPARATOR in path:
        raise ValueError(f"{path!r} is not a PyTorch module path: it contains {SEPARATOR!r}")
    return path.replace(".", SEPARATOR)


def module_path(name):
    """The official module path of the layer named ``name``: the inverse of :func:`layer_name`."""
    return name.replace(SEPARATOR, ".")
