"""The naming rule (``gflv2_keras.layers.naming``) and the public sublayer walk (``gflv2_keras.layers.walk``)."""

import pytest

from gflv2_keras.layers.naming import layer_name, module_path
from gflv2_keras.layers.walk import find_layer, sublayers


def test_names_and_module_paths_are_inverse():
    for path in ("backbone.layer1.0.bn1", "neck.lateral_convs.0.conv", "bbox_head.scales.2", "backbone.conv1"):
        assert "." not in layer_name(path)
        assert module_path(layer_name(path)) == path
    assert layer_name("bbox_head.cls_convs.0.conv") == "bbox_head-cls_convs-0-conv"
    with pytest.raises(ValueError, match="not a PyTorch module path"):
        layer_name("backbone-layer1")


def test_walk_finds_every_layer_once_in_a_stable_order(nano):
    layers = list(sublayers(nano))
    assert len({id(layer) for layer in layers}) == len(layers)
    assert [layer.name for layer in sublayers(nano)] == [layer.name for layer in layers]
    assert not [layer.name for layer in layers if "." in layer.name]  # the naming rule, everywhere
    # Every variable belongs to a layer that has no sublayers of its own (a conv, a norm, a scale ...).
    leaves = [layer for layer in layers if not any(True for _ in sublayers(layer))]
    assert {id(v) for layer in leaves for v in layer.weights} == {id(v) for v in nano.weights}
    assert {module_path(layer.name).split(".")[0] for layer in leaves if layer.weights} == {"backbone", "neck",
                                                                                           "bbox_head"}


def test_find_layer_by_official_module_path(nano):
    conv = find_layer(nano, "backbone.layer2.0.conv1")
    assert conv.name == "backbone-layer2-0-conv1"
    assert find_layer(nano, "bbox_head.scales.4").name == "bbox_head-scales-4"
    with pytest.raises(KeyError, match="backbone.layer9.0.conv1"):
        find_layer(nano, "backbone.layer9.0.conv1")


def test_walk_follows_lists_tuples_and_dicts_but_not_private_references():
    import keras

    class Holder(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.pairs = [(keras.layers.Dense(1, name="a"), keras.layers.Dense(1, name="b"))]
            self.table = {"c": keras.layers.Dense(1, name="c")}
            self.shared = self.table["c"]
            object.__setattr__(self, "_hidden", keras.layers.Dense(1, name="hidden"))

    assert [layer.name for layer in sublayers(Holder())] == ["a", "b", "c"]
