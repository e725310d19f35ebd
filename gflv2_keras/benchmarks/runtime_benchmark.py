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

int8 rows: ``onnxruntime-int8`` and ``openvino-int8`` are the calibrated exports (``--weights int8``,
``export.quantize``: int8 weights and activations), calibrated on ``CALIBRATION_IMAGES`` synthetic
shape images of the benchmark size (``data.synthetic.render_image``; the speed of an int8 graph
does not depend on where its ranges came from, its accuracy does: BENCHMARKS.md measures that
on real data); ``onnxruntime-int8-dynamic`` and ``litert-int8-dynamic`` quantize the weights only.
"""

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from gflv2_keras.benchmarks.inference_benchmark import machine_facts

RUNTIMES = ("tf", "onnxruntime", "openvino", "litert", "onnxruntime-int8", "openvino-int8",
            "onnxruntime-int8-dynamic", "litert-int8-dynamic")  # fmt: skip
# runtime -> (export format, --weights)
EXPORTS = {
    "onnxruntime": ("onnx", "fp32"),
    "openvino": ("openvino", "fp32"),
    "litert": ("litert", "fp32"),
    "onnxruntime-int8": ("onnx", "int8"),
    "openvino-int8": ("openvino", "int8"),
    "onnxruntime-int8-dynamic": ("onnx", "int8-dynamic"),
    "litert-int8-dynamic": ("litert", "int8-dynamic"),
}
CALIBRATION_IMAGES = 8


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

    runners, calibration = {}, None
    for runtime in runtimes:
        if runtime == "tf":
            runners[runtime] = (detector.detect, "GFLV2Detector.detect (tf.function)")
            continue
        fmt, weights = EXPORTS[runtime]
        log(f"exporting {fmt} {weights} at {height}x{width} ...")
        try:
            if weights == "int8" and calibration is None:
                calibration = synthetic_calibration(Path(folder) / "calibration", height, width)
            start = time.perf_counter()
            path = export_portable(detector, fmt, Path(folder) / runtime, input_size=(height, width), weights=weights,
                                   calibration=calibration if weights == "int8" else None)  # fmt: skip
            seconds = time.perf_counter() - start
            runners[runtime] = (load_exported(path, threads=threads).detect,
                                f"{fmt} {weights} export ({seconds:.0f} s)")  # fmt: skip
        except MissingRuntimeError as error:
            runners[runtime] = (None, str(error).splitlines()[0])
    return runners


def synthetic_calibration(folder, height, width, count=CALIBRATION_IMAGES):
    """``CalibrationImages`` of ``count`` synthetic shape images of ``height x width`` written to ``folder``."""
    from PIL import Image

    from gflv2_keras.data.synthetic import render_image
    from gflv2_keras.export.calibration import calibration_images

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    side = min(height, width)
    for index in range(count):
        image, _ = render_image(rng, (side, max(height, width)), max_objects=6, object_size=(side // 16, side // 2))
        Image.fromarray(image).resize((width, height)).save(folder / f"{index:03d}.png")
    return calibration_images(folder, count=None, log=lambda line: None)


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
        # With int8 rows, the matmul floors are timed in the same rounds (the same load as the rows).
        floors = matmul_floor_calls(threads) if any(r.endswith("-int8") for r in available) else {}
        timed = {**available, **{f"matmul {p}": call for p, call in floors.items()}}
        for name, fn in timed.items():
            log(f"warming up {name} ({warmup} calls) ...")
            for _ in range(warmup):
                fn(image)
            times[name] = []
        for round_index in range(iterations):
            for name, fn in timed.items():  # interleaved: shared-machine load hits all alike
                start = time.perf_counter()
                fn(image)
                times[name].append(time.perf_counter() - start)
            log(f"round {round_index + 1}/{iterations}: "
                + ", ".join(f"{n} {times[n][-1] * 1e3:.0f} ms" for n in timed))  # fmt: skip
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
    if floors:
        from gflv2_keras.benchmarks.inference_benchmark import count_network_flops
        from gflv2_keras.models.preprocessing import canvas_size

        context["floors"] = {p: 2.0 * MATMUL_SIZE**3 / statistics.median(times[f"matmul {p}"]) for p in floors}
        context["network_flops"] = count_network_flops(detector, *canvas_size(height, width, detector.input_scale))
    return rows, context


MATMUL_SIZE = 2048


def matmul_floor_calls(threads, size=MATMUL_SIZE):
    """``{"float32": call, "int8": call}``: one ``size^3`` matmul each in OpenVINO's CPU plugin (oneDNN).

    The int8 one has ``FakeQuantize`` on both operands, which the plugin runs as a u8 x s8 GEMM
    (VNNI / AMX where present): the rate int8 convolutions can reach, as the float32 one is the
    float32 convolutions' (TensorFlow's own float32 floor is the inference table's GEMM floor).
    Each call ignores its argument (it is timed like a runtime's ``detect(image)``). Empty when
    OpenVINO is not installed.
    """
    try:
        import openvino as ov
        import openvino.opset13 as opset
    except ImportError:
        return {}
    rng = np.random.default_rng(0)
    weights = opset.constant(rng.standard_normal((size, size)).astype(np.float32))
    calls = {}
    for precision in ("float32", "int8"):
        a = opset.parameter([size, size], np.float32, name="a")
        if precision == "int8":
            low, high = opset.constant(np.float32(-4.0)), opset.constant(np.float32(4.0))
            product = opset.matmul(opset.fake_quantize(a, low, high, low, high, 256),
                                   opset.fake_quantize(weights, low, high, low, high, 255), False, False)  # fmt: skip
        else:
            product = opset.matmul(a, weights, False, False)
        compiled = ov.Core().compile_model(ov.Model([product], [a]), "CPU",
                                           {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads})  # fmt: skip
        request, x = compiled.create_infer_request(), rng.standard_normal((size, size)).astype(np.float32)
        calls[precision] = lambda _image, request=request, x=x: request.infer({0: x})
    return calls


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
    lines = [header, "", "| runtime | detect ms (median) | min–max ms | vs tf | artefact | images/s |",
             "|---|---:|---:|---:|---|---:|"]  # fmt: skip
    for r in timed:
        ratio = f"{tf_ms / r['median_ms']:.2f}x" if tf_ms else "–"
        lines.append(f"| {r['runtime']} | {r['median_ms']:.0f} | {r['min_ms']:.0f}–{r['max_ms']:.0f} | {ratio} | "
                     f"{r['note']} | {1e3 / r['median_ms']:.2f} |")  # fmt: skip
    for r in rows:
        if r["median_ms"] is None:
            lines.append(f"| {r['runtime']} | – | – | – | not available: {r['note']} |")
    floors, flops = context.get("floors"), context.get("network_flops")
    if floors and flops:
        floor_ms = {p: flops / rate * 1e3 for p, rate in floors.items()}
        lines += ["", f"matmul floors (OpenVINO / oneDNN, {MATMUL_SIZE}^3, {context['threads']} threads, timed in the "
                  "same rounds): float32 "
                  f"{floors['float32'] / 1e9:.0f} GFLOP/s, int8 {floors['int8'] / 1e9:.0f} GOP/s; network "
                  f"{flops / 1e9:.0f} GFLOP -> floor float32 {floor_ms['float32']:.0f} ms, int8 {floor_ms['int8']:.0f} ms"]  # fmt: skip
        shares = [f"{r['runtime']} {floor_ms['int8' if r['runtime'].endswith('-int8') else 'float32'] / r['median_ms']:.2f}"
                  for r in timed]  # fmt: skip
        lines.append("share of the floor of its precision (floor ms / detect ms): " + ", ".join(shares))
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
