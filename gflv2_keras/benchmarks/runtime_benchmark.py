"""``gflv2 benchmark --runtime tf,onnxruntime,openvino,litert``: ``detect`` latency per runtime.

Every runtime gets the same uint8 RGB image of ``--size H W`` (so no export has to stretch it)
and runs the whole ``detect`` path of its own artefact: TensorFlow ``GFLV2Detector.detect``
(preprocessing, network, decoding, NMS in a ``tf.function``), and the ``gflv2 export`` folders
written to a temporary directory at that fixed input size, run through
``gflv2_keras.export.runtimes.load_exported`` (ONNX Runtime and OpenVINO hold the NMS; LiteRT
leaves it to the NumPy post-processing, included in its time).

Timing: ``warmup`` untimed calls per runtime, then ``iterations`` rounds in which each runtime
runs once in turn (interleaved, so load from other processes on a shared machine hits every
runtime alike); the median per runtime is reported. All runtimes are limited to ``threads``
intra-op threads.
"""

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from gflv2_keras.benchmarks.inference_benchmark import machine_facts

RUNTIMES = ("tf", "onnxruntime", "openvino", "litert")
EXPORT_FORMATS = {"onnxruntime": "onnx", "openvino": "openvino", "litert": "litert"}


def _set_tf_threads(threads):
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already initialised in this process: keep its setting
        pass


def _runners(detector, runtimes, height, width, threads, folder, log):
    """``{runtime: (detect callable, note)}``; a runtime that cannot run gets ``(None, reason)``."""
    from gflv2_keras.export.formats import MissingRuntimeError, export_portable
    from gflv2_keras.export.runtimes import load_exported

    runners = {}
    for runtime in runtimes:
        if runtime == "tf":
            runners[runtime] = (detector.detect, "GFLV2Detector.detect (tf.function)")
            continue
        fmt = EXPORT_FORMATS[runtime]
        log(f"exporting {fmt} at {height}x{width} ...")
        try:
            start = time.perf_counter()
            path = export_portable(detector, fmt, Path(folder) / fmt, input_size=(height, width))
            seconds = time.perf_counter() - start
            runners[runtime] = (load_exported(path, threads=threads).detect, f"{fmt} export ({seconds:.0f} s)")
        except MissingRuntimeError as error:
            runners[runtime] = (None, str(error).splitlines()[0])
    return runners


def run_runtime_benchmark(preset, height, width, runtimes=RUNTIMES, warmup=2, iterations=5, threads=2,
                          random_weights=True, log=print):  # fmt: skip
    """Time ``detect`` of each runtime on one ``[height, width, 3]`` image.

    Returns:
        ``(rows, context)``: rows ``{"runtime", "note", "median_ms", "min_ms", "max_ms"}``
        (``median_ms`` None where the runtime is unavailable) and the run's facts.
    """
    unknown = [r for r in runtimes if r not in RUNTIMES]
    if unknown:
        raise ValueError(f"unknown --runtime {', '.join(unknown)}; valid: {', '.join(RUNTIMES)}")
    if iterations < 1:
        raise ValueError(f"--iterations must be >= 1, got {iterations}")
    _set_tf_threads(threads)
    from gflv2_keras import GFLV2Detector

    detector = GFLV2Detector.from_preset(preset, load_weights=not random_weights).build_for_inference()
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    times = {}
    with tempfile.TemporaryDirectory(prefix="gflv2_runtime_bench_") as folder:
        runners = _runners(detector, runtimes, height, width, threads, folder, log)
        available = {name: fn for name, (fn, _) in runners.items() if fn is not None}
        for name, fn in available.items():
            log(f"warming up {name} ({warmup} calls) ...")
            for _ in range(warmup):
                fn(image)
            times[name] = []
        for round_index in range(iterations):
            for name, fn in available.items():  # interleaved: shared-machine load hits all alike
                start = time.perf_counter()
                fn(image)
                times[name].append(time.perf_counter() - start)
            log(f"round {round_index + 1}/{iterations}: "
                + ", ".join(f"{n} {times[n][-1] * 1e3:.0f} ms" for n in available))  # fmt: skip
    rows = []
    for name, (_, note) in runners.items():
        samples = times.get(name)
        rows.append({
            "runtime": name,
            "note": note,
            "median_ms": statistics.median(samples) * 1e3 if samples else None,
            "min_ms": min(samples) * 1e3 if samples else None,
            "max_ms": max(samples) * 1e3 if samples else None,
        })  # fmt: skip
    facts = machine_facts()
    cpu, isa = facts["cpu"], " ".join(facts["isa"])
    context = {"preset": preset, "height": height, "width": width, "threads": threads, "warmup": warmup,
               "iterations": iterations, "cpu": cpu, "isa": isa, "random_weights": random_weights}  # fmt: skip
    return rows, context


def format_runtime_table(rows, context):
    """Markdown table, fastest first, with a header naming the input, threads, CPU and ISA."""
    header = (
        f"preset {context['preset']}{' (random weights)' if context['random_weights'] else ''}, "
        f"input {context['height']}x{context['width']}, batch 1, {context['threads']} threads; "
        f"{context['warmup']} warm-up + median of {context['iterations']} interleaved runs; "
        f"CPU {context['cpu']} ({context['isa'] or 'ISA unknown'})"
    )
    timed = sorted((r for r in rows if r["median_ms"] is not None), key=lambda r: r["median_ms"])
    tf_ms = next((r["median_ms"] for r in timed if r["runtime"] == "tf"), None)
    lines = [header, "", "| runtime | detect ms (median) | min–max ms | vs tf | artefact |", "|---|---:|---:|---:|---|"]
    for r in timed:
        ratio = f"{tf_ms / r['median_ms']:.2f}x" if tf_ms else "–"
        lines.append(f"| {r['runtime']} | {r['median_ms']:.0f} | {r['min_ms']:.0f}–{r['max_ms']:.0f} | {ratio} | "
                     f"{r['note']} |")  # fmt: skip
    for r in rows:
        if r["median_ms"] is None:
            lines.append(f"| {r['runtime']} | – | – | – | not available: {r['note']} |")
    return "\n".join(lines)


def run_from_args(args):
    """The ``gflv2 benchmark --runtime`` command body (arguments of ``benchmarks/cli.py``)."""
    rows, context = run_runtime_benchmark(
        args.preset,
        args.size[0],
        args.size[1],
        runtimes=[r for r in args.runtime.split(",") if r],
        warmup=args.warmup,
        iterations=args.repeats,
        threads=args.threads,
        random_weights=args.random_weights,
    )
    print()
    print(format_runtime_table(rows, context))
    return 0
