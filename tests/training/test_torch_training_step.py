"""The PyTorch training step timed by ``gflv2 benchmark --training`` computes the same ATSS + losses as ours.

A fair timing needs the same work on both sides: on random head outputs and ground truths, the
PyTorch ATSS + QFL/DFL/GIoU of ``benchmarks/torch_training.py`` must give the losses of
``losses.gfl_loss`` (itself tested against a float64 NumPy port of the official code in
``test_gfl_loss.py``), and a whole PyTorch step must change the weights.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gflv2_keras.benchmarks.torch_training import TorchTrainingStep, load_reference_model  # noqa: E402
from gflv2_keras.losses.gfl_loss import gfl_loss  # noqa: E402
from gflv2_keras.ops import boxes  # noqa: E402

HEIGHT, WIDTH, NUM_CLASSES, REG_MAX = 128, 192, 3, 16
CONFIG = {
    "backbone": {"type": "resnet", "depth": 18, "base_channels": 8, "frozen_stages": 1, "norm_eval": True},
    "num_classes": NUM_CLASSES,
    "fpn_channels": 16,
    "head": {"feat_channels": 16, "stacked_convs": 1, "norm_groups": 4},
}


def _random_targets(rng, counts):
    gt = np.zeros((len(counts), max(counts), 4), np.float32)
    labels = np.full((len(counts), max(counts)), -1, np.int32)
    for b, count in enumerate(counts):
        xy = rng.uniform(0, [WIDTH * 0.7, HEIGHT * 0.7], (count, 2))
        wh = rng.uniform(8, [WIDTH * 0.6, HEIGHT * 0.6], (count, 2))
        gt[b, :count] = np.concatenate([xy, np.minimum(xy + wh, [WIDTH, HEIGHT])], 1)
        labels[b, :count] = rng.integers(0, NUM_CLASSES, count)
    return gt, labels


@pytest.mark.parametrize("seed", [0, 1])
def test_torch_atss_and_losses_equal_ours(seed):
    rng = np.random.default_rng(seed)
    step = TorchTrainingStep(load_reference_model(CONFIG), HEIGHT, WIDTH, NUM_CLASSES)
    sizes = boxes.level_sizes(HEIGHT, WIDTH)
    points, strides = boxes.anchor_points(sizes, dtype="float32")
    n = int(np.asarray(points).shape[0])
    confidence = rng.uniform(1e-3, 0.6, (3, n, NUM_CLASSES + 1)).astype(np.float32)
    logits = rng.normal(0, 2, (3, n, 4 * (REG_MAX + 1))).astype(np.float32)
    gt, labels = _random_targets(rng, [1, 6, 3])

    ours = gfl_loss(confidence, logits, points, strides, [h * w for h, w in sizes], gt, labels,
                    np.ones((3, n), bool), num_classes=NUM_CLASSES)  # fmt: skip
    with torch.no_grad():
        assigned = [step.assign(torch.from_numpy(g[l >= 0]), torch.from_numpy(l[l >= 0])) for g, l in zip(gt, labels)]
        theirs = step.loss(torch.from_numpy(confidence), torch.from_numpy(logits),
                           torch.stack([a for a, _ in assigned]), torch.stack([t for _, t in assigned]))  # fmt: skip
    assert int(sum((a < NUM_CLASSES).sum() for a, _ in assigned)) > 5  # positives exist: the losses are not trivial
    for name in ("qfl", "dfl", "giou"):
        assert float(theirs[name]) == pytest.approx(float(ours[name]), rel=1e-4), name


def test_torch_step_trains():
    torch.manual_seed(0)
    model = load_reference_model(CONFIG)
    step = TorchTrainingStep(model, HEIGHT, WIDTH, NUM_CLASSES, lr=0.01)
    frozen = model.backbone.conv1.weight.detach().clone()
    head = model.bbox_head.gfl_reg.weight.detach().clone()
    gt, labels = _random_targets(np.random.default_rng(3), [2, 4])
    images = torch.randn(2, 3, HEIGHT, WIDTH)
    losses = step(images, torch.from_numpy(gt), torch.from_numpy(labels))
    assert all(np.isfinite(v) and v > 0 for v in losses.values()), losses
    assert torch.equal(model.backbone.conv1.weight, frozen)  # frozen_stages=1: the stem does not move
    assert not torch.equal(model.bbox_head.gfl_reg.weight, head)
