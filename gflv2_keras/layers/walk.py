"""Finding the sublayers of a layer or model through public attributes only."""

import keras

from gflv2_keras.layers.naming import layer_name


def sublayers(layer):
    """Every Keras layer reachable from ``layer`` (itself excluded), depth first, each once.

    A layer's children are the values of its public attributes (names not starting with
    ``"_"``) that are Keras layers or lists, tuples and dicts (values in insertion order)
    nesting them, in assignment order (on the PyTorch backend: other attributes first, then
    sublayers); a ``keras.Model`` also contributes its public ``layers`` (a Sequential or
    functional model keeps its layers in no public attribute). Private
    attributes are skipped: they hold Keras' own bookkeeping and references deliberately kept
    out of tracking (``PaddedConv2D``'s folded BatchNorm). Layers reached twice (shared
    layers, cycles) are yielded the first time only.
    """
    seen = {id(layer)}

    def visit(value):
        if isinstance(value, keras.layers.Layer):
            if id(value) not in seen:
                seen.add(id(value))
                yield value
                yield from children(value)
        elif isinstance(value, (list, tuple)):
            for item in value:
                yield from visit(item)
        elif isinstance(value, dict):
            for item in value.values():
                yield from visit(item)

    def children(parent):
        for name, value in _attributes(parent):
            if not name.startswith("_"):
                yield from visit(value)
        if isinstance(parent, keras.Model):
            yield from visit(parent.layers)

    yield from children(layer)


def _attributes(layer):
    """``(name, value)`` of ``layer``'s instance attributes.

    On the PyTorch backend a Keras layer is a ``torch.nn.Module``, which stores attributes
    holding modules (sublayers) apart from the others; ``named_children()`` lists those.
    """
    yield from list(vars(layer).items())
    if keras.backend.backend() == "torch":
        yield from layer.named_children()


def find_layer(root, path):
    """The sublayer of ``root`` that holds the official module ``path`` (``"backbone.layer3.0.conv2"``).

    Layers are found by the naming rule of :mod:`gflv2_keras.layers.naming`.

    Raises:
        KeyError: no sublayer has that name.
    """
    name = layer_name(path)
    for layer in sublayers(root):
        if layer.name == name:
            return layer
    raise KeyError(f"{root.name} has no layer {name!r} (official module {path!r})")
