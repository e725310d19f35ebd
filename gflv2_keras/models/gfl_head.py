"""The GFL head: GFLv2 (with the Distribution-Guided Quality Predictor) or GFLv1.

Per level (shared weights, per-level learnable ``Scale``):

* ``cls_convs``/``reg_convs``: ``stacked_convs`` x (3x3 conv without bias, GroupNorm 32, ReLU).
* ``gfl_cls``: 3x3 conv → ``cls_channels`` logits. GFLv2 keeps the official redundant extra
  background channel (81 for COCO, docs/parity.md) so official weights load; it is never predicted.
* ``gfl_reg``: 3x3 conv → ``4 * (reg_max + 1)`` logits, side-major ``(left, top, right, bottom) x bins``,
  multiplied by the level's ``Scale``.
* GFLv2 quality (DGQP, ``GFocalHead.forward_single``): per side ``softmax`` of the scaled logits, its top-4
  probabilities and their mean (20 values) → 1x1 conv 20→64, ReLU, 1x1 conv 64→1, sigmoid.
  The joint score is ``sigmoid(cls_logits) * quality``. GFLv1: ``sigmoid(cls_logits)``.

Outputs are flattened level by level (P3..P7), row-major within a level, as the official code.
"""

import math

import keras
from keras import ops

from gflv2_keras.layers.naming import layer_name
from gflv2_keras.layers.norm import group_norm
from gflv2_keras.layers.padded_conv import PaddedConv2D
from gflv2_keras.layers.scale import Scale


@keras.saving.register_keras_serializable(package="gflv2_keras")
class GFLHead(keras.layers.Layer):
    """GFLv2 / GFLv1 dense head.

    Args:
        num_classes: number of object classes (80 for COCO).
        feat_channels: tower width (256).
        stacked_convs: convs per tower (4).
        reg_max: largest distance bin; ``reg_max + 1`` bins per side (16).
        use_dgqp: True for GFLv2 (quality branch and an extra background class channel),
            False for GFLv1 (``num_classes`` channels, no quality branch).
        reg_topk, reg_channels, add_mean: DGQP statistics (4, 64, True).
        num_levels: pyramid levels (5).
        norm_groups: GroupNorm groups (32).
        prior_prob: initial classification probability (bias ``-log((1 - p) / p)``).
        prefix: official module path (``"bbox_head"``); layers are named from it by the rule of
            ``gflv2_keras.layers.naming`` (``bbox_head-cls_convs-0-conv``).

    Call:
        ``[P3..P7]`` NHWC → ``(confidence [B, N, cls_channels], box_logits [B, N, 4 * (reg_max + 1)])``
        where ``confidence`` holds per-class joint probabilities (classification times DGQP
        localisation quality for GFLv2, plain sigmoid for GFLv1) and ``N`` is the total number
        of points.

    Example:
        >>> head = GFLHead(num_classes=80)
        >>> confidence, box_logits = head([keras.ops.zeros((1, s, s, 256)) for s in (8, 4, 2, 1, 1)])
    """

    def __init__(
        self,
        num_classes=80,
        feat_channels=256,
        stacked_convs=4,
        reg_max=16,
        use_dgqp=True,
        reg_topk=4,
        reg_channels=64,
        add_mean=True,
        num_levels=5,
        norm_groups=32,
        prior_prob=0.01,
        prefix="bbox_head",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.feat_channels = feat_channels
        self.stacked_convs = stacked_convs
        self.reg_max = reg_max
        self.use_dgqp = use_dgqp
        self.reg_topk = reg_topk
        self.reg_channels = reg_channels
        self.add_mean = add_mean
        self.num_levels = num_levels
        self.norm_groups = norm_groups
        self.prior_prob = prior_prob
        self.prefix = prefix
        self.cls_channels = num_classes + 1 if use_dgqp else num_classes

        normal = keras.initializers.RandomNormal(stddev=0.01)
        self.cls_convs = self._tower("cls_convs", normal)
        self.reg_convs = self._tower("reg_convs", normal)
        prior_bias = -math.log((1.0 - prior_prob) / prior_prob)
        self.gfl_cls = PaddedConv2D(
            self.cls_channels,
            3,
            kernel_initializer=normal,
            bias_initializer=keras.initializers.Constant(prior_bias),
            name=layer_name(f"{prefix}.gfl_cls"),
            dtype=self.dtype_policy,
        )
        self.gfl_reg = PaddedConv2D(4 * (reg_max + 1), 3, kernel_initializer=normal,
                                    name=layer_name(f"{prefix}.gfl_reg"), dtype=self.dtype_policy)
        self.scales = [
            Scale(1.0, name=layer_name(f"{prefix}.scales.{i}"), dtype=self.dtype_policy) for i in range(num_levels)
        ]
        if use_dgqp:
            self.reg_conf = [
                PaddedConv2D(reg_channels, 1, kernel_initializer=normal, name=layer_name(f"{prefix}.reg_conf.0"),
                             dtype=self.dtype_policy),
                PaddedConv2D(1, 1, kernel_initializer=normal, name=layer_name(f"{prefix}.reg_conf.2"),
                             dtype=self.dtype_policy),
            ]

    def _tower(self, kind, initializer):
        return [
            (
                PaddedConv2D(
                    self.feat_channels,
                    3,
                    use_bias=False,
                    kernel_initializer=initializer,
                    name=layer_name(f"{self.prefix}.{kind}.{i}.conv"),
                    dtype=self.dtype_policy,
                ),
                group_norm(layer_name(f"{self.prefix}.{kind}.{i}.gn"), self.norm_groups, dtype=self.dtype_policy),
            )
            for i in range(self.stacked_convs)
        ]

    def _run_tower(self, tower, x):
        # ``norm_relu`` may be swapped for a fused kernel while in-process inference is traced
        # (``models.fast_inference.fused_group_norms``); the layers themselves stay portable.
        norm_relu = getattr(self, "norm_relu", None) or _norm_relu
        for conv, norm in tower:
            x = norm_relu(norm, conv(x))
        return x

    def level_forward(self, feature, level):
        """One level: ``[B, H, W, C]`` → ``(confidence [B, H, W, cls_channels], box_logits [B, H, W, 4(R+1)])``.

        Both outputs are float32 whatever the layers' compute dtype (mixed precision): the
        score math (sigmoid, DGQP softmax / top-k, their product) runs in float32, as do ATSS
        and the losses that consume the outputs. A float64 head keeps float64 throughout (the
        reference runs of the gradient-precision tests).
        """
        cls_feat = self._run_tower(self.cls_convs, feature)
        reg_feat = self._run_tower(self.reg_convs, feature)
        box_logits = ops.cast(self.scales[level](self.gfl_reg(reg_feat)), self.score_dtype)
        confidence = ops.sigmoid(ops.cast(self.gfl_cls(cls_feat), self.score_dtype))
        if self.use_dgqp:
            confidence = confidence * self.quality(box_logits)
        return confidence, box_logits

    def quality(self, box_logits):
        """DGQP: ``[B, H, W, 4(R+1)]`` scaled logits → ``[B, H, W, 1]`` localisation quality (``score_dtype``).

        The softmax / top-k statistics are float32 (float64 in a float64 head); only the two
        small 1x1 convolutions run in the layers' compute dtype.
        """
        box_logits = ops.cast(box_logits, self.score_dtype)
        shape = ops.shape(box_logits)
        probs = ops.softmax(ops.reshape(box_logits, (shape[0], shape[1], shape[2], 4, self.reg_max + 1)), axis=-1)
        top, _ = ops.top_k(probs, self.reg_topk, sorted=True)
        stats = ops.concatenate([top, ops.mean(top, axis=-1, keepdims=True)], axis=-1) if self.add_mean else top
        stats = ops.reshape(stats, (shape[0], shape[1], shape[2], 4 * (self.reg_topk + int(self.add_mean))))
        hidden = ops.relu(self.reg_conf[0](stats))
        return ops.sigmoid(ops.cast(self.reg_conf[1](hidden), self.score_dtype))

    @property
    def score_dtype(self):
        """Dtype of the outputs and the score math: float32, or float64 for a float64 head."""
        return "float64" if self.compute_dtype == "float64" else "float32"

    def call(self, features):
        confidence, box_logits = [], []
        for level, feature in enumerate(features):
            c, b = self.level_forward(feature, level)
            confidence.append(_flatten_points(c))
            box_logits.append(_flatten_points(b))
        return ops.concatenate(confidence, axis=1), ops.concatenate(box_logits, axis=1)

    def get_config(self):
        return {
            **super().get_config(),
            "num_classes": self.num_classes,
            "feat_channels": self.feat_channels,
            "stacked_convs": self.stacked_convs,
            "reg_max": self.reg_max,
            "use_dgqp": self.use_dgqp,
            "reg_topk": self.reg_topk,
            "reg_channels": self.reg_channels,
            "add_mean": self.add_mean,
            "num_levels": self.num_levels,
            "norm_groups": self.norm_groups,
            "prior_prob": self.prior_prob,
            "prefix": self.prefix,
        }


def _norm_relu(norm, x):
    return ops.relu(norm(x))


def _flatten_points(x):
    """``[B, H, W, C]`` → ``[B, H * W, C]`` (row-major points)."""
    shape = ops.shape(x)
    return ops.reshape(x, (shape[0], shape[1] * shape[2], x.shape[-1]))
