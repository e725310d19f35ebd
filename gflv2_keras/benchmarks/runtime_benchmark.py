"""``gflv2 benchmark --runtime``: the race of every runtime x precision, in one interleaved run.

Rows (``ROWS``): ``(runtime, precision)``; ``detect`` rows run the whole path of their own
artefact on the same uint8 RGB image of ``--image-size H W`` (so no export has to stretch it):

==========  ======================================  ===============================================
runtime     precisions                              what runs
==========  ======================================  ===============================================
tf          float32, bfloat16                       ``GFLV2Detector.detect`` (batch 1) / ``predict``
                                                    of B images (larger batches); bfloat16 =
                                                    ``dtype="mixed_bfloat16"``
onnxruntime float32, int8, int8-dynamic             ``gflv2 export --format onnx`` (``--weights``
                                                    fp32, int8 calibrated, int8-dynamic)
openvino    float32, bfloat16, int8                 the OpenVINO export: fp32 IR, the same IR with
                                                    bf16 compute (``load_exported(precision=)``),
                                                    int8 calibrated
litert      float32, int8-dynamic                   the LiteRT export (NMS in NumPy, included)
torch       float32, bfloat16, int8                 the PyTorch twin of the tests, *network only*
                                                    (no pre-/post-processing): channels_last
                                                    float32, channels_last + bf16 autocast, PT2E
                                                    int8 (X86InductorQuantizer, oneDNN int8
                                                    convolutions, Inductor)
==========  ======================================  ===============================================

The exports are written to a temporary folder at the fixed size ``H x W`` with ``batch_size=B`` for
each batch B of ``--batches``; B > 1 runs ``run_batch`` of B copies of the image (the NMS inside,
or LiteRT's NumPy one). ``int8`` exports are calibrated on ``CALIBRATION_IMAGES`` synthetic shape
images of the benchmark size (``data.synthetic.render_image``; the speed of an int8 graph does not
depend on where its ranges came from, its accuracy does: BENCHMARKS.md measures that on real
data); PyTorch int8 is calibrated on its N(0, 1) input. ``int8-dynamic`` quantizes the weights only
(a size option: slow in ONNX Runtime), so it is not in the default ``--precision``.

Timing: the matmul floors of every precision timed (``matmul_floors``: OpenVINO, PyTorch,
TensorFlow) run in the same rounds as the rows; ``warmup`` untimed calls each, then ``iterations``
rounds in which each row x batch and each floor runs once in turn (interleaved, so load from other
processes on a shared machine hits all alike); medians are reported (``race_report``). Every
runtime is limited to ``threads`` intra-op threads. A row that cannot run here (a runtime not
installed, no source checkout for PyTorch, a PT2E build that fails) is listed with the reason.
"""

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from gflv2_keras.benchmarks.inference_benchmark import machine_facts
from gflv2_keras.benchmarks.race_rows import DEFAULT_PRECISIONS, ROWS, RUNTIMES, select_rows

CALIBRATION_IMAGES = 8
# PyPI distributions whose versions the header names (package metadata: nothing is imported).
VERSIONED = ("tensorflow", "onnxruntime", "openvino", "ai-edge-litert", "torch", "torchao")


def _set_tf_threads(threads):
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    except RuntimeError:  # TensorFlow already initialised in this process: keep its setting
        pass


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


class _RowBuilder:
    """Builds each row's timed callables, one per batch, sharing detectors, exports and models."""

    def __init__(self, preset, image, batches, threads, random_weights, folder, log):
        self.preset, self.image, self.batches, self.threads = preset, image, batches, threads
        self.random_weights, self.folder, self.log = random_weights, Path(folder), log
        self.detectors, self.exports, self.calibration, self.torch_model = {}, {}, None, None

    def detector(self, precision):
        """The Keras detector in ``precision`` (same seed, so the same random weights in each)."""
        if precision not in self.detectors:
            import keras

            from gflv2_keras import GFLV2Detector
            from gflv2_keras.models.precision import PRECISIONS as KERAS_DTYPES

            keras.utils.set_random_seed(0)
            self.detectors[precision] = GFLV2Detector.from_preset(
                self.preset, load_weights=not self.random_weights, dtype=KERAS_DTYPES[precision]
            ).build_for_inference()
        return self.detectors[precision]

    def stacked(self, batch):
        return np.repeat(self.image[None], batch, axis=0)

    def build(self, runtime, precision):
        """``(note, runs, {batch: (callable, batch)}, {batch: reason})`` of one row."""
        if runtime == "tf":
            return self.keras_row(precision)
        if runtime == "torch":
            return self.torch_row(precision)
        return self.export_row(runtime, precision)

    def keras_row(self, precision):
        detector = self.detector(precision)
        calls = {b: ((lambda: detector.detect(self.image)) if b == 1 else
                     (lambda s=self.stacked(b): detector.predict(s, batch_size=len(s))), b)
                 for b in self.batches}  # fmt: skip
        dtype = "" if precision == "float32" else f", dtype {detector.dtype_policy.name}"
        return f"GFLV2Detector.detect / predict (tf.function{dtype})", "detect", calls, {}

    def export_row(self, runtime, precision):
        from gflv2_keras.export.formats import MissingRuntimeError
        from gflv2_keras.export.runtimes import load_exported

        fmt, weights = ROWS[(runtime, precision)]
        calls, missing, seconds = {}, {}, []
        for batch in self.batches:
            try:
                path, spent = self.export(fmt, weights, batch)
                exported = load_exported(path, threads=self.threads,
                                         precision="bfloat16" if precision == "bfloat16" else None)  # fmt: skip
            except MissingRuntimeError as error:
                missing[batch] = str(error).splitlines()[0]
                continue
            seconds.append(f"b{batch} {spent:.0f} s")
            calls[batch] = ((lambda e=exported: e.detect(self.image)) if batch == 1 else
                            (lambda e=exported, s=self.stacked(batch): e.run_batch(s)[0]["boxes"]), batch)  # fmt: skip
        compute = ", bf16 compute" if precision == "bfloat16" else ""
        note = f"{fmt} {weights} export{compute} ({', '.join(seconds)})" if seconds else ""
        if not calls:  # not available at all: the reason is the note
            return next(iter(missing.values())), "detect", {}, {}
        return note, "detect", calls, missing

    def export(self, fmt, weights, batch):
        """``(folder, seconds)`` of the ``fmt`` / ``weights`` export at ``batch``, written once."""
        from gflv2_keras.export.formats import export_portable

        key = (fmt, weights, batch)
        if key not in self.exports:
            height, width = self.image.shape[:2]
            if weights == "int8" and self.calibration is None:
                self.calibration = synthetic_calibration(self.folder / "calibration", height, width)
            self.log(f"exporting {fmt} {weights} at {height}x{width}, batch {batch} ...")
            start = time.perf_counter()
            path = export_portable(self.detector("float32"), fmt, self.folder / f"{fmt}-{weights}-b{batch}",
                                   input_size=(height, width), batch_size=batch, weights=weights,
                                   calibration=self.calibration if weights == "int8" else None)  # fmt: skip
            self.exports[key] = (path, time.perf_counter() - start)
        return self.exports[key]

    def torch_row(self, precision):
        from gflv2_keras.benchmarks import torch_inference
        from gflv2_keras.models.preprocessing import canvas_size

        runs = "network only"
        try:
            if self.torch_model is None:
                import torch

                config = torch_inference.reference_config(self.preset)
                model = torch_inference.reference_network(config, self.threads)
                self.torch_model = model.to(memory_format=torch.channels_last)
        except ValueError as error:
            return str(error), runs, {}, {}
        canvas = canvas_size(*self.image.shape[:2], self.detector("float32").input_scale)
        calls, missing = {}, {}
        for batch in self.batches:
            inputs = torch_inference.normal_inputs(batch, *canvas)
            if precision != "int8":
                calls[batch] = (torch_inference.network_call(self.torch_model, inputs, bf16=precision == "bfloat16"),
                                batch)  # fmt: skip
                continue
            self.log(f"building PyTorch int8 (PT2E, X86InductorQuantizer, Inductor) at batch {batch} ...")
            try:
                calls[batch] = (torch_inference.pt2e_int8(self.torch_model, inputs), batch)
            except Exception as error:  # noqa: BLE001 - a build failure is the row's reason, not the run's end
                missing[batch] = f"{type(error).__name__}: {(str(error).strip().splitlines() or [''])[0]}"
        note = {"float32": "PyTorch twin, channels_last (network only: no pre-/post-processing)",
                "bfloat16": "PyTorch twin, channels_last + bf16 autocast (network only)",
                "int8": "PyTorch twin, PT2E int8: X86InductorQuantizer + Inductor (network only)"}  # fmt: skip
        note = note[precision]
        if not calls:
            return f"PT2E int8 could not be built: {next(iter(missing.values()))}", runs, {}, {}
        return note, runs, calls, missing


def run_runtime_benchmark(preset, height, width, runtimes=RUNTIMES, precisions=DEFAULT_PRECISIONS, batches=(1,),
                          warmup=2, iterations=5, threads=2, random_weights=True, log=print):  # fmt: skip
    """Time every selected row x batch and the matmul floors in the same interleaved rounds.

    Args:
        runtimes: names of ``NAMES`` (``select_rows``); precisions: of ``PRECISIONS``.
        batches: images per call; each gets its own exports (``batch_size``).

    Returns:
        ``(rows, context)`` of ``race_report`` (``format_race_table``).
    """
    from gflv2_keras.benchmarks import matmul_floors
    from gflv2_keras.benchmarks.inference_benchmark import count_network_flops, time_rounds
    from gflv2_keras.benchmarks.race_report import floor_precision
    from gflv2_keras.models.preprocessing import canvas_size

    keys = select_rows(list(runtimes), list(precisions))
    if iterations < 1:
        raise ValueError(f"--iterations must be >= 1, got {iterations}")
    batches = sorted(set(batches))
    if not batches or batches[0] < 1:
        raise ValueError(f"--batches must be positive, got {batches}")
    _set_tf_threads(threads)
    image = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    rows, variants = [], {}
    with tempfile.TemporaryDirectory(prefix="gflv2_runtime_bench_") as folder:
        builder = _RowBuilder(preset, image, batches, threads, random_weights, folder, log)
        for key in keys:
            note, runs, calls, missing = builder.build(*key)
            rows.append({"runtime": key[0], "precision": key[1], "runs": runs, "note": note, "times": {},
                         "unavailable": missing})  # fmt: skip
            variants.update({_variant(*key, batch): call for batch, call in calls.items()})
        wanted = sorted({floor_precision(p) for _, p in keys}, key=matmul_floors.FLOOR_PRECISIONS.index)
        floors = matmul_floors.floor_calls(wanted, threads)
        variants.update({_floor_variant(*name): (call, 1) for name, call in floors.items()})
        samples = time_rounds(variants, warmup=warmup, repeats=iterations, log=log)
    for row in rows:
        for batch in batches:
            values = samples.get(_variant(row["runtime"], row["precision"], batch))
            if values:
                row["times"][batch] = {"median_ms": statistics.median(values) * 1e3, "min_ms": min(values) * 1e3,
                                       "max_ms": max(values) * 1e3}  # fmt: skip
    facts = machine_facts()
    detector = builder.detector("float32")
    canvas = canvas_size(height, width, detector.input_scale)
    context = {"preset": preset, "height": height, "width": width, "canvas": canvas, "batches": batches,
               "threads": threads, "warmup": warmup, "iterations": iterations, "cpu": facts["cpu"],
               "isa": " ".join(facts["isa"]), "random_weights": random_weights, "versions": library_versions(),
               "matmul_size": matmul_floors.MATMUL_SIZE, "network_flops": count_network_flops(detector, *canvas),
               "floors": matmul_floors.floor_rates({name: statistics.median(samples[_floor_variant(*name)])
                                                    for name in floors})}  # fmt: skip
    return rows, context


def _variant(runtime, precision, batch):
    """The timed name of a row at a batch (what the progress lines show)."""
    return f"{runtime} {precision} b{batch}"


def _floor_variant(precision, library):
    return f"matmul {precision} {library}"


def library_versions(packages=VERSIONED):
    """``"tensorflow 2.21.0, onnxruntime 1.32.0, ..."`` of the installed ones (package metadata)."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for package in packages:
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            pass
    return ", ".join(found)


def run_from_args(args):
    """The ``gflv2 benchmark --runtime`` command body (arguments of ``benchmarks/cli.py``)."""
    from gflv2_keras.benchmarks.race_report import format_race_table

    rows, context = run_runtime_benchmark(
        args.preset,
        args.size[0],
        args.size[1],
        runtimes=[r for r in args.runtime.split(",") if r],
        precisions=args.precisions or DEFAULT_PRECISIONS,
        batches=args.batches,
        warmup=args.warmup,
        iterations=args.repeats,
        threads=args.threads,
        random_weights=args.random_weights,
    )
    print()
    print(format_race_table(rows, context))
    return 0
