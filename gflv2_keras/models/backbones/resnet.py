"""ResNet and ResNeXt backbones in the official ('pytorch' style) MMDetection layout.

* Input: normalised float images ``[B, H, W, 3]`` (NHWC).
* Output: ``[C3, C4, C5]`` feature maps (strides 8, 16, 32); C2 is computed but not returned
  because the FPN starts at level 1.
* Every strided conv and pool pads symmetrically and explicitly (docs/parity.md, Padding), so each level has
  ``ceil(previous / 2)`` rows and samples the same pixels as PyTorch.
* Layers are named after their official module path by the naming rule of
  ``gflv2_keras.layers.naming`` (``backbone.layer2.0.conv1`` → ``backbone-layer2-0-conv1``), so
  conversion is a one-to-one mapping. ``prefix`` arguments are official (dotted) module paths.
"""

import keras
from keras import ops

from gflv2_keras.layers.naming import layer_name
from gflv2_keras.layers.norm import BatchNorm
from gflv2_keras.layers.padded_conv import PaddedConv2D

STAGE_BLOCKS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}


def make_conv(filters, kernel_size, path, strides=1, groups=1, dcn=None, dtype=None):
    """A bias-free conv with symmetric padding, or a deformable conv when ``dcn`` is set.

    Args:
        path: the official module path (``backbone.layer1.0.conv1``) that names the layer.
        dcn: ``None`` or a dict ``{"modulated": bool, "deform_groups": int, "implementation":
            "auto" | "portable" | "custom_op"}`` (mmcv ``DCN`` is ``modulated=False``, ``DCNv2`` is
            ``modulated=True``). ``"auto"`` (default) runs the C++ custom op on the TensorFlow
            backend when it is built (``layers.deform_conv2d``), else the portable keras-ops path;
            exports and XLA-compiled graphs use the portable path.
        dtype: the dtype policy (the parent's, so ``mixed_bfloat16`` reaches every conv).
    """
    name = layer_name(path)
    if dcn is None:
        return PaddedConv2D(
            filters, kernel_size, strides=strides, groups=groups, use_bias=False, name=name, dtype=dtype
        )
    from gflv2_keras.layers.deform_conv2d import DeformConv2D

    return DeformConv2D(
        filters,
        kernel_size=kernel_size,
        strides=strides,
        padding=kernel_size // 2,
        groups=groups,
        deform_groups=int(dcn.get("deform_groups", 1)),
        modulated=bool(dcn.get("modulated", False)),
        use_bias=False,
        implementation=dcn.get("implementation", "auto"),
        name=name,
        dtype=dtype,
    )


class _Block(keras.layers.Layer):
    """Shared residual plumbing: ``relu(body(x) + shortcut(x))``."""

    def build_shortcut(self, in_channels, out_channels, stride, frozen_stats, prefix):
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = [
                PaddedConv2D(out_channels, 1, pad=0, strides=stride, use_bias=False,
                             name=layer_name(f"{prefix}.downsample.0"), dtype=self.dtype_policy),
                BatchNorm(frozen_stats, name=layer_name(f"{prefix}.downsample.1"), dtype=self.dtype_policy),
            ]

    def conv_norm_pairs(self):
        """``(conv, norm)`` pairs where ``norm`` directly follows ``conv`` (for BN folding)."""
        names = [name[2:] for name in ("bn1", "bn2", "bn3") if hasattr(self, name)]
        pairs = [(getattr(self, "conv" + n), getattr(self, "bn" + n)) for n in names]
        return pairs + ([tuple(self.downsample)] if self.downsample is not None else [])

    def shortcut(self, x, training):
        if self.downsample is None:
            return x
        conv, norm = self.downsample
        return norm(conv(x), training=training)


@keras.saving.register_keras_serializable(package="gflv2_keras")
class BasicBlock(_Block):
    """Two 3x3 convs (ResNet-18/34); the first carries the stride."""

    expansion = 1

    def __init__(self, in_channels, planes, stride=1, frozen_stats=True, dcn=None, prefix="", **kwargs):
        super().__init__(**kwargs)
        self.conv1 = make_conv(planes, 3, f"{prefix}.conv1", strides=stride, dtype=self.dtype_policy)
        self.bn1 = BatchNorm(frozen_stats, name=layer_name(f"{prefix}.bn1"), dtype=self.dtype_policy)
        self.conv2 = make_conv(planes, 3, f"{prefix}.conv2", dcn=dcn, dtype=self.dtype_policy)
        self.bn2 = BatchNorm(frozen_stats, name=layer_name(f"{prefix}.bn2"), dtype=self.dtype_policy)
        self.build_shortcut(in_channels, planes, stride, frozen_stats, prefix)

    def call(self, x, training=None):
        out = ops.relu(self.bn1(self.conv1(x), training=training))
        out = self.bn2(self.conv2(out), training=training)
        return ops.relu(out + self.shortcut(x, training))


@keras.saving.register_keras_serializable(package="gflv2_keras")
class Bottleneck(_Block):
    """1x1 → 3x3 (stride, groups, optional DCN) → 1x1 x4, 'pytorch' style (stride on the 3x3).

    ``width = planes`` for ResNet and ``floor(planes * base_width / base_channels) * groups`` for
    ResNeXt (mmdet's formula; ``base_channels`` is 64 in every official model).
    """

    expansion = 4

    def __init__(
        self,
        in_channels,
        planes,
        stride=1,
        groups=1,
        base_width=64,
        base_channels=64,
        frozen_stats=True,
        dcn=None,
        prefix="",
        **kwargs,
    ):
        super().__init__(**kwargs)
        width = planes if groups == 1 else (planes * base_width // base_channels) * groups
        self.conv1 = make_conv(width, 1, f"{prefix}.conv1", dtype=self.dtype_policy)
        self.bn1 = BatchNorm(frozen_stats, name=layer_name(f"{prefix}.bn1"), dtype=self.dtype_policy)
        self.conv2 = make_conv(width, 3, f"{prefix}.conv2", strides=stride, groups=groups, dcn=dcn, dtype=self.dtype_policy)
        self.bn2 = BatchNorm(frozen_stats, name=layer_name(f"{prefix}.bn2"), dtype=self.dtype_policy)
        self.conv3 = make_conv(planes * 4, 1, f"{prefix}.conv3", dtype=self.dtype_policy)
        self.bn3 = BatchNorm(frozen_stats, name=layer_name(f"{prefix}.bn3"), dtype=self.dtype_policy)
        self.build_shortcut(in_channels, planes * 4, stride, frozen_stats, prefix)

    def call(self, x, training=None):
        out = ops.relu(self.bn1(self.conv1(x), training=training))
        out = ops.relu(self.bn2(self.conv2(out), training=training))
        out = self.bn3(self.conv3(out), training=training)
        return ops.relu(out + self.shortcut(x, training))


@keras.saving.register_keras_serializable(package="gflv2_keras")
class ResNetBackbone(keras.layers.Layer):
    """ResNet-18/34/50/101/152 and ResNeXt (``groups`` x ``base_width``d), official layout.

    Args:
        depth: one of 18, 34, 50, 101, 152.
        groups, base_width: ResNeXt cardinality and width (32, 4 for 32x4d); 1, 64 for ResNet.
        base_channels: planes of stage 1 (64 officially; smaller for demo presets).
        stage_with_dcn: 4 bools; stages whose 3x3 convs are deformable.
        dcn: ``{"modulated": False, "deform_groups": 1}`` (mmcv ``DCN``) when any stage has DCN.
        frozen_stages: stem and stages ``1..frozen_stages`` are not trained (-1: none frozen).
        norm_eval: BatchNorm uses its moving statistics in training too (official: True).
        prefix: official module path of the backbone (``"backbone"``); layer names follow from it.

    Call:
        ``images [B, H, W, 3]`` float → ``[C3, C4, C5]`` with ``base_channels * 2**i * expansion``
        channels (512, 1024, 2048 for ResNet-50).

    Example:
        >>> backbone = ResNetBackbone(depth=50)
        >>> c3, c4, c5 = backbone(keras.ops.zeros((1, 64, 64, 3)))
    """

    def __init__(
        self,
        depth=50,
        groups=1,
        base_width=64,
        base_channels=64,
        stage_with_dcn=(False, False, False, False),
        dcn=None,
        frozen_stages=1,
        norm_eval=True,
        prefix="backbone",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if depth not in STAGE_BLOCKS:
            raise ValueError(f"ResNet depth must be one of {sorted(STAGE_BLOCKS)}, got {depth}")
        if any(stage_with_dcn) and dcn is None:
            dcn = {"modulated": False, "deform_groups": 1}
        self.depth = depth
        self.groups = groups
        self.base_width = base_width
        self.base_channels = base_channels
        self.stage_with_dcn = tuple(bool(s) for s in stage_with_dcn)
        self.dcn = dcn
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.prefix = prefix

        block_kind, blocks = STAGE_BLOCKS[depth]
        self.stem = self.build_stem(prefix)
        channels = self.stem_channels
        self.stages = []
        for i, num_blocks in enumerate(blocks):
            planes = base_channels * 2**i
            stage = []
            for b in range(num_blocks):
                stage.append(
                    self.build_block(
                        block_kind,
                        in_channels=channels,
                        planes=planes,
                        stride=(1 if i == 0 else 2) if b == 0 else 1,
                        first=b == 0,
                        dcn=dcn if self.stage_with_dcn[i] else None,
                        prefix=f"{prefix}.layer{i + 1}.{b}",
                    )
                )
                channels = planes * (4 if block_kind == "bottleneck" else 1)
            self.stages.append(stage)
        self.out_channels = [base_channels * 2**i * (4 if block_kind == "bottleneck" else 1) for i in range(1, 4)]
        self._freeze()

    @property
    def stem_channels(self):
        return self.base_channels

    def build_stem(self, prefix):
        """7x7/2 conv, BN, ReLU (the 3x3/2 max-pool is applied in ``call``)."""
        return [
            PaddedConv2D(self.base_channels, 7, pad=3, strides=2, use_bias=False, name=layer_name(f"{prefix}.conv1"),
                         dtype=self.dtype_policy),
            BatchNorm(self.norm_eval, name=layer_name(f"{prefix}.bn1"), dtype=self.dtype_policy),
        ]

    def build_block(self, kind, in_channels, planes, stride, first, dcn, prefix):
        del first  # ResNet blocks find their shortcut from the shapes.
        if kind == "basic":
            if dcn is not None:
                raise ValueError("DCN is only supported in Bottleneck blocks (depth >= 50)")
            return BasicBlock(in_channels, planes, stride, frozen_stats=self.norm_eval, prefix=prefix,
                              name=layer_name(prefix), dtype=self.dtype_policy)
        return Bottleneck(
            in_channels,
            planes,
            stride,
            groups=self.groups,
            base_width=self.base_width,
            base_channels=self.base_channels,
            frozen_stats=self.norm_eval,
            dcn=dcn,
            prefix=prefix,
            name=layer_name(prefix),
            dtype=self.dtype_policy,
        )

    def _freeze(self):
        if self.frozen_stages >= 0:
            for layer in self.stem:
                layer.trainable = False
        for stage in self.stages[: max(self.frozen_stages, 0)]:
            for block in stage:
                block.trainable = False

    def conv_norm_pairs(self):
        """Every ``(conv, BatchNorm)`` pair of the stem and the blocks (for BN folding)."""
        pairs = list(zip(self.stem[0::2], self.stem[1::2]))
        for stage in self.stages:
            for block in stage:
                pairs.extend(block.conv_norm_pairs())
        return pairs

    def run_stem(self, x, training):
        for layer in self.stem:
            x = layer(x, training=training) if isinstance(layer, BatchNorm) else layer(x)
            if isinstance(layer, BatchNorm):
                x = ops.relu(x)
        return x

    def call(self, images, training=None):
        x = self.run_stem(images, training)
        # Max-pool 3x3/2 pad 1: inputs are post-ReLU (>= 0), so zero padding equals -inf padding.
        x = ops.max_pool(ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]]), 3, strides=2, padding="valid")
        outputs = []
        for stage in self.stages:
            for block in stage:
                x = block(x, training=training)
            outputs.append(x)
        return outputs[1:]

    def get_config(self):
        return {
            **super().get_config(),
            "depth": self.depth,
            "groups": self.groups,
            "base_width": self.base_width,
            "base_channels": self.base_channels,
            "stage_with_dcn": list(self.stage_with_dcn),
            "dcn": self.dcn,
            "frozen_stages": self.frozen_stages,
            "norm_eval": self.norm_eval,
            "prefix": self.prefix,
        }
