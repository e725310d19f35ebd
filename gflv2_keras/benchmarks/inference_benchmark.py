"""Inference speed against the hardware and against the PyTorch reference, in one run.

``gflv2 benchmark`` prints:

* the GEMM floors: float32 and bfloat16 ``4096 x 4096 x 4096`` matmul rates (TensorFlow);
* the network's FLOPs (TF profiler on the traced graph) and so the floor time per precision;
* per precision (``float32``, ``bfloat16`` = ``dtype="mixed_bfloat16"`` on every layer) and
  mode: ``network`` (backbone + FPN + head alone, ``tf.function``, BN folded: what the
  compiled path runs, with the head's GroupNorm + ReLU fused), ``network-xla`` (the same under XLA) and ``predict`` (``detector.predict``
  of a uint8 image end to end: resize, normalise, pad, network, decoding, NMS, in the
  compiled per-canvas function with the default XLA choice), and ``pre + post`` = predict -
  network in the mode predict uses;
* optionally ``predict`` throughput (images/s) at several batch sizes;
* optionally the PyTorch twin of the tests (``tests/torch_reference/gflv2_torch.py``, source
  checkout only; torch is imported only then) with the same weights and input: float32 NCHW,
  channels_last, channels_last + bfloat16 autocast;
* the ratios: floor fraction = floor time / measured time, and ``vs torch`` = the PyTorch
  channels_last bf16 network time / ours.

Timings are interleaved (every variant once per round, ``repeats`` rounds) and the median is
reported, so load from other processes on a shared machine hits all variants alike.
"""

import os
import platform
import statistics
import time

import numpy as np

from gflv2_keras.models.precision import PRECISIONS


def measure_gemm_rate(dtype="float32", size=4096, repeats=5):
    """GEMM throughput in FLOP/s: the median of ``repeats`` ``size^3`` matmuls in ``dtype``."""
    import tensorflow as tf

    a = tf.cast(tf.random.normal((size, size)), dtype)
    b = tf.cast(tf.random.normal((size, size)), dtype)
    matmul = tf.function(lambda x, y: tf.linalg.matmul(x, y))
    matmul(a, b)[0, 0].numpy()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, b)[0, 0].numpy()
        times.append(time.perf_counter() - start)
    return 2.0 * size**3 / statistics.median(times)


def count_network_flops(detector, height, width):
    """FLOPs of one forward pass at ``height x width``, counted by the TF profiler on the graph."""
    import tensorflow as tf

    profiler = tf.compat.v1.profiler
    forward = tf.function(lambda x: detector(x, training=False), autograph=False)
    graph = forward.get_concrete_function(tf.TensorSpec([1, height, width, 3], tf.float32)).graph
    builder = profiler.ProfileOptionBuilder
    options = builder(builder.float_operation()).with_empty_output().build()
    return float(profiler.profile(graph, options=options).total_float_ops)


def _block(outputs):
    """Wait for results by fetching one value (TF is asynchronous on accelerators)."""
    if isinstance(outputs, dict):
        outputs = outputs[next(iter(outputs))]
    elif isinstance(outputs, (list, tuple)):
        outputs = outputs[0]
    outputs.numpy() if hasattr(outputs, "numpy") else np.asarray(outputs)


def time_interleaved(variants, warmup=2, repeats=5, log=print):
    """``{name: median seconds}`` of ``time_rounds``."""
    return {name: statistics.median(values) for name, values in time_rounds(variants, warmup, repeats, log).items()}


def time_rounds(variants, warmup=2, repeats=5, log=print):
    """``{name: [seconds of each round]}``: each round runs every variant once (round-robin).

    Args:
        variants: ``{name: (callable, images_per_call)}``; callables return something to block on.
    """
    for name, (fn, _) in variants.items():
        log(f"  warming up {name} ...")
        for _ in range(warmup):
            _block(fn())
    times = {name: [] for name in variants}
    for round_index in range(repeats):
        start_round = time.perf_counter()
        for name, (fn, _) in variants.items():
            start = time.perf_counter()
            _block(fn())
            times[name].append(time.perf_counter() - start)
        log(f"  round {round_index + 1}/{repeats} done ({time.perf_counter() - start_round:.1f} s)")
    return times


def _keras_variants(detector, precision, image, batches):
    """The timed callables of one Keras detector: network, network-xla, predict (+ batches)."""
    import tensorflow as tf

    from gflv2_keras.models.fast_inference import folded_norms, fused_group_norms, resolve_jit
    from gflv2_keras.models.preprocessing import canvas_size

    height, width = canvas_size(image.shape[0], image.shape[1], detector.input_scale)
    inputs = tf.constant(np.random.default_rng(0).normal(size=(1, height, width, 3)).astype(np.float32))

    def network_fn(jit):
        def forward(x):
            with folded_norms(detector), fused_group_norms(detector):
                return detector(x, training=False)

        fn = tf.function(forward, jit_compile=jit, autograph=False)
        return lambda: fn(inputs)

    variants = {
        (precision, "network"): (network_fn(False), 1),
        (precision, "network-xla"): (network_fn(True), 1),
        (precision, "predict"): (lambda: detector.predict(image[None]), 1),
    }
    for batch in batches:
        if batch != 1:
            stacked = np.repeat(image[None], batch, axis=0)
            variants[(precision, f"predict b{batch}")] = (lambda s=stacked: detector.predict(s, batch_size=len(s)), batch)
    uses_xla = resolve_jit(detector.inference_jit, detector.dtype_policy.compute_dtype)
    return variants, uses_xla


def _torch_variants(state_dict_source, config, height, width, threads):
    """The PyTorch reference (``tests/torch_reference``) with the detector's weights."""
    import torch

    from gflv2_keras.benchmarks.torch_inference import network_call, normal_inputs, reference_network

    model = reference_network(config, threads)
    state_dict_source(model.state_dict())
    x = normal_inputs(1, height, width, channels_last=False)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    model_cl = reference_network(config).to(memory_format=torch.channels_last)
    model_cl.load_state_dict(model.state_dict())
    return {
        ("torch", "fp32 NCHW"): (network_call(model, x), 1),
        ("torch", "channels_last"): (network_call(model_cl, x_cl), 1),
        ("torch", "channels_last bf16"): (network_call(model_cl, x_cl, bf16=True), 1),
    }, torch.__version__


def run_inference_benchmark(
    preset="gflv2_r50_fpn_1x_coco",
    height=800,
    width=1216,
    precisions=("float32", "bfloat16"),
    batches=(1,),
    with_torch=False,
    warmup=2,
    repeats=5,
    torch_threads=None,
    log=print,
):
    """Time every variant in interleaved rounds; returns ``(results, context)``.

    ``torch_threads``: ``torch.set_num_threads`` of the PyTorch variants (default: every core).

    ``results`` maps ``(precision or "torch", mode)`` to ``{"seconds", "images"}``; ``context``
    holds the GEMM rates, network FLOPs, which mode ``predict`` used and machine facts.
    The image is uint8 ``height x width`` (its canvas is the network input of every variant).
    """
    import keras

    from gflv2_keras import GFLV2Detector
    from gflv2_keras.convert import convert_state_dict
    from gflv2_keras.models.preprocessing import canvas_size

    torch_threads = torch_threads or os.cpu_count()
    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}")
    for precision in precisions:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    log("measuring the GEMM floors (4096^3 matmul, float32 and bfloat16) ...")
    context = {
        "preset": preset,
        "height": height,
        "width": width,
        "gemm": {"float32": measure_gemm_rate("float32"), "bfloat16": measure_gemm_rate("bfloat16")},
        "predict_xla": {},
        **machine_facts(),
    }
    variants = {}
    detectors = {}
    for precision in precisions:
        keras.utils.set_random_seed(0)
        detector = GFLV2Detector.from_preset(preset, load_weights=False, dtype=PRECISIONS[precision])
        detector.build_for_inference()
        detectors[precision] = detector
        found, uses_xla = _keras_variants(detector, precision, image, batches)
        variants.update(found)
        context["predict_xla"][precision] = uses_xla
    first = detectors[precisions[0]]
    canvas = canvas_size(height, width, first.input_scale)
    context["canvas"] = canvas
    context["network_flops"] = count_network_flops(
        GFLV2Detector.from_preset(preset, load_weights=False).build_for_inference(), *canvas
    )
    if with_torch:
        from gflv2_keras.benchmarks.torch_inference import reference_config

        config = reference_config(preset)

        def load_into_detectors(state):
            arrays = {k: v.numpy() for k, v in state.items()}
            for detector in detectors.values():
                convert_state_dict(detector, arrays)

        torch_variants, context["torch"] = _torch_variants(load_into_detectors, config, *canvas, torch_threads)
        variants.update(torch_variants)
    medians = time_interleaved(variants, warmup=warmup, repeats=repeats, log=log)
    results = {key: {"seconds": medians[key], "images": variants[key][1]} for key in variants}
    return results, context


def machine_facts():
    """CPU model, ISA extensions, core count and library versions for the benchmark header."""
    import keras
    import tensorflow as tf

    cpu, flags = platform.processor() or "unknown CPU", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and cpu in ("", platform.processor() or "unknown CPU"):
                    cpu = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = [name for name in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
           if name in flags]
    gpus = [d.name for d in tf.config.list_physical_devices("GPU")]
    return {
        "cpu": cpu,
        "isa": isa,
        "cores": os.cpu_count(),
        "gpus": gpus,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def format_table(results, context):
    """Markdown: header (machine, floors), one row per variant, and the goal ratios."""
    flops = context["network_flops"]
    gemm = context["gemm"]
    floor = {p: flops / gemm[p] for p in gemm}
    lines = [
        f"preset {context['preset']}, image {context['height']}x{context['width']} uint8 -> canvas "
        f"{context['canvas'][0]}x{context['canvas'][1]}; {context['cpu']} ({context['cores']} cores; "
        f"ISA {', '.join(context['isa']) or 'no AVX-512'}{'; GPUs: ' + ', '.join(context['gpus']) if context['gpus'] else ''}); "
        f"TF {context['tensorflow']}, Keras {context['keras']}"
        + (f", torch {context['torch']}" if "torch" in context else ""),
        f"network {flops / 1e9:.1f} GFLOP; GEMM float32 {gemm['float32'] / 1e9:.0f} GFLOP/s -> floor "
        f"{floor['float32'] * 1e3:.0f} ms; GEMM bfloat16 {gemm['bfloat16'] / 1e9:.0f} GFLOP/s -> floor "
        f"{floor['bfloat16'] * 1e3:.0f} ms",
        "",
        "| precision | mode | ms / call | images/s | floor fraction (own precision) | x fp32 floor |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for (precision, mode), r in results.items():
        per_image = r["seconds"] / r["images"]
        own = floor.get(precision, floor["float32"]) if precision != "torch" else None
        own_txt = "" if own is None else f"{own / per_image:.2f}"
        lines.append(
            f"| {precision} | {mode} | {r['seconds'] * 1e3:.0f} | {1.0 / per_image:.2f} | {own_txt} | "
            f"{floor['float32'] / per_image:.2f} |"
        )
    lines.append("")
    for precision, xla in context["predict_xla"].items():
        if (precision, "predict") not in results:
            continue
        predict = results[(precision, "predict")]["seconds"]
        network = results[(precision, "network-xla" if xla else "network")]["seconds"]
        lines.append(
            f"- {precision}: predict uses the network {'under XLA' if xla else 'in the oneDNN graph (no XLA)'}; "
            f"pre + post = {(predict - network) * 1e3:.0f} ms = {(predict - network) / network * 100:.1f} % of the "
            f"network; predict = {floor.get(precision, floor['float32']) / predict:.2f} of the "
            f"{precision if precision in floor else 'float32'} floor, "
            f"{floor['float32'] / predict:.2f} of the float32 floor"
        )
        if ("torch", "channels_last bf16") in results:
            torch_s = results[("torch", "channels_last bf16")]["seconds"]
            lines[-1] += f"; PyTorch channels_last bf16 network / our predict = {torch_s / predict:.2f}"
    return "\n".join(lines)
