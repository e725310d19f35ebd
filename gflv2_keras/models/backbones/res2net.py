"""Res2Net v1d backbone (``Res2Net-101 26w x 4s``) in the official MMDetection layout (``mmdet/models/backbones/res2net.py``).

* Input: normalised float images ``[B, H, W, 3]`` (NHWC).
* Output: ``[C3, C4, C5]`` (strides 8, 16, 32) with ``8, 16, 32 x base_channels`` channels
  (512, 1024, 2048 officially). Every level has ``ceil(previous / 2)`` rows, as in PyTorch.
* Differences from ResNet: a deep 3-conv stem (``stem.0..7``), ``Bottle2neck`` blocks
  (``convs.i`` / ``bns.i`` instead of ``conv2`` / ``bn2``), and ``avg_down`` shortcuts
  (``downsample.0`` is a parameter-free AvgPool, so the conv/BN are ``downsample.1`` / ``.2``).
* Layers are named after the official module path (``backbone.layer3.0.convs.1``) by the naming
  rule of ``gflv2_keras.layers.naming``.
"""

import keras
from keras import ops

from gflv2_keras.layers.naming import layer_name
from gflv2_keras.layers.norm import BatchNorm
from gflv2_keras.layers.padded_conv import PaddedConv2D
from gflv2_keras.models.backbones.resnet import ResNetBackbone, _Block, make_conv

STAGE_TYPES = ("stage", "normal")


@keras.saving.register_keras_serializable(package="gflv2_keras")
class Bottle2neck(_Block):
    """Res2Net bottleneck: 1x1 → ``scales`` hierarchical 3x3 branches → 1x1 x4, plus shortcut.

    ``w = floor(planes * base_width / base_channels)`` (the official formula; 26, 52, 104, 208 for
    ``base_width=26, base_channels=64``). ``conv1`` gives ``scales * w`` channels, split into
    ``spx[0..scales-1]`` of ``w`` channels. Each ``convs.i`` is 3x3 with the block stride (DCN in
    DCN stages), followed by ``bns.i`` and ReLU.

    * ``stage_type="stage"`` (first block of a layer): ``out_i = convs[i](spx[i])``; the last
      chunk is ``AvgPool2d(3, stride, pad 1, count_include_pad=True)`` when ``stride != 1``,
      unchanged otherwise.
    * ``stage_type="normal"``: ``sp = convs[0](spx[0])``, ``sp = convs[i](sp + spx[i])``; the
      last chunk is passed unchanged.

    Then ``relu(bn3(conv3(concat(out_0..out_{scales-2}, last))) + shortcut(x))``. The shortcut
    (when ``stride != 1`` or the channels change) is ``downsample.0`` AvgPool(``stride``,
    ceil_mode, count_include_pad=False), ``downsample.1`` 1x1 conv (stride 1), ``downsample.2``
    BN.

    Call: ``x [B, H, W, in_channels]`` → ``[B, ceil(H/stride), ceil(W/stride), 4 * planes]``.
    """

    expansion = 4

    def __init__(
        self,
        in_channels,
        planes,
        stride=1,
        scales=4,
        base_width=26,
        base_channels=64,
        stage_type="normal",
        frozen_stats=True,
        dcn=None,
        prefix="",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if scales < 2:
            raise ValueError(f"Res2Net needs scales >= 2 (scales=1 is ResNet), got {scales}")
        if stage_type not in STAGE_TYPES:
            raise ValueError(f"stage_type must be one of {STAGE_TYPES}, got {stage_type!r}")
        if stride not in (1, 2):
            # The AvgPool equivalences below (docs/parity.md, Padding) are only exact for strides 1 and 2.
            raise ValueError(f"Bottle2neck supports stride 1 or 2, got {stride}")
        self.in_channels = int(in_channels)
        self.planes = int(planes)
        self.stride = int(stride)
        self.scales = int(scales)
        self.base_width = base_width
        self.base_channels = int(base_channels)
        self.stage_type = stage_type
        self.frozen_stats = bool(frozen_stats)
        self.dcn = dcn
        self.prefix = prefix
        self.width = int(planes * base_width // base_channels)
        if self.width < 1:
            raise ValueError(f"Res2Net branch width floor({planes} * {base_width} / {base_channels}) is 0")

        self.conv1 = make_conv(self.width * scales, 1, f"{prefix}.conv1", dtype=self.dtype_policy)
        self.bn1 = BatchNorm(frozen_stats, name=layer_name(f"{prefix}.bn1"), dtype=self.dtype_policy)
        self.convs = [
            make_conv(self.width, 3, f"{prefix}.convs.{i}", strides=stride, dcn=dcn, dtype=self.dtype_policy)
            for i in range(scales - 1)
        ]
        self.bns = [
            BatchNorm(frozen_stats, name=layer_name(f"{prefix}.bns.{i}"), dtype=self.dtype_policy)
            for i in range(scales - 1)
        ]
        self.conv3 = make_conv(planes * self.expansion, 1, f"{prefix}.conv3", dtype=self.dtype_policy)
        self.bn3 = BatchNorm(frozen_stats, name=layer_name(f"{prefix}.bn3"), dtype=self.dtype_policy)
        self.build_shortcut(in_channels, planes * self.expansion, stride, frozen_stats, prefix)

    def build_shortcut(self, in_channels, out_channels, stride, frozen_stats, prefix):
        """avg_down shortcut; ``downsample.0`` (the pool) has no weights, hence no layer."""
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = [
                PaddedConv2D(out_channels, 1, pad=0, strides=1, use_bias=False,
                             name=layer_name(f"{prefix}.downsample.1"), dtype=self.dtype_policy),
                BatchNorm(frozen_stats, name=layer_name(f"{prefix}.downsample.2"), dtype=self.dtype_policy),
            ]

    def conv_norm_pairs(self):
        """``(conv, norm)`` pairs (``conv1``/``bn1``, ``convs``/``bns``, ``conv3``/``bn3``, shortcut)."""
        pairs = [(self.conv1, self.bn1), *zip(self.convs, self.bns), (self.conv3, self.bn3)]
        return pairs + ([tuple(self.downsample)] if self.downsample is not None else [])

    def shortcut(self, x, training):
        if self.downsample is not None and self.stride == 2:
            # AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False): TF 'same' pads one
            # trailing row/column on odd sizes and leaves it out of the divisor (docs/parity.md, Padding).
            x = ops.average_pool(x, 2, strides=2, padding="same")
        return super().shortcut(x, training)

    def call(self, x, training=None):
        out = ops.relu(self.bn1(self.conv1(x), training=training))
        spx = ops.split(out, self.scales, axis=-1)
        outs = []
        sp = None
        for i, (conv, norm) in enumerate(zip(self.convs, self.bns)):
            sp = spx[i] if (i == 0 or self.stage_type == "stage") else sp + spx[i]
            sp = ops.relu(norm(conv(sp), training=training))
            outs.append(sp)
        last = spx[-1]
        if self.stage_type == "stage" and self.stride != 1:
            # AvgPool2d(3, stride, padding=1) counts the zero padding: the divisor is always 9.
            last = ops.pad(last, [[0, 0], [1, 1], [1, 1], [0, 0]])
            last = ops.average_pool(last, 3, strides=self.stride, padding="valid")
        outs.append(last)
        out = self.bn3(self.conv3(ops.concatenate(outs, axis=-1)), training=training)
        return ops.relu(out + self.shortcut(x, training))

    def get_config(self):
        return {
            **super().get_config(),
            "in_channels": self.in_channels,
            "planes": self.planes,
            "stride": self.stride,
            "scales": self.scales,
            "base_width": self.base_width,
            "base_channels": self.base_channels,
            "stage_type": self.stage_type,
            "frozen_stats": self.frozen_stats,
            "dcn": self.dcn,
            "prefix": self.prefix,
        }


@keras.saving.register_keras_serializable(package="gflv2_keras")
class Res2NetBackbone(ResNetBackbone):
    """Res2Net v1d (deep stem, avg_down, 'pytorch' style) as MMDetection's ``Res2Net``.

    Args:
        depth: 50, 101 or 152 (Bottle2neck counts as ResNet).
        scales: number of branches per block (4 for ``26w x 4s``).
        base_width: branch width at ``base_channels`` planes (26 for ``26w``).
        base_channels: planes of stage 1 (64 officially). The deep stem has
            ``base_channels // 2, base_channels // 2, base_channels`` channels.
        stage_with_dcn, dcn, frozen_stages, norm_eval, prefix: as ``ResNetBackbone``
            (``frozen_stages=1`` freezes ``stem.*`` and ``layer1``; ``dcn`` turns every
            ``convs.i`` of the selected stages into a deformable conv).

    Call:
        ``images [B, H, W, 3]`` float → ``[C3, C4, C5]`` with 512, 1024, 2048 channels
        (for ``base_channels=64``) and spatial sizes ``ceil(H / 8)``, ``ceil(H / 16)``,
        ``ceil(H / 32)`` (ceil applied at each halving).

    Example:
        >>> backbone = Res2NetBackbone(depth=50, base_channels=8, base_width=4)
        >>> c3, c4, c5 = backbone(keras.ops.zeros((1, 64, 64, 3)))  # 32, 64, 128 channels
    """

    def __init__(
        self,
        depth=101,
        scales=4,
        base_width=26,
        base_channels=64,
        stage_with_dcn=(False, False, False, False),
        dcn=None,
        frozen_stages=1,
        norm_eval=True,
        prefix="backbone",
        **kwargs,
    ):
        if depth not in (50, 101, 152):
            raise ValueError(f"Res2Net depth must be one of [50, 101, 152], got {depth}")
        # build_block runs inside ResNetBackbone.__init__ and needs the scale count.
        self._scales = int(scales)
        super().__init__(
            depth=depth,
            groups=1,
            base_width=base_width,
            base_channels=base_channels,
            stage_with_dcn=stage_with_dcn,
            dcn=dcn,
            frozen_stages=frozen_stages,
            norm_eval=norm_eval,
            prefix=prefix,
            **kwargs,
        )

    @property
    def scales(self):
        return self._scales

    def build_stem(self, prefix):
        """Deep stem: 3x3/2, 3x3, 3x3 convs (each BN + ReLU in ``run_stem``) at ``stem.0/3/6``."""
        half = self.base_channels // 2
        stem = []
        for index, (filters, stride) in enumerate(((half, 2), (half, 1), (self.base_channels, 1))):
            conv, norm = (layer_name(f"{prefix}.stem.{3 * index + offset}") for offset in (0, 1))
            stem.append(PaddedConv2D(filters, 3, pad=1, strides=stride, use_bias=False, name=conv,
                                     dtype=self.dtype_policy))
            stem.append(BatchNorm(self.norm_eval, name=norm, dtype=self.dtype_policy))
        return stem

    def build_block(self, kind, in_channels, planes, stride, first, dcn, prefix):
        del kind  # always a Bottle2neck
        return Bottle2neck(
            in_channels,
            planes,
            stride,
            scales=self._scales,
            base_width=self.base_width,
            base_channels=self.base_channels,
            stage_type="stage" if first else "normal",
            frozen_stats=self.norm_eval,
            dcn=dcn,
            prefix=prefix,
            name=layer_name(prefix),
            dtype=self.dtype_policy,
        )

    def get_config(self):
        config = super().get_config()
        config.pop("groups")
        config["scales"] = self._scales
        return config
