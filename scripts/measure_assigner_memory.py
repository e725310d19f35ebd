"""Peak memory of the ATSS assigner per (image, box slot, anchor point): the figure behind
``training.options.ASSIGNER_BYTES_PER_PAIR`` (the rule that caps the default ``max_boxes``).

Each box count runs in a fresh subprocess (TensorFlow backend, CPU, one traced ``tf.function``
of ``atss_assign`` as the training step calls it) and reports its peak resident memory; the
slope between box counts, divided by ``images x points``, is the cost of one more box slot.

    python scripts/measure_assigner_memory.py [--size 800 1344] [--batch 2] [--boxes 0 250 500]
"""

import argparse
import json
import os
import subprocess
import sys

CHILD = r"""
import os, resource, sys, json
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
os.environ["KERAS_BACKEND"] = "tensorflow"
import numpy as np
import tensorflow as tf
from gflv2_keras.assigners.atss import atss_assign
from gflv2_keras.ops.boxes import anchor_points, level_sizes

height, width, batch, boxes = (int(v) for v in sys.argv[1:5])
sizes = level_sizes(height, width)
points, strides = anchor_points(sizes)
points, strides = np.asarray(points), np.asarray(strides)
half = 4.0 * strides[:, None]
anchors = tf.constant(np.concatenate([points - half, points + half], 1), tf.float32)
num_level_points = [h * w for h, w in sizes]
rng = np.random.default_rng(0)
xy = rng.uniform(0, [width - 64, height - 64], (batch, boxes, 2))
gt = tf.constant(np.concatenate([xy, xy + rng.uniform(8, 64, (batch, boxes, 2))], -1), tf.float32)
labels = tf.constant(rng.integers(0, 80, (batch, boxes)), tf.int32)
valid = tf.ones([batch, len(points)], tf.bool)

@tf.function
def assign(gt, labels):
    return atss_assign(anchors, num_level_points, gt, labels, valid, 80)

base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = assign(gt, labels)
int(tf.reduce_sum(tf.cast(out["positive"], tf.int32)))
out = assign(gt, labels)
int(tf.reduce_sum(tf.cast(out["positive"], tf.int32)))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"boxes": boxes, "points": len(points), "peak_kib": peak, "before_kib": base}))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1344), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--boxes", type=int, nargs="+", default=(0, 250, 500))
    args = parser.parse_args()
    rows = []
    for boxes in args.boxes:
        command = [sys.executable, "-c", CHILD, *map(str, (*args.size, args.batch, boxes))]
        environment = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}  # the host's memory, not a GPU's
        result = subprocess.run(command, capture_output=True, text=True, check=True, env=environment)
        rows.append(json.loads(result.stdout.strip().splitlines()[-1]))
        print(rows[-1])
    first, last = rows[0], rows[-1]
    pairs = args.batch * (last["boxes"] - first["boxes"]) * last["points"]
    slope = (last["peak_kib"] - first["peak_kib"]) * 1024 / pairs
    print(f"canvas {args.size[0]}x{args.size[1]} ({last['points']} points), batch {args.batch}: "
          f"{slope:.1f} bytes per (image, box slot, point) between {first['boxes']} and {last['boxes']} boxes")


if __name__ == "__main__":
    main()
