"""Inference speed in the manner of the official ``tools/benchmark.py``.

Batch 1, ``warmup`` untimed iterations, then ``iterations`` timed ones; the median time is
reported. Like the official script, image decoding, resizing and normalisation are excluded:
the input is an already preprocessed, padded tensor. Two timings per variant:

* ``network``: backbone + FPN + head.
* ``+post``: the network plus decoding, per-level top-k, per-class NMS and rescaling.

Variants: ``eager``, ``function`` (``tf.function``) and ``xla`` (``jit_compile=True`` for the
network; NMS has no XLA kernel, so post-processing runs in a plain ``tf.function``), each in
``float32`` and ``bfloat16`` (Keras ``mixed_bfloat16`` policy).

The physical floor is the network's FLOPs (counted by the TensorFlow profiler on the traced
graph) divided by the float32 GEMM rate measured in the same run; ``floor fraction`` =
floor time / measured time (1.0 would mean the network runs at pure GEMM speed).
"""

import os
import platform
import statistics
import time

import numpy as np


def measure_gemm_rate(size=2048, repeats=7):
    """float32 GEMM throughput in FLOP/s (median of ``repeats`` ``size x size`` matmuls)."""
    import tensorflow as tf

    a = tf.random.normal((size, size))
    b = tf.random.normal((size, size))
    matmul = tf.function(lambda x, y: tf.linalg.matmul(x, y))
    matmul(a, b).numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b).numpy()
        times.append(time.perf_counter() - start)
    return 2.0 * size**3 / statistics.median(times)


def count_network_flops(detector, height, width):
    """FLOPs of one forward pass at ``height x width``, counted by the TF profiler on the graph."""
    import tensorflow as tf
    from tensorflow.python.profiler.model_analyzer import profile
    from tensorflow.python.profiler.option_builder import ProfileOptionBuilder

    forward = tf.function(lambda x: detector(x, training=False), autograph=False)
    graph = forward.get_concrete_function(tf.TensorSpec([1, height, width, 3], tf.float32)).graph
    options = ProfileOptionBuilder(ProfileOptionBuilder.float_operation()).with_empty_output().build()
    return float(profile(graph, options=options).total_float_ops)


def _time(fn, warmup, iterations):
    for _ in range(warmup):
        _block(fn())
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        _block(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _block(outputs):
    """Wait for results (TF is asynchronous on accelerators) by fetching one value."""
    first = outputs[next(iter(outputs))] if isinstance(outputs, dict) else outputs
    np.asarray(first)


def _variant_functions(detector, inputs, image_info, mode):
    import tensorflow as tf

    from gflv2_keras.ops.postprocess import postprocess

    height, width = inputs.shape[1], inputs.shape[2]
    sizes, points, strides = detector.points_for(height, width)

    def network(x):
        return detector(x, training=False)

    def post(outputs):
        return postprocess(
            outputs["confidence"], outputs["box_logits"], points, strides, sizes, image_info,
            num_classes=detector.num_classes, reg_max=detector.reg_max, **detector.test_config,
        )

    if mode == "eager":
        net, post_fn = network, post
    elif mode == "function":
        net, post_fn = tf.function(network, autograph=False), tf.function(post, autograph=False)
    elif mode == "xla":
        net, post_fn = tf.function(network, jit_compile=True, autograph=False), tf.function(post, autograph=False)
    else:
        raise ValueError(f"unknown mode {mode!r}; expected eager, function or xla")
    return (lambda: net(inputs)), (lambda: post_fn(net(inputs)))


def run_inference_benchmark(
    preset="gflv2_r50_fpn_1x_coco",
    height=800,
    width=1216,
    modes=("eager", "function", "xla"),
    precisions=("float32", "bfloat16"),
    warmup=5,
    iterations=10,
    log=print,
):
    """Time every (mode, precision) variant; returns ``(rows, context)``.

    ``rows`` are dicts with ``mode``, ``precision``, ``network_s``, ``full_s``, ``fps``,
    ``fps_full`` and ``floor_fraction``; ``context`` holds FLOPs, GEMM rate and machine facts.
    """
    import keras
    import tensorflow as tf

    from gflv2_keras import GFLV2Detector

    height, width = -(-height // 32) * 32, -(-width // 32) * 32
    rng = np.random.default_rng(0)
    inputs = tf.constant(rng.normal(size=(1, height, width, 3)).astype(np.float32))
    image_info = {
        "image_shape": tf.constant([[height, width]], tf.float32),
        "scale_factor": tf.constant([[1.0, 1.0]], tf.float32),
    }
    log(f"measuring the float32 GEMM rate ...")
    gemm = measure_gemm_rate()
    context = {"preset": preset, "height": height, "width": width, "gemm_flops": gemm, **machine_facts()}
    rows = []
    original_policy = keras.config.dtype_policy()
    try:
        for precision in precisions:
            keras.config.set_dtype_policy("mixed_bfloat16" if precision == "bfloat16" else "float32")
            keras.utils.set_random_seed(0)
            detector = GFLV2Detector.from_preset(preset, load_weights=False).build_for_inference()
            if "network_flops" not in context:
                context["network_flops"] = count_network_flops(detector, height, width)
                log(f"network: {context['network_flops'] / 1e9:.1f} GFLOP at {height}x{width}; "
                    f"GEMM {gemm / 1e9:.1f} GFLOP/s -> floor {context['network_flops'] / gemm * 1e3:.0f} ms")
            for mode in modes:
                log(f"timing {mode} / {precision} ({warmup} warm-up + {iterations} timed) ...")
                network_fn, full_fn = _variant_functions(detector, inputs, image_info, mode)
                network_s = _time(network_fn, warmup, iterations)
                full_s = _time(full_fn, max(1, warmup // 2), iterations)
                rows.append({
                    "mode": mode,
                    "precision": precision,
                    "network_s": network_s,
                    "full_s": full_s,
                    "fps": 1.0 / network_s,
                    "fps_full": 1.0 / full_s,
                    "floor_fraction": context["network_flops"] / gemm / network_s,
                })
    finally:
        keras.config.set_dtype_policy(original_policy)
    return rows, context


def machine_facts():
    """CPU model, core count and library versions for the benchmark header."""
    import keras
    import tensorflow as tf

    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    return {"cpu": cpu, "cores": os.cpu_count(), "gpus": gpus, "tensorflow": tf.__version__, "keras": keras.__version__}


def format_table(rows, context):
    """Markdown table of the results with a header describing the run."""
    lines = [
        f"preset {context['preset']}, input {context['height']}x{context['width']}, batch 1; "
        f"{context['cpu']} ({context['cores']} cores{', GPUs: ' + ', '.join(context['gpus']) if context['gpus'] else ''}); "
        f"TF {context['tensorflow']}, Keras {context['keras']}",
        f"network {context['network_flops'] / 1e9:.1f} GFLOP; float32 GEMM {context['gemm_flops'] / 1e9:.1f} GFLOP/s; "
        f"floor {context['network_flops'] / context['gemm_flops'] * 1e3:.0f} ms",
        "",
        "| mode | precision | network ms | FPS | +post ms | FPS (+post) | floor fraction |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['precision']} | {r['network_s'] * 1e3:.0f} | {r['fps']:.2f} | "
            f"{r['full_s'] * 1e3:.0f} | {r['fps_full']:.2f} | {r['floor_fraction']:.2f} |"
        )
    return "\n".join(lines)
