"""An independent PyTorch implementation of the official GFocalV2 forward pass, for parity tests.

Written from the official code (``mmdet/models/backbones/{resnet,resnext,res2net}.py``,
``necks/fpn.py``, ``dense_heads/gfocal_head.py``, mmcv ``ops/deform_conv.py``; ``docs/parity.md``) in
plain ``torch.nn``, without MMDetection/mmcv/torchvision and without looking at the Keras code.
Module attribute names are the official ones, so ``model.state_dict()`` has exactly the keys
and shapes of an official checkpoint (``backbone.layer1.0.conv1.weight``,
``bbox_head.scales.0.scale`` 0-dim, ``bbox_head.integral.project``, BN ``num_batches_tracked``,
DCN ``conv2.conv_offset.*``).

Covered: ResNet-18/34/50/101 and ResNeXt ('pytorch' style: the stride sits on the 3x3 conv),
Res2Net v1d (deep stem, avg-pool shortcut, 'stage'/'normal' Bottle2neck), DCNv1/DCNv2 in any
stage (mmcv ``DeformConv2dPack`` / ``ModulatedDeformConv2dPack``), FPN (start level 1, extra
convs on the P5 output), the GFL head with DGQP and the redundant extra class channel, and the
test-time post-processing of ``GFocalHead._get_bboxes_single`` (:func:`postprocess`).

Everything runs in whatever dtype the module has; the tests use float64 so that the reference
is exact to ~1e-12 and the measured difference is the Keras float32 error alone. (The official
head casts ``bbox_pred`` with ``.float()``; here the module's dtype is kept.)

Configs use the same plain data as ``GFLV2Detector(**config)``:
``{"backbone": {"type": "resnet"|"resnext"|"res2net", "depth", "base_channels", "groups",
"base_width", "scales", "stage_with_dcn", "dcn": {"modulated", "deform_groups"}},
"num_classes", "fpn_channels", "head": {"feat_channels", "stacked_convs", "norm_groups",
"reg_max", "reg_topk", "reg_channels", "add_mean", "use_dgqp"}}``.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

STRIDES = (8, 16, 32, 64, 128)
STAGE_BLOCKS = {18: (3, (2, 2, 2, 2)), 34: (3, (3, 4, 6, 3)), 50: (1, (3, 4, 6, 3)), 101: (1, (3, 4, 23, 3))}
# first item: 3 = BasicBlock (two 3x3 convs), 1 = Bottleneck


# ===================================================================================== DCN
class DeformConv2dPack(nn.Module):
    """mmcv ``DeformConv2dPack`` (DCNv1, ``modulated=False``) / ``ModulatedDeformConv2dPack``.

    Parameters: ``weight`` (out, in/groups, k, k), optional ``bias`` (DCNv2 only in mmcv; here
    off unless asked), and ``conv_offset``: an ungrouped ``nn.Conv2d(in, G*{2|3}*k*k, k)`` with
    the main conv's stride/padding, with bias.

    Offsets (mmcv ``deform_conv_cuda_kernel.cuh``): per deform group ``g`` and tap ``t = i*k + j``, channel ``(g*k*k + t)*2``
    is dy and ``+1`` is dx. DCNv2 (mmcv ``ModulatedDeformConv2dPack``) splits its 27 channels into o1, o2, m (9 each),
    reads ``cat(o1, o2)`` with that same interleaved layout and multiplies tap ``t`` by
    ``sigmoid(m)[t]``. Sampling: tap (i, j) of output (ho, wo) reads
    ``y = ho*stride - pad + i + dy``, ``x = wo*stride - pad + j + dx`` bilinearly, every corner
    outside the image counting as 0 (the mmcv rule; ``grid_sample(align_corners=True,
    padding_mode="zeros")`` implements exactly that).
    """

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding=1, groups=1,
                 deform_groups=1, modulated=False, bias=False):
        super().__init__()
        self.k, self.stride, self.padding = kernel_size, stride, padding
        self.groups, self.deform_groups, self.modulated = groups, deform_groups, modulated
        self.weight = nn.Parameter(torch.zeros(out_channels, in_channels // groups, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        per_tap = 3 if modulated else 2
        self.conv_offset = nn.Conv2d(in_channels, deform_groups * per_tap * kernel_size**2, kernel_size,
                                     stride=stride, padding=padding, bias=True)

    def forward(self, x):
        raw = self.conv_offset(x)
        taps, groups = self.k * self.k, self.deform_groups
        if self.modulated:
            offset, mask = raw[:, : 2 * groups * taps], torch.sigmoid(raw[:, 2 * groups * taps:])
        else:
            offset, mask = raw, None
        columns = sample_taps(x, offset, mask, self.k, self.stride, self.padding, groups)  # (B, C, K, Ho, Wo)
        batch, channels, _, out_h, out_w = columns.shape
        g = self.groups
        weight = self.weight.reshape(g, -1, channels // g, taps)
        out = torch.einsum("bgckhw,gock->bgohw", columns.reshape(batch, g, channels // g, taps, out_h, out_w), weight)
        out = out.reshape(batch, -1, out_h, out_w)
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)


def sample_taps(x, offset, mask, k, stride, padding, deform_groups):
    """Bilinearly sampled input at every deformed tap: ``(B, C, H, W)`` → ``(B, C, k*k, Ho, Wo)``."""
    batch, channels, height, width = x.shape
    out_h, out_w = offset.shape[-2:]
    # grid_sample normalises by (size - 1); a size-1 axis gets one extra zero row/column, which
    # changes nothing because out-of-image corners count as zero anyway.
    if height == 1 or width == 1:
        x = F.pad(x, (0, int(width == 1), 0, int(height == 1)))
    h_norm, w_norm = x.shape[2] - 1, x.shape[3] - 1
    base_y = (torch.arange(out_h, dtype=x.dtype) * stride - padding).view(1, -1, 1)
    base_x = (torch.arange(out_w, dtype=x.dtype) * stride - padding).view(1, 1, -1)
    cpg = channels // deform_groups
    columns = []
    for t in range(k * k):
        i, j = divmod(t, k)
        per_group = []
        for g in range(deform_groups):
            c = (g * k * k + t) * 2
            y = base_y + i + offset[:, c]
            xx = base_x + j + offset[:, c + 1]
            grid = torch.stack([2 * xx / w_norm - 1, 2 * y / h_norm - 1], dim=-1)
            sampled = F.grid_sample(x[:, g * cpg:(g + 1) * cpg], grid, mode="bilinear", padding_mode="zeros",
                                    align_corners=True)
            if mask is not None:
                sampled = sampled * mask[:, g * k * k + t].unsqueeze(1)
            per_group.append(sampled)
        columns.append(torch.cat(per_group, dim=1))
    return torch.stack(columns, dim=2)


def naive_deform_conv(x, offset, mask, weight, stride, padding, groups=1):
    """Scalar-loop DCN straight from the mmcv CUDA kernel's formulas (tiny inputs only).

    Used to check :class:`DeformConv2dPack`'s ``grid_sample`` path; one deform group.
    """
    x, offset, weight = (np.asarray(a, np.float64) for a in (x, offset, weight))
    mask = None if mask is None else np.asarray(mask, np.float64)
    batch, channels, height, width = x.shape
    out_c, cpg, k, _ = weight.shape
    out_h, out_w = offset.shape[2:]
    out = np.zeros((batch, out_c, out_h, out_w))

    def bilinear(img, y, xx):
        if y <= -1 or y >= height or xx <= -1 or xx >= width:
            return 0.0
        y0, x0 = math.floor(y), math.floor(xx)
        ly, lx = y - y0, xx - x0
        value = 0.0
        for yy, wy in ((y0, 1 - ly), (y0 + 1, ly)):
            for xc, wx in ((x0, 1 - lx), (x0 + 1, lx)):
                if 0 <= yy < height and 0 <= xc < width:
                    value += wy * wx * img[yy, xc]
        return value

    for b in range(batch):
        for ho in range(out_h):
            for wo in range(out_w):
                cols = np.zeros((channels, k * k))
                for t in range(k * k):
                    i, j = divmod(t, k)
                    y = ho * stride - padding + i + offset[b, 2 * t, ho, wo]
                    xx = wo * stride - padding + j + offset[b, 2 * t + 1, ho, wo]
                    m = 1.0 if mask is None else mask[b, t, ho, wo]
                    for c in range(channels):
                        cols[c, t] = m * bilinear(x[b, c], y, xx)
                for o in range(out_c):
                    g = o // (out_c // groups)
                    out[b, o, ho, wo] = np.sum(weight[o].reshape(cpg, k * k) * cols[g * cpg:(g + 1) * cpg])
    return out


def make_conv3x3(in_channels, out_channels, stride, groups, dcn):
    """The block's 3x3 conv: plain ``nn.Conv2d`` or a deformable one in DCN stages."""
    if dcn is None:
        return nn.Conv2d(in_channels, out_channels, 3, stride, 1, groups=groups, bias=False)
    return DeformConv2dPack(in_channels, out_channels, 3, stride, 1, groups=groups,
                            deform_groups=int(dcn.get("deform_groups", 1)), modulated=bool(dcn.get("modulated", False)))


# ===================================================================================== backbones
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride, dcn=None, **_):
        super().__init__()
        if dcn is not None:
            raise ValueError("the official code only puts DCN in Bottleneck blocks")
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class Bottleneck(nn.Module):
    """ResNet/ResNeXt bottleneck, 'pytorch' style; ``width = floor(planes * base_width / base_channels) * groups``
    for ResNeXt (mmdet ``ResNeXt``), ``planes`` for ResNet."""

    expansion = 4

    def __init__(self, inplanes, planes, stride, groups=1, base_width=64, base_channels=64, dcn=None, **_):
        super().__init__()
        width = planes if groups == 1 else math.floor(planes * base_width / base_channels) * groups
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = make_conv3x3(width, width, stride, groups, dcn)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride, bias=False),
                                            nn.BatchNorm2d(planes * 4))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class Bottle2neck(nn.Module):
    """Res2Net v1d block (``mmdet/models/backbones/res2net.py Bottle2neck``): ``convs.0..scales-2`` / ``bns.*`` replace conv2/bn2."""

    expansion = 4

    def __init__(self, inplanes, planes, stride, scales=4, base_width=26, base_channels=64, stage_type="normal",
                 dcn=None, **_):
        super().__init__()
        self.width = width = math.floor(planes * base_width / base_channels)
        self.scales, self.stage_type, self.stride = scales, stage_type, stride
        self.conv1 = nn.Conv2d(inplanes, width * scales, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width * scales)
        self.convs = nn.ModuleList([make_conv3x3(width, width, stride, 1, dcn) for _ in range(scales - 1)])
        self.bns = nn.ModuleList([nn.BatchNorm2d(width) for _ in range(scales - 1)])
        self.conv3 = nn.Conv2d(width * scales, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = None
        if stride != 1 or inplanes != planes * 4:
            self.downsample = nn.Sequential(
                nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False),
                nn.Conv2d(inplanes, planes * 4, 1, 1, bias=False),
                nn.BatchNorm2d(planes * 4),
            )

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        spx = torch.split(out, self.width, dim=1)
        outs, sp = [], None
        for i in range(self.scales - 1):
            sp = spx[i] if (i == 0 or self.stage_type == "stage") else sp + spx[i]
            sp = F.relu(self.bns[i](self.convs[i](sp)))
            outs.append(sp)
        last = spx[-1]
        if self.stage_type == "stage" and self.stride != 1:
            last = F.avg_pool2d(last, 3, self.stride, 1)  # count_include_pad=True: divisor 9
        out = self.bn3(self.conv3(torch.cat(outs + [last], dim=1)))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet(nn.Module):
    """ResNet/ResNeXt/Res2Net backbone returning ``[C3, C4, C5]`` (NCHW)."""

    def __init__(self, type="resnet", depth=50, base_channels=64, groups=1, base_width=None, scales=4,
                 stage_with_dcn=(False, False, False, False), dcn=None, **_ignored):
        super().__init__()
        kind, blocks = STAGE_BLOCKS[depth]
        self.res2net = type == "res2net"
        if self.res2net:
            block = Bottle2neck
            base_width = 26 if base_width is None else base_width
            half = base_channels // 2
            self.stem = nn.Sequential(
                nn.Conv2d(3, half, 3, 2, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
                nn.Conv2d(half, half, 3, 1, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU(),
                nn.Conv2d(half, base_channels, 3, 1, 1, bias=False), nn.BatchNorm2d(base_channels), nn.ReLU(),
            )
        else:
            block = BasicBlock if kind == 3 else Bottleneck
            base_width = 64 if base_width is None else base_width
            self.conv1 = nn.Conv2d(3, base_channels, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(base_channels)
        if any(stage_with_dcn) and dcn is None:
            dcn = {"modulated": False, "deform_groups": 1}
        inplanes = base_channels
        for i, count in enumerate(blocks):
            planes = base_channels * 2**i
            layer = []
            for b in range(count):
                layer.append(block(inplanes, planes, stride=(1 if i == 0 else 2) if b == 0 else 1, groups=groups,
                                   base_width=base_width, base_channels=base_channels, scales=scales,
                                   stage_type="stage" if b == 0 else "normal",
                                   dcn=dcn if stage_with_dcn[i] else None))
                inplanes = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*layer))

    def forward(self, x):
        x = self.stem(x) if self.res2net else F.relu(self.bn1(self.conv1(x)))
        x = F.max_pool2d(x, 3, 2, 1)
        outs = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            outs.append(x)
        return outs[1:]


# ===================================================================================== neck, head
class ConvModule(nn.Module):
    """mmcv ConvModule naming: ``conv`` then optional ``gn`` and ReLU."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, norm_groups=None):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, kernel_size // 2,
                              bias=norm_groups is None)
        self.gn = nn.GroupNorm(norm_groups, out_channels) if norm_groups else None

    def forward(self, x):
        x = self.conv(x)
        return F.relu(self.gn(x)) if self.gn is not None else x


class FPN(nn.Module):
    """C3..C5 → P3..P7: laterals, nearest top-down, 3x3 outputs, P6/P7 stride-2 on P5 output / P6."""

    def __init__(self, in_channels, out_channels):
        super().__init__()
        self.lateral_convs = nn.ModuleList([ConvModule(c, out_channels, 1) for c in in_channels])
        self.fpn_convs = nn.ModuleList(
            [ConvModule(out_channels, out_channels, 3, stride=1 if i < len(in_channels) else 2)
             for i in range(len(in_channels) + 2)]
        )

    def forward(self, inputs):
        laterals = [conv(x) for conv, x in zip(self.lateral_convs, inputs)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[2:],
                                                              mode="nearest")
        outs = [self.fpn_convs[i](laterals[i]) for i in range(len(laterals))]
        for conv in self.fpn_convs[len(laterals):]:
            outs.append(conv(outs[-1]))
        return outs


class Scale(nn.Module):
    def __init__(self, value=1.0):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(value, dtype=torch.float))

    def forward(self, x):
        return x * self.scale


class Integral(nn.Module):
    def __init__(self, reg_max=16):
        super().__init__()
        self.reg_max = reg_max
        self.register_buffer("project", torch.linspace(0, reg_max, reg_max + 1))

    def forward(self, x):
        """``(..., 4*(R+1))`` logits → ``(..., 4)`` expected distances (grid units)."""
        probs = F.softmax(x.reshape(*x.shape[:-1], 4, self.reg_max + 1), dim=-1)
        return probs @ self.project.to(x.dtype)


class GFocalHead(nn.Module):
    """GFLv2 head (``GFocalHead.forward_single``). ``forward`` returns per level ``(cls_score (N, C', H, W) joint
    probability, bbox_pred (N, 4*(R+1), H, W) scaled logits)``, ``C' = num_classes + 1`` with DGQP."""

    def __init__(self, num_classes, in_channels, feat_channels=256, stacked_convs=4, norm_groups=32, reg_max=16,
                 reg_topk=4, reg_channels=64, add_mean=True, use_dgqp=True, **_ignored):
        super().__init__()
        self.reg_max, self.reg_topk, self.add_mean, self.use_dgqp = reg_max, reg_topk, add_mean, use_dgqp
        self.cls_convs = nn.ModuleList(
            [ConvModule(in_channels if i == 0 else feat_channels, feat_channels, 3, norm_groups=norm_groups)
             for i in range(stacked_convs)])
        self.reg_convs = nn.ModuleList(
            [ConvModule(in_channels if i == 0 else feat_channels, feat_channels, 3, norm_groups=norm_groups)
             for i in range(stacked_convs)])
        self.gfl_cls = nn.Conv2d(feat_channels, num_classes + 1 if use_dgqp else num_classes, 3, padding=1)
        self.gfl_reg = nn.Conv2d(feat_channels, 4 * (reg_max + 1), 3, padding=1)
        self.scales = nn.ModuleList([Scale(1.0) for _ in STRIDES])
        if use_dgqp:
            total_dim = 4 * (reg_topk + int(add_mean))
            self.reg_conf = nn.Sequential(nn.Conv2d(total_dim, reg_channels, 1), nn.ReLU(),
                                          nn.Conv2d(reg_channels, 1, 1), nn.Sigmoid())
        self.integral = Integral(reg_max)

    def forward_single(self, x, scale):
        cls_feat, reg_feat = x, x
        for conv in self.cls_convs:
            cls_feat = conv(cls_feat)
        for conv in self.reg_convs:
            reg_feat = conv(reg_feat)
        bbox_pred = scale(self.gfl_reg(reg_feat))
        cls_score = self.gfl_cls(cls_feat).sigmoid()
        if self.use_dgqp:
            n, _, h, w = bbox_pred.shape
            prob = F.softmax(bbox_pred.reshape(n, 4, self.reg_max + 1, h, w), dim=2)
            top, _ = prob.topk(self.reg_topk, dim=2)
            stat = torch.cat([top, top.mean(dim=2, keepdim=True)], dim=2) if self.add_mean else top
            cls_score = cls_score * self.reg_conf(stat.reshape(n, -1, h, w))
        return cls_score, bbox_pred

    def forward(self, feats):
        return [self.forward_single(x, s) for x, s in zip(feats, self.scales)]


class GFL(nn.Module):
    """The whole detector: ``backbone``, ``neck``, ``bbox_head`` (official top-level names)."""

    def __init__(self, backbone, num_classes=80, fpn_channels=256, head=None, **_ignored):
        super().__init__()
        self.backbone = ResNet(**backbone)
        kind, _ = STAGE_BLOCKS[backbone.get("depth", 50)]
        base = backbone.get("base_channels", 64)
        expansion = 1 if (kind == 3 and backbone.get("type") != "res2net") else 4
        self.neck = FPN([base * 2**i * expansion for i in (1, 2, 3)], fpn_channels)
        self.bbox_head = GFocalHead(num_classes, fpn_channels, **(head or {}))

    def forward(self, images):
        """``images`` (N, 3, H, W) normalised → list over P3..P7 of ``(cls_score, bbox_pred)``."""
        return self.bbox_head(self.neck(self.backbone(images)))


def flatten_outputs(level_outputs):
    """Per-level NCHW outputs → ``(scores (N, P, C'), box_logits (N, P, 4(R+1)))`` NumPy, row-major points."""
    def flat(t):
        return t.permute(0, 2, 3, 1).reshape(t.shape[0], -1, t.shape[1])

    scores = torch.cat([flat(c) for c, _ in level_outputs], dim=1)
    boxes = torch.cat([flat(b) for _, b in level_outputs], dim=1)
    return scores.detach().cpu().numpy(), boxes.detach().cpu().numpy()


# ===================================================================================== weights, files
def randomize_(model, seed=0):
    """Fill every tensor with random, non-trivial values that keep activations O(1).

    Convs: N(0, 1/fan_in); BN: gamma U(0.5, 1.2), beta N(0, 0.1), running mean N(0, 0.1), running
    var U(0.5, 2); GN affines random; scales U(0.5, 1.5); DCN offset convs non-zero (offsets of
    about a pixel, some out of the image); ``gfl_cls`` bias about -2 so that many joint scores
    pass the 0.05 threshold; box logits with a few units of spread so the distributions are
    peaked differently per side.
    """
    gen = torch.Generator().manual_seed(seed)

    def normal(t, std, mean=0.0):
        with torch.no_grad():
            t.copy_(torch.randn(t.shape, generator=gen, dtype=t.dtype) * std + mean)

    def uniform(t, low, high):
        with torch.no_grad():
            t.copy_(torch.rand(t.shape, generator=gen, dtype=t.dtype) * (high - low) + low)

    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, DeformConv2dPack)):
            fan_in = module.weight[0].numel()
            offset_conv = name.endswith("conv_offset")
            normal(module.weight, (0.25 if offset_conv else 1.0) / math.sqrt(fan_in))
            if module.bias is not None:
                normal(module.bias, 0.5 if offset_conv else 0.1)
        elif isinstance(module, nn.BatchNorm2d):
            uniform(module.weight, 0.5, 1.2)
            normal(module.bias, 0.1)
            normal(module.running_mean, 0.1)
            uniform(module.running_var, 0.5, 2.0)
            module.num_batches_tracked.fill_(int(torch.randint(1, 10_000, (1,), generator=gen)))
        elif isinstance(module, nn.GroupNorm):
            uniform(module.weight, 0.5, 1.5)
            normal(module.bias, 0.2)
        elif isinstance(module, Scale):
            uniform(module.scale, 0.5, 1.5)
    head = model.bbox_head
    normal(head.gfl_cls.bias, 0.7, mean=-2.0)
    normal(head.gfl_reg.weight, 3.0 / math.sqrt(head.gfl_reg.weight[0].numel()))
    normal(head.gfl_reg.bias, 1.0)
    return model.eval()


def build_reference(config, seed=0, dtype=torch.float64):
    """A randomised reference model for a ``GFLV2Detector`` config (eval mode, ``dtype``).

    Weights are drawn in float32 (the checkpoint dtype) and then cast, so the float64 model
    computes with exactly the values the checkpoint holds.
    """
    torch.manual_seed(seed)
    model = GFL(**config)
    randomize_(model, seed)
    return model.to(dtype).eval()


def official_meta(class_names, epoch=12):
    """A ``meta`` dict like mmcv's: plain types only (str, int, tuple)."""
    return {
        "mmdet_version": "2.6.0",
        "mmcv_version": "1.2.0",
        "config": "model = dict(type='GFL', ...)  # reference test checkpoint",
        "CLASSES": tuple(class_names),
        "epoch": epoch,
        "iter": 7330 * epoch,
        "time": "Thu Nov 26 12:00:00 2020",
    }


def save_checkpoint(model, path, meta=None, **save_kwargs):
    """Write ``{"meta": meta, "state_dict": float32 state dict}`` as ``torch.save`` does in mmcv."""
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    torch.save({"meta": meta or {}, "state_dict": state}, str(path), **save_kwargs)
    return path


# ===================================================================================== post-processing
def postprocess(level_outputs, image_shape, scale_factor, num_classes, strides=STRIDES, nms_pre=1000,
                score_thr=0.05, iou_thr=0.6, max_per_img=100):
    """Official test-time post-processing for image 0 (``GFocalHead._get_bboxes_single``), in float64 NumPy.

    Args:
        level_outputs: the model's per-level ``(cls_score, bbox_pred)``.
        image_shape: ``(h, w)`` of the resized, unpadded image (boxes are clamped to it).
        scale_factor: ``(h_scale, w_scale)``; boxes are divided by ``(w, h, w, h)`` scales.

    Returns:
        ``(boxes (n, 4) xyxy original pixels, scores (n,), labels (n,))``, sorted by score,
        detections of the extra class ``num_classes`` removed (as ``bbox2result``).
    """
    all_boxes, all_scores = [], []
    for (cls_score, bbox_pred), stride in zip(level_outputs, strides):
        scores = cls_score[0].permute(1, 2, 0).reshape(-1, cls_score.shape[1]).double().numpy()
        logits = bbox_pred[0].permute(1, 2, 0).reshape(-1, bbox_pred.shape[1]).double()
        h, w = cls_score.shape[2:]
        reg_max = bbox_pred.shape[1] // 4 - 1
        probs = F.softmax(logits.reshape(-1, 4, reg_max + 1), dim=-1).numpy()
        distances = probs @ np.arange(reg_max + 1, dtype=np.float64) * stride
        ys, xs = np.meshgrid(np.arange(h) * stride, np.arange(w) * stride, indexing="ij")
        points = np.stack([xs.ravel(), ys.ravel()], axis=-1).astype(np.float64)
        if scores.shape[0] > nms_pre:
            keep = torch.from_numpy(scores.max(axis=1)).topk(nms_pre).indices.numpy()
            scores, distances, points = scores[keep], distances[keep], points[keep]
        boxes = np.stack([points[:, 0] - distances[:, 0], points[:, 1] - distances[:, 1],
                          points[:, 0] + distances[:, 2], points[:, 1] + distances[:, 3]], axis=-1)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, image_shape[1])
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, image_shape[0])
        all_boxes.append(boxes)
        all_scores.append(scores)
    boxes = np.concatenate(all_boxes) / np.array([scale_factor[1], scale_factor[0]] * 2)
    scores = np.concatenate(all_scores)

    rows, labels = np.nonzero(scores > score_thr)  # row-major, as valid_mask.nonzero()
    cand_boxes, cand_scores = boxes[rows], scores[rows, labels]
    if len(rows) == 0:
        return np.zeros((0, 4)), np.zeros((0,)), np.zeros((0,), np.int64)
    # mmcv batched_nms: shift each class far away so one NMS never mixes classes.
    shifted = cand_boxes + (labels * (cand_boxes.max() + 1))[:, None]
    keep = _nms(shifted, cand_scores, iou_thr)[:max_per_img]
    boxes, scores, labels = cand_boxes[keep], cand_scores[keep], labels[keep]
    real = labels < num_classes
    return boxes[real], scores[real], labels[real]


def _nms(boxes, scores, iou_thr):
    """Greedy NMS: by descending score, drop boxes whose IoU with a kept one is ``> iou_thr``."""
    order = np.argsort(-scores, kind="stable")
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    suppressed = np.zeros(len(boxes), bool)
    for pos, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[pos + 1:]
        lt = np.maximum(boxes[i, :2], boxes[rest, :2])
        rb = np.minimum(boxes[i, 2:], boxes[rest, 2:])
        inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-12)
        suppressed[rest[iou > iou_thr]] = True
    return np.array(keep, dtype=np.int64)
