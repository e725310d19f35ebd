"""Backbone registry: a backbone is built from plain config data ``{"type": ..., **kwargs}``."""

from gflv2_keras.models.backbones.resnet import ResNetBackbone


def _res2net(**kwargs):
    from gflv2_keras.models.backbones.res2net import Res2NetBackbone

    return Res2NetBackbone(**kwargs)


BACKBONES = {"resnet": ResNetBackbone, "resnext": ResNetBackbone, "res2net": _res2net}


def build_backbone(config):
    """Build a backbone layer from ``{"type": "resnet" | "resnext" | "res2net", **kwargs}``."""
    config = dict(config)
    kind = config.pop("type", "resnet")
    if kind not in BACKBONES:
        raise ValueError(f"Unknown backbone type {kind!r}; expected one of {sorted(BACKBONES)}")
    return BACKBONES[kind](**config)
