"""Timing of one 3x3 deformable convolution (DCNv1) layer against a plain convolution.

Default shape: a ResNet c4 map (stride 16) of an 800x1333 image, 50x84x256 -> 256, stride 1,
offsets of about a pixel (random offset conv). Implementations: the C++ custom op, the
portable keras.ops path in eager mode and compiled with XLA (``tf.function(jit_compile=True)``),
and ``keras.layers.Conv2D`` of the same shape as the baseline. "forward+backward" computes
the gradients wrt the input and every trainable weight.

Run ``python -m gflv2_keras.benchmarks.dcn_benchmark [--height 50 --width 84 ...]``.
"""

import argparse
import os
import platform
import statistics
import time

import keras
import numpy as np
import tensorflow as tf

from gflv2_keras.layers.deform_conv2d import DeformConv2D

MODES = ("forward", "forward+backward")


def _time(fn, repeats, warmup):
    for _ in range(warmup):
        tf.nest.map_structure(lambda t: t.numpy(), fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        tf.nest.map_structure(lambda t: t.numpy(), fn())  # .numpy() waits for the result
        times.append(time.perf_counter() - start)
    return times


def _forward_backward(layer, x):
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x))
    return tape.gradient(loss, [x] + layer.trainable_weights)


def run_dcn_benchmark(batch=1, height=50, width=84, channels=256, repeats=5, warmup=2):
    """Times one 3x3 stride-1 ``channels -> channels`` layer at ``(batch, height, width, channels)``.

    Returns:
        A list of dicts with keys ``implementation``, ``mode`` ("forward" or
        "forward+backward"), ``median_ms``, ``min_ms`` (None when unavailable), ``note``,
        and ``shape``.
    """
    rng = np.random.default_rng(0)
    shape = (batch, height, width, channels)
    x = tf.constant(rng.standard_normal(shape), tf.float32)

    portable = DeformConv2D(channels, implementation="portable")
    portable.build(shape)
    # Offset-conv outputs with a standard deviation of about one pixel.
    portable.offset_kernel.assign(rng.standard_normal(portable.offset_kernel.shape) / np.sqrt(9 * channels))
    op_layer = DeformConv2D(channels, implementation="custom_op")
    op_layer.build(shape)
    op_layer.set_weights(portable.get_weights())
    conv = keras.layers.Conv2D(channels, 3, padding="same", use_bias=False)  # 'same' == pad 1 at stride 1
    conv.build(shape)

    def forward_fn(layer, jit=False):
        fn = lambda: layer(x)  # noqa: E731
        return tf.function(fn, jit_compile=True) if jit else fn

    def backward_fn(layer, jit=False):
        fn = lambda: _forward_backward(layer, x)  # noqa: E731
        return tf.function(fn, jit_compile=True) if jit else fn

    cases = [
        ("custom op", op_layer, False),
        ("portable eager", portable, False),
        ("portable XLA", portable, True),
        ("Conv2D (no deformation)", conv, False),
    ]
    rows = []
    for name, layer, jit in cases:
        for mode, make in zip(MODES, (forward_fn, backward_fn)):
            row = dict(implementation=name, mode=mode, shape=shape, median_ms=None, min_ms=None, note="")
            try:
                times = _time(make(layer, jit), repeats, warmup)
                row.update(median_ms=1e3 * statistics.median(times), min_ms=1e3 * min(times))
            except Exception as e:  # e.g. the custom op cannot be built here: report, keep going
                row["note"] = f"unavailable: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
            rows.append(row)
    return rows


def format_table(rows):
    """Table with one line per implementation: median forward and forward+backward times."""
    names = list(dict.fromkeys(r["implementation"] for r in rows))
    by_key = {(r["implementation"], r["mode"]): r for r in rows}
    baseline = {m: by_key.get(("Conv2D (no deformation)", m), {}).get("median_ms") for m in MODES}

    def cell(name, mode):
        r = by_key.get((name, mode))
        if r is None or r["median_ms"] is None:
            return "n/a"
        ratio = f" ({r['median_ms'] / baseline[mode]:.1f}x)" if baseline[mode] else ""
        return f"{r['median_ms']:.1f}{ratio}"

    header = ["implementation", "forward ms (x Conv2D)", "forward+backward ms (x Conv2D)"]
    body = [[n, cell(n, MODES[0]), cell(n, MODES[1])] for n in names]
    widths = [max(len(line[i]) for line in [header] + body) for i in range(3)]
    fmt = lambda line: "| " + " | ".join(v.ljust(w) for v, w in zip(line, widths)) + " |"  # noqa: E731
    lines = [fmt(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(line) for line in body]
    notes = [f"{r['implementation']} {r['mode']}: {r['note']}" for r in rows if r["note"]]
    if rows:
        lines.append(f"shape {rows[0]['shape']} (B, H, W, C), 3x3, stride 1, {rows[0]['shape'][-1]} filters; "
                     "median of repeats")
    return "\n".join(lines + notes)


def machine_description():
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"CPU: {cpu}, {cores} cores available; TensorFlow {tf.__version__}, Keras {keras.__version__}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--height", type=int, default=50)
    parser.add_argument("--width", type=int, default=84)
    parser.add_argument("--channels", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args(argv)
    rows = run_dcn_benchmark(args.batch, args.height, args.width, args.channels, args.repeats, args.warmup)
    print(machine_description())
    print(format_table(rows))


if __name__ == "__main__":
    main()
