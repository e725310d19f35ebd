"""The PyTorch side of ``gflv2 benchmark --training``: the same GFLv2 training step in plain PyTorch.

The network is the independent PyTorch GFLv2 of the tests (``tests/torch_reference/gflv2_torch.py``
``GFL``: official module names and maths); it lives outside the installed package, so it is
imported from a source checkout (the repository's ``tests/`` folder is put on ``sys.path``) and
:func:`load_reference_model` says so clearly when it is missing. PyTorch is imported only here.

The step is the official one (``mmdet/models/dense_heads/gfocal_head.py GFocalHead.loss`` with
``mmdet/core/bbox/assigners/atss_assigner.py ATSSAssigner``, ``mmdet/models/losses/gfocal_loss.py``,
``iou_loss.py GIoULoss``): forward in train mode (BatchNorm frozen, stem + ``layer1`` frozen:
``frozen_stages=1, norm_eval=True``), ATSS per image (vectorised over the ground truths, as
the official assigner), QFL (weight 1) / DFL (0.25) / GIoU (2) with the official normalisers,
backward, ``torch.optim.SGD(momentum=0.9, weight_decay=1e-4)``. The losses are computed over
all levels at once rather than level by level (the same sums; one set of kernels instead of five).
Anchors (8 x stride squares at the points of ``ops.boxes.anchor_points``) are computed once.
"""

import os
import sys

import numpy as np


TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tests")


def missing_torch_reference():
    """Why the PyTorch comparison cannot run here (a message), or None when it can."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return "the PyTorch comparison needs PyTorch: pip install 'gflv2-keras[test]' (or torch)"
    if not os.path.isfile(os.path.join(TESTS, "torch_reference", "gflv2_torch.py")):
        return (
            f"the PyTorch comparison needs the reference model of a source checkout ({TESTS}/torch_reference/"
            "gflv2_torch.py is missing); run the benchmark from a git clone of gflv2-keras"
        )
    return None


def load_reference_model(config):
    """``torch_reference.gflv2_torch.GFL(**config)`` (float32, train mode, official freezing).

    Raises:
        ImportError: PyTorch is not installed, or this is not a source checkout (no
            ``tests/torch_reference``), saying what to do.
    """
    problem = missing_torch_reference()
    if problem:
        raise ImportError(problem)
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)
    import torch
    from torch_reference.gflv2_torch import GFL

    model = GFL(**config).float()
    model.train()
    backbone = config.get("backbone", {})
    frozen = int(backbone.get("frozen_stages", 1))  # the official (and our backbones') defaults
    if frozen >= 0:
        stem = [m for name in ("stem", "conv1", "bn1") if (m := getattr(model.backbone, name, None)) is not None]
        for module in stem + [getattr(model.backbone, f"layer{i}") for i in range(1, frozen + 1)]:
            module.requires_grad_(False)
    if backbone.get("norm_eval", True):
        for module in model.backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()
    return model


class TorchTrainingStep:
    """One official GFLv2 training step in PyTorch on a fixed canvas.

    Args:
        model: from :func:`load_reference_model`.
        height, width: the canvas (multiples of 128 not required; levels as ``ops.boxes.level_sizes``).
        num_classes: foreground classes (the head has ``num_classes + 1`` score columns with DGQP).
        reg_max, topk: the head's ``reg_max`` and ATSS ``topk`` (official 16 and 9).
        lr: SGD learning rate.
    """

    def __init__(self, model, height, width, num_classes, reg_max=16, topk=9, lr=0.01):
        import torch

        from gflv2_keras.ops import boxes

        self.torch, self.model = torch, model
        self.num_classes, self.reg_max, self.topk = num_classes, reg_max, topk
        sizes = boxes.level_sizes(height, width)
        points, strides = boxes.anchor_points(sizes, dtype="float32")
        anchors = np.array(boxes.anchor_boxes(points, strides), np.float32)
        self.points = torch.from_numpy(np.array(points, np.float32))
        self.strides = torch.from_numpy(np.array(strides, np.float32))
        self.anchors = torch.from_numpy(anchors)
        self.num_level = [h * w for h, w in sizes]
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4)

    def __call__(self, images, gt_boxes, gt_labels):
        """One step on ``images [B, 3, H, W]`` (torch, NCHW), ``gt_boxes [B, M, 4]`` xyxy pixels and
        ``gt_labels [B, M]`` (-1 = padding); returns the loss dict (floats)."""
        torch = self.torch
        outputs = self.model(images)
        scores = torch.cat([c.permute(0, 2, 3, 1).reshape(c.shape[0], -1, c.shape[1]) for c, _ in outputs], 1)
        logits = torch.cat([b.permute(0, 2, 3, 1).reshape(b.shape[0], -1, b.shape[1]) for _, b in outputs], 1)
        with torch.no_grad():
            labels, targets = zip(*[self.assign(g[l >= 0], l[l >= 0]) for g, l in zip(gt_boxes, gt_labels)])
        losses = self.loss(scores, logits, torch.stack(labels), torch.stack(targets))
        total = losses["qfl"] + losses["dfl"] + losses["giou"]
        self.optimizer.zero_grad(set_to_none=True)
        total.backward()
        self.optimizer.step()
        return {k: float(v.detach()) for k, v in losses.items()}

    def assign(self, gts, gt_labels):
        """``ATSSAssigner.assign`` for one image: ``(labels [N] (num_classes = background), boxes [N, 4])``."""
        torch, anchors = self.torch, self.anchors
        n, g = anchors.shape[0], gts.shape[0]
        labels = torch.full((n,), self.num_classes, dtype=torch.long)
        targets = torch.zeros((n, 4))
        if g == 0:
            return labels, targets
        overlaps = _pairwise_iou(torch, anchors, gts)  # [N, G]
        centres = (anchors[:, :2] + anchors[:, 2:]) / 2
        gt_centres = (gts[:, :2] + gts[:, 2:]) / 2
        distances = torch.cdist(centres, gt_centres)
        candidates, start = [], 0
        for count in self.num_level:
            k = min(self.topk, count)
            candidates.append(distances[start : start + count].topk(k, dim=0, largest=False).indices + start)
            start += count
        candidates = torch.cat(candidates, 0)  # [K, G]
        candidate_overlaps = overlaps[candidates, torch.arange(g)]
        threshold = candidate_overlaps.mean(0) + candidate_overlaps.std(0)
        c = centres[candidates]  # [K, G, 2]
        margin = torch.stack([c[..., 0] - gts[:, 0], c[..., 1] - gts[:, 1], gts[:, 2] - c[..., 0], gts[:, 3] - c[..., 1]]).amin(0)
        positive = (candidate_overlaps >= threshold) & (margin > 0.01)
        masked = torch.full_like(overlaps, -float("inf"))
        columns = torch.arange(g).expand_as(candidates)
        masked[candidates[positive], columns[positive]] = overlaps[candidates[positive], columns[positive]]
        best, best_gt = masked.max(1)
        hit = best != -float("inf")
        labels[hit] = gt_labels[best_gt[hit]].long()
        targets[hit] = gts[best_gt[hit]]
        return labels, targets

    def loss(self, scores, logits, labels, targets):
        """``GFocalHead.loss``: QFL / num positives, DFL and GIoU weighted by the detached max score."""
        torch, F = self.torch, self.torch.nn.functional
        batch, _, columns = scores.shape
        scores, logits = scores.reshape(-1, columns), logits.reshape(-1, 4, self.reg_max + 1)
        labels, targets = labels.reshape(-1), targets.reshape(-1, 4)
        points, strides = self.points.repeat(batch, 1), self.strides.repeat(batch)
        positive = torch.nonzero(labels < self.num_classes).squeeze(1)
        num_pos = (labels.reshape(batch, -1) < self.num_classes).sum(1).clamp(min=1).sum().clamp(min=1).float()
        quality = torch.zeros(labels.shape[0])
        weight = scores.detach().max(1).values[positive]
        centres = points[positive] / strides[positive, None]
        pos_logits = logits[positive]
        distances = F.softmax(pos_logits, -1) @ torch.arange(self.reg_max + 1, dtype=torch.float32)
        predicted = torch.cat([centres - distances[:, :2], centres + distances[:, 2:]], 1)
        target = targets[positive] / strides[positive, None]
        quality[positive] = _aligned_iou(torch, predicted.detach(), target)
        # QFL (gfocal_loss.py quality_focal_loss, use_sigmoid=False: scores are probabilities)
        qfl = F.binary_cross_entropy(scores, torch.zeros_like(scores), reduction="none") * scores.pow(2)
        p = scores[positive, labels[positive]]
        qfl[positive, labels[positive]] = F.binary_cross_entropy(p, quality[positive], reduction="none") * (
            quality[positive] - p
        ).abs().pow(2)
        qfl = qfl.sum() / num_pos
        # GIoU (iou_loss.py giou_loss, eps 1e-6), weighted by the detached max score
        giou = 2.0 * (weight * (1 - _aligned_giou(torch, predicted, target))).sum()
        # DFL (gfocal_loss.py distribution_focal_loss), weight expanded to the 4 sides, avg_factor 4
        edges = torch.cat([centres - target[:, :2], target[:, 2:] - centres], 1).clamp(0, self.reg_max - 0.1)
        left = edges.long()
        flat_logits, flat_edges, flat_left = pos_logits.reshape(-1, self.reg_max + 1), edges.reshape(-1), left.reshape(-1)
        dfl = F.cross_entropy(flat_logits, flat_left, reduction="none") * (flat_left + 1 - flat_edges) + F.cross_entropy(
            flat_logits, flat_left + 1, reduction="none"
        ) * (flat_edges - flat_left)
        dfl = 0.25 * (weight.repeat_interleave(4) * dfl).sum() / 4.0
        weight_sum = weight.sum().clamp(min=1e-12)
        return {"qfl": qfl, "dfl": dfl / weight_sum, "giou": giou / weight_sum}


def _pairwise_iou(torch, a, b, eps=1e-6):
    wh = (torch.minimum(a[:, None, 2:], b[None, :, 2:]) - torch.maximum(a[:, None, :2], b[None, :, :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None] - inter).clamp(min=eps)


def _aligned_iou(torch, a, b, eps=1e-6):
    wh = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return inter / union.clamp(min=eps)


def _aligned_giou(torch, a, b, eps=1e-6):
    wh = (torch.minimum(a[:, 2:], b[:, 2:]) - torch.maximum(a[:, :2], b[:, :2])).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter).clamp(min=eps)
    hull_wh = (torch.maximum(a[:, 2:], b[:, 2:]) - torch.minimum(a[:, :2], b[:, :2])).clamp(min=0)
    hull = (hull_wh[:, 0] * hull_wh[:, 1]).clamp(min=eps)
    return inter / union - (hull - union) / hull
