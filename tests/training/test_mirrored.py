"""One step on 2 logical CPU replicas equals one step on 1 replica with the same global batch, and so
does one update accumulated from 2 micro-batches (``accumulate=2``, ``models.train_function``; slow run).

Logical CPU devices must be configured before TensorFlow initialises, so the comparison runs in
a fresh subprocess. BatchNorm statistics are frozen (``norm_eval=True``, as in every official
preset): per-replica batch statistics would otherwise legitimately differ from the global ones
(the official recipe uses plain, unsynchronised BN too).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.path.insert(0, REPO)
    import numpy as np
    import tensorflow as tf
    import keras
    from gflv2_keras.training.strategy import build_strategy
    from gflv2_keras.training.optimizer import CoupledSGD
    from gflv2_keras.training.trainer import compile_for_training
    from gflv2_keras.models.detector import GFLV2Detector

    mirrored = build_strategy("mirrored", cpu_devices=2)
    assert mirrored.num_replicas_in_sync == 2

    rng = np.random.default_rng(0)
    images = rng.normal(size=(4, 96, 128, 3)).astype(np.float32)
    # Replica 0 gets images 0-1 (one box each), replica 1 images 2-3 (three boxes each), so the
    # replicas' positive counts and QFL / GIoU normalisers differ.
    boxes = np.full((4, 3, 4), -1.0, np.float32)
    labels = np.full((4, 3), -1, np.int32)
    boxes[0, 0], labels[0, 0] = [10, 12, 50, 60], 0
    boxes[1, 0], labels[1, 0] = [40, 20, 120, 90], 1
    for i in (2, 3):
        boxes[i] = [[5, 5, 40, 45], [60, 10, 110, 70], [20, 50, 90, 94]]
        labels[i] = [0, 1, 2]
    image_shape = np.array([[96, 128], [96, 96], [64, 128], [96, 128]], np.int32)
    targets = {"boxes": boxes, "labels": labels, "image_shape": image_shape}
    dataset = tf.data.Dataset.from_tensors((images, targets))

    keras.utils.set_random_seed(0)
    config = {
        "backbone": {"type": "resnet", "depth": 18, "base_channels": 8, "frozen_stages": 1, "norm_eval": True},
        "num_classes": 3, "fpn_channels": 16, "head": {"feat_channels": 16, "stacked_convs": 1, "norm_groups": 4},
    }
    initial = GFLV2Detector(**config).build_for_inference().get_weights()

    # A second micro-batch for accumulation: the same images flipped left-right, boxes mirrored.
    flipped = {"boxes": np.where(boxes[..., :1] >= 0, np.stack([128 - boxes[..., 2], boxes[..., 1],
                                                                  128 - boxes[..., 0], boxes[..., 3]], -1), -1.0),
               "labels": labels, "image_shape": image_shape}
    two_micro_batches = dataset.concatenate(tf.data.Dataset.from_tensors((images[:, :, ::-1], flipped)))

    def one_step(strategy, accumulate=1):
        with strategy.scope():
            model = GFLV2Detector(**config).build_for_inference()
            model.set_weights(initial)
            if accumulate == 1:
                model.compile(optimizer=CoupledSGD(0.5, momentum=0.9, weight_decay=1e-4))
            else:
                compile_for_training(model, 0.5, momentum=0.9, weight_decay=1e-4, accumulate=accumulate)
        data = dataset if accumulate == 1 else two_micro_batches
        history = model.fit(data, epochs=1, verbose=0).history
        assert int(model.optimizer.iterations.numpy()) == 1
        return model, {k: float(v[-1]) for k, v in history.items()}

    def compare(single, double):
        deltas = []
        for w0, w1, w2 in zip(initial, single.get_weights(), double.get_weights()):
            d1, d2 = w1 - w0, w2 - w0
            deltas.append((float(np.abs(d1).max()), float(np.abs(d1 - d2).max())))
        return deltas

    single, single_logs = one_step(tf.distribute.get_strategy())
    double, double_logs = one_step(mirrored)
    result = {"single": single_logs, "double": double_logs, "deltas": compare(single, double)}
    if WITH_ACCUMULATION:
        single_acc, single_acc_logs = one_step(tf.distribute.get_strategy(), accumulate=2)
        double_acc, double_acc_logs = one_step(mirrored, accumulate=2)
        result.update({"single_acc": single_acc_logs, "double_acc": double_acc_logs,
                       "deltas_acc": compare(single_acc, double_acc), "acc_vs_plain": compare(single, single_acc)})
    print("RESULT " + json.dumps(result))
    """
)


def _run_steps(with_accumulation):
    """The script's results: one step per strategy (and with ``accumulate=2`` if asked), in a fresh process."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    source = f"REPO = {REPO!r}\nWITH_ACCUMULATION = {with_accumulation!r}\n" + SCRIPT
    result = subprocess.run([sys.executable, "-c", source], capture_output=True, text=True, env=env, timeout=600)
    lines = [line for line in result.stdout.splitlines() if line.startswith("RESULT ")]
    assert result.returncode == 0 and lines, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT ") :])


def _assert_same_update(out, single, double, deltas):
    for name in ("loss", "qfl", "dfl", "giou"):
        assert out[double][name] == _approx(out[single][name]), (double, name)
    largest_step = max(step for step, _ in out[deltas])
    assert largest_step > 1e-3  # the step moved the weights
    # Same update everywhere: a loss scaled by the replica count (the Keras default for a
    # hand-written compute_loss without replica scaling) would double every trainable delta.
    for step, difference in out[deltas]:
        assert difference <= 1e-4 * largest_step + 1e-6, (deltas, step, difference)


def test_two_replicas_match_one_replica_on_the_same_global_batch():
    _assert_same_update(_run_steps(with_accumulation=False), "single", "double", "deltas")


@pytest.mark.slow  # two more compiled fits (accumulation is also covered on one replica in test_accumulation.py)
def test_two_replicas_match_one_replica_with_accumulation():
    out = _run_steps(with_accumulation=True)
    for single, double, deltas in (("single", "double", "deltas"), ("single_acc", "double_acc", "deltas_acc")):
        _assert_same_update(out, single, double, deltas)
    # The accumulated update is another update (the mean with the flipped micro-batch's gradient).
    assert max(difference for _, difference in out["acc_vs_plain"]) > 1e-4


def _approx(value):
    return pytest.approx(value, rel=1e-5, abs=1e-6)
