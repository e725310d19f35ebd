"""``compile_for_inference``: a detector's ``detect`` in the runtime and precision asked for, or the fastest.

``compile_for_inference(detector, runtime, precision)`` (also ``detector.compile_for_inference``,
``gflv2 predict|evaluate --runtime``) returns a ``CompiledDetector``: ``detect(image)`` as
``GFLV2Detector.detect`` (uint8 RGB ``[H, W, 3]`` of any size -> ``{"boxes": [K, 4] in the
detector's bounding_box_format of the original image, "confidence": [K], "labels": [K]}``), and
what runs it (``runtime``, ``precision``, ``reason``).

* ``tf``: the detector itself, or its twin in the dtype policy of ``precision``
  (``models.precision.PRECISIONS``: ``mixed_bfloat16``, ``mixed_float16``; same weights).
* ``onnxruntime`` / ``openvino``: the per-image-canvas export (``export_portable(...,
  input_size="dynamic")``: the official resize inside, any image size, the detections of
  ``detect``); OpenVINO ``bfloat16`` runs the float32 IR with the CPU plugin's bf16 hint; ``int8``
  is the calibrated export of either (``export.quantize``; per-image canvas too, so its boxes are
  in original pixels).
* ``litert``: the fixed-canvas export (images letterboxed into the preset's input scale as a
  landscape canvas): close to, not equal to, ``detect``'s detections.

Exports are made once per model and kept (``inference.runtime_cache``).

``auto``: every installed runtime of ``precision`` (``runtime_options.RUNTIME_PRECISIONS``) runs
the probe image (the caller's, e.g. the first image of the command, else ``probe_image_for``: a
deterministic image of the preset's input scale). In float32 a runtime qualifies only if it
keeps TensorFlow's detections: ``agreement`` >= ``MIN_AGREEMENT`` (one-to-one matches of the same
label at IoU >= ``MATCH_IOU``, over the larger of the two counts); LiteRT's fixed canvas also has
to pass on the probe turned by 90 degrees (its letterbox pads an image of the other orientation
most), and on detections: where TensorFlow finds none on either probe it cannot show that it
agrees and is left out (the per-image-canvas exports run ``detect``'s own graph). In bfloat16
and int8 the agreement with float32 TensorFlow is reported, not required (the precision is the
user's choice of speed over exactness). The qualified runtimes are timed:
``repeats`` interleaved rounds after the agreement call (the warm-up), median per runtime; the
fastest is chosen. The choice is kept in ``auto-PRECISION-MACHINE.json`` beside the exports: per
model fingerprint, precision and machine (``machine_facts``: CPU model, ISA, cores, threads,
runtime package versions); a later call reuses it and says so (``remeasure=True``,
``--remeasure``, or deleting the file measures again).
"""

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from gflv2_keras.inference.runtime_options import RUNTIME_PRECISIONS, check_runtime_precision, missing_module

MIN_AGREEMENT = 0.99
MATCH_IOU = 0.9
REPEATS = 5
CANDIDATES = ("tf", "onnxruntime", "openvino", "litert")  # auto's order of measurement
# (runtime, precision) -> (export format, weights, per-image canvas?)
EXPORTS = {
    ("onnxruntime", "float32"): ("onnx", "fp32", True),
    ("onnxruntime", "int8"): ("onnx", "int8", True),
    ("openvino", "float32"): ("openvino", "fp32", True),
    ("openvino", "bfloat16"): ("openvino", "fp32", True),  # the float32 IR, bf16 compute hint
    ("openvino", "int8"): ("openvino", "int8", True),
    ("litert", "float32"): ("litert", "fp32", False),
}


class CompiledDetector:
    """What ``compile_for_inference`` returns: ``detect`` like ``GFLV2Detector.detect``, and its runtime.

    Attributes:
        runtime: ``tf``, ``onnxruntime``, ``openvino`` or ``litert``.
        precision: ``float32``, ``bfloat16``, ``float16`` or ``int8``.
        reason: one line: why this runtime (asked for, or auto's measurement / cached choice).
        model: what runs: the ``GFLV2Detector`` (``tf``) or an ``export.runtimes.ExportedDetector``.
        folder: the export folder in the cache (``None`` for ``tf``).
        measurements: auto's rows ``{"runtime", "median_ms", "agreement", "qualified", "note"}`` (else ``None``).
        bounding_box_format, class_names, num_classes, input_scale: the source detector's.
    """

    def __init__(self, model, runtime, precision, reason, source, folder=None, measurements=None):
        self.model = model
        self.runtime = runtime
        self.precision = precision
        self.reason = reason
        self.folder = folder
        self.measurements = measurements
        self.bounding_box_format = source.bounding_box_format
        self.class_names = source.class_names
        self.num_classes = source.num_classes
        self.input_scale = tuple(source.input_scale)

    def detect(self, image, bounding_box_format=None):
        """One uint8 RGB ``[H, W, 3]`` image -> ``{"boxes", "confidence", "labels"}`` of the original image.

        Boxes in ``bounding_box_format`` (default: the source detector's).
        """
        return self.model.detect(image, bounding_box_format=bounding_box_format or self.bounding_box_format)

    def __repr__(self):
        return f"<CompiledDetector {self.runtime} {self.precision}: {self.reason}>"


def compile_for_inference(detector, runtime="auto", precision="float32", calibration_data=None,
                          calibration_images=None, cache_dir=None, threads=None, probe_image=None, remeasure=False,
                          candidates=None, repeats=REPEATS, log=print):  # fmt: skip
    """``detector``'s ``detect`` in ``runtime`` and ``precision`` (see the module docstring).

    Args:
        detector: a ``GFLV2Detector`` (any dtype policy; exports are traced from a float32 twin).
        runtime: ``auto``, ``tf``, ``onnxruntime``, ``openvino`` or ``litert``.
        precision: ``float32``, ``bfloat16``, ``float16`` or ``int8`` (``runtime_options.RUNTIME_PRECISIONS``).
        calibration_data: int8 only, and needed there: a path ``export.calibration.calibration_images``
            reads (dataset or image folder) or a ``CalibrationImages``.
        calibration_images: how many images of a ``calibration_data`` path (default
            ``export.calibration.DEFAULT_IMAGES``).
        cache_dir: the cache folder (``runtime_cache.cache_root``).
        threads: intra-op threads of ONNX Runtime / OpenVINO / LiteRT (default: theirs); TensorFlow
            keeps its process-wide setting.
        probe_image: auto's probe, uint8 ``[H, W, 3]`` (default ``probe_image_for``).
        remeasure: auto: measure again instead of reusing the cached choice.
        candidates: auto: the runtimes to consider (default all of ``CANDIDATES``).
        repeats: auto: timed runs per runtime.
        log: callable taking one line.

    Returns:
        A ``CompiledDetector``.

    Raises:
        ValueError: a runtime / precision pair that does not exist, int8 without calibration data
            or calibration data without int8; ``export.formats.MissingRuntimeError`` (a
            ``UserError``) naming the extra to install.
    """
    check_runtime_precision(runtime, precision)
    if precision == "int8" and calibration_data is None:
        raise ValueError("precision int8 needs calibration data (calibration_data=PATH, --calibration-data PATH): "
                         "the int8 activation ranges are measured on those images")  # fmt: skip
    if precision != "int8" and calibration_data is not None:
        raise ValueError(f"calibration data is for precision int8, not {precision}")
    builder = _Builder(detector, precision, calibration_data, calibration_images, cache_dir, threads, log)
    if runtime != "auto":
        return builder.compiled(runtime, f"--runtime {runtime} asked for")
    return _auto(builder, candidates, probe_image, remeasure, repeats)


def detector_in_precision(detector, precision):
    """``detector`` if its dtype policy is ``precision``'s, else its twin in that policy (same weights).

    The twin is written to a temporary preset folder and loaded back with ``dtype=``, the
    documented way to a dtype policy (``from_preset``).
    """
    from gflv2_keras.models.precision import PRECISIONS

    policy = PRECISIONS[precision]
    if detector.dtype_policy.name == policy:
        return detector
    with tempfile.TemporaryDirectory(prefix="gflv2_twin_") as folder:
        preset = Path(folder) / "preset"
        detector.save_to_preset(preset)
        return type(detector).from_preset(str(preset), dtype=policy)


def probe_image_for(input_scale, seed=0):
    """A deterministic uint8 RGB probe ``[short, long, 3]`` of the preset's input scale (landscape).

    Random 8x8-pixel blocks: structure at several scales, so even random weights detect something.
    """
    long_side, short_side = max(input_scale), min(input_scale)
    blocks = np.random.default_rng(seed).integers(0, 256, (short_side // 8 + 1, long_side // 8 + 1, 3))
    return np.kron(blocks, np.ones((8, 8, 1)))[:short_side, :long_side].astype(np.uint8)


def agreement(reference, found, iou=MATCH_IOU):
    """Share of ``reference``'s detections that ``found`` keeps: one-to-one matches of the same label at
    IoU >= ``iou`` (``evaluation.matching.match_image``, greedy by score) over the larger of the two counts.

    Both are ``detect`` dicts with xyxy boxes; 1.0 when both are empty.
    """
    from gflv2_keras.evaluation.matching import match_image

    count = max(len(reference["labels"]), len(found["labels"]))
    if not count:
        return 1.0
    match = match_image(reference["boxes"], reference["labels"], found["boxes"], found["labels"],
                        found["confidence"], iou_threshold=iou, score_threshold=-np.inf)  # fmt: skip
    return match.true_positives / count


def agreement_note(reference, found, share):
    """One phrase: how much of tf float32's ``reference`` detections ``found`` keeps (``share``: ``agreement``)."""
    if len(reference["labels"]):
        return (f"keeps {share:.1%} of tf float32's {len(reference['labels'])} detections "
                f"(same label, IoU >= {MATCH_IOU})")  # fmt: skip
    if len(found["labels"]):
        return f"{len(found['labels'])} detections where tf float32 has none"
    return "no detections on the probe, as tf float32"


def machine_facts(threads=None):
    """What a measured choice holds for: CPU model and ISA, cores, GPUs, threads, runtime package versions."""
    import gflv2_keras
    from gflv2_keras.benchmarks.inference_benchmark import machine_facts as benchmark_facts
    from gflv2_keras.inference.runtime_cache import package_versions

    facts = benchmark_facts()
    return {"cpu": facts["cpu"], "isa": facts["isa"], "cores": facts["cores"], "gpus": facts["gpus"],
            "threads": threads, "packages": {"gflv2_keras": gflv2_keras.__version__, **package_versions()}}  # fmt: skip


class _Builder:
    """Builds each runtime's ``CompiledDetector`` of one detector, precision and cache (exports made once)."""

    def __init__(self, detector, precision, calibration_data, calibration_images, cache_dir, threads, log):
        from gflv2_keras.inference.runtime_cache import cache_root

        self.detector = detector
        self.precision = precision
        self.calibration_data = calibration_data
        self.calibration_images = calibration_images
        self.root = cache_root(cache_dir)
        self.threads = threads
        self.log = log
        self._float32 = None
        self._calibration = None
        self._folder = None

    @property
    def float32(self):
        """The float32 detector: the reference and what every export is traced from."""
        if self._float32 is None:
            self._float32 = detector_in_precision(self.detector, "float32")
        return self._float32

    @property
    def calibration(self):
        if self._calibration is None and self.precision == "int8":
            from gflv2_keras.export.calibration import DEFAULT_IMAGES, CalibrationImages, calibration_images

            data = self.calibration_data
            if isinstance(data, CalibrationImages):
                self._calibration = data
            else:
                count = DEFAULT_IMAGES if self.calibration_images is None else self.calibration_images
                self._calibration = calibration_images(data, count=count, log=self.log)
                self.log(f"[runtime] calibration: {self._calibration.describe()}")
        return self._calibration

    @property
    def folder(self):
        """``ROOT/models/FINGERPRINT``: this model's exports and measured choices."""
        if self._folder is None:
            from gflv2_keras.inference.runtime_cache import model_fingerprint

            start = time.perf_counter()
            fingerprint = model_fingerprint(self.detector, self.calibration)
            self._folder = self.root / "models" / fingerprint[:32]
            seconds = time.perf_counter() - start
            if seconds > 1.0:
                self.log(f"[runtime] model fingerprint {fingerprint[:12]} ({seconds:.1f} s)")
        return self._folder

    def compiled(self, runtime, reason):
        """The ``CompiledDetector`` of ``runtime`` in this precision; exports it into the cache if needed."""
        if runtime == "tf":
            float32 = self.precision == "float32"
            model = self.float32 if float32 else detector_in_precision(self.detector, self.precision)
            return CompiledDetector(model, "tf", self.precision, reason, self.detector)
        from gflv2_keras.export.formats import require
        from gflv2_keras.export.runtimes import load_exported
        from gflv2_keras.inference.runtime_options import runtime_modules

        for module, extra in runtime_modules(runtime, self.precision):
            require(module, extra)  # MissingRuntimeError naming the extra, before any export
        folder = self.export(runtime)
        compute = "bfloat16" if self.precision == "bfloat16" else None  # OpenVINO's hint; int8 is in the graph
        model = load_exported(folder, threads=self.threads, precision=compute)
        return CompiledDetector(model, runtime, self.precision, reason, self.detector, folder=folder)

    def export(self, runtime):
        """The cached export folder of ``runtime`` in this precision (written once: ``runtime_cache.cached_export``)."""
        from gflv2_keras.export.graph import DYNAMIC
        from gflv2_keras.inference.runtime_cache import cached_export

        fmt, weights, per_image = EXPORTS[runtime, self.precision]
        target = self.folder / f"{fmt}-{weights}-{'per_image' if per_image else 'fixed'}"

        def write(path):
            from gflv2_keras.export.formats import export_portable

            self.log(f"[runtime] exporting {runtime} {self.precision} ({fmt} {weights}, "
                     f"{'any image size' if per_image else 'fixed canvas'}) once into {path} ...")  # fmt: skip
            start = time.perf_counter()
            export_portable(self.float32, fmt, path, input_size=DYNAMIC if per_image else None, weights=weights,
                            calibration=self.calibration if weights == "int8" else None)  # fmt: skip
            self.log(f"[runtime] exported in {time.perf_counter() - start:.0f} s")

        folder, written = cached_export(target, write, self.log)
        if not written:
            self.log(f"[runtime] {runtime} {self.precision}: cached export {folder}")
        return folder


def _auto(builder, candidates, probe_image, remeasure, repeats):
    """``auto`` (module docstring): the cached choice, or measure, choose and cache."""
    precision, log = builder.precision, builder.log
    names = list(CANDIDATES if candidates is None else candidates)
    unknown = [name for name in names if name not in CANDIDATES]
    if unknown or not names:
        raise ValueError(f"auto candidates must be among {', '.join(CANDIDATES)}, got {names}")
    names = [name for name in names if precision in RUNTIME_PRECISIONS[name]]
    if not names:
        raise ValueError(f"none of the auto candidates runs {precision}")
    if len(names) == 1:
        return builder.compiled(names[0], f"auto: {names[0]} is the only candidate runtime of {precision}")
    if repeats < 1:
        raise ValueError(f"repeats must be 1 or more, got {repeats}")
    facts = machine_facts(builder.threads)
    key = _digest({"facts": facts, "candidates": sorted(names)})[:12]
    decision_path = builder.folder / f"auto-{precision}-{key}.json"
    if decision_path.is_file() and not remeasure:
        decision = _read_decision(decision_path)
        if decision is not None and decision.get("runtime") in names:
            chosen = decision["runtime"]
            log(f"[runtime] auto {precision}: {chosen} (measured {decision.get('measured', '?')} on this machine, "
                f"cached in {decision_path}; --remeasure or deleting that file measures again)")  # fmt: skip
            return builder.compiled(chosen, f"auto: cached choice ({decision_path})")
        log(f"[runtime] {decision_path}: unreadable choice, measuring again")
    return _measure(builder, names, probe_image, repeats, facts, decision_path)


def _measure(builder, names, probe_image, repeats, facts, decision_path):
    from gflv2_keras.utils.files import atomic_write

    precision, log = builder.precision, builder.log
    described = "the probe image" if probe_image is not None else "a synthetic image of the input scale"
    probe = probe_image if probe_image is not None else probe_image_for(builder.detector.input_scale)
    probe = np.ascontiguousarray(probe, dtype=np.uint8)
    log(f"[runtime] auto {precision}: measuring {', '.join(names)} on {described} ({probe.shape[1]}x{probe.shape[0]}) "
        f"on {facts['cpu']} ({facts['cores']} cores{f', {builder.threads} threads' if builder.threads else ''})")
    reference = builder.float32.detect(probe, bounding_box_format="xyxy")
    turned = None
    rows, runners = [], {}
    for name in names:
        row = {"runtime": name, "median_ms": None, "agreement": None, "qualified": False, "note": ""}
        rows.append(row)
        missing = missing_module(name, precision)
        if missing:
            row["note"] = f"not installed (pip install 'gflv2-keras[{missing[1]}]')"
            log(f"[runtime]   {name:<11} {row['note']}")
            continue
        compiled = builder.compiled(name, "auto")
        found = compiled.detect(probe, bounding_box_format="xyxy")  # also the warm-up call
        row["agreement"] = agreement(reference, found)
        row["note"] = agreement_note(reference, found, row["agreement"])
        row["qualified"] = precision != "float32" or row["agreement"] >= MIN_AGREEMENT
        if not row["qualified"]:
            row["note"] += f" < {MIN_AGREEMENT:.0%}: left out"
        elif precision == "float32" and name == "litert":
            # An approximation has to show that it agrees: on the probe and on the probe turned by 90 degrees.
            turned = turned if turned is not None else np.ascontiguousarray(np.rot90(probe))
            expected = builder.float32.detect(turned, bounding_box_format="xyxy")
            kept = agreement(expected, compiled.detect(turned, bounding_box_format="xyxy"))
            row["note"] += f"; turned 90 degrees (fixed canvas, letterboxed) {kept:.1%}"
            if kept < MIN_AGREEMENT:
                row["qualified"], row["note"] = False, row["note"] + f" < {MIN_AGREEMENT:.0%}: left out"
            elif not (len(reference["labels"]) and len(expected["labels"])):
                row["qualified"] = False
                row["note"] += "; no detections to compare, so the fixed canvas cannot show it agrees: left out"
        if row["qualified"]:
            runners[name] = compiled
    if not runners:
        raise ValueError(f"auto {precision}: no runtime could run ("
                         + "; ".join(f"{r['runtime']}: {r['note']}" for r in rows) + ")")  # fmt: skip
    from gflv2_keras.benchmarks.inference_benchmark import time_interleaved

    # Interleaved rounds (load from other processes hits every runtime alike); warmed up by the agreement call.
    variants = {name: (lambda c=compiled: c.detect(probe, bounding_box_format="xyxy"), 1)
                for name, compiled in runners.items()}  # fmt: skip
    medians = time_interleaved(variants, warmup=0, repeats=repeats, log=lambda line: None)
    for row in rows:
        if row["runtime"] in medians:
            row["median_ms"] = medians[row["runtime"]] * 1e3
        if row["median_ms"] is not None or row["agreement"] is not None:
            speed = f"{row['median_ms']:8.1f} ms" if row["median_ms"] is not None else "       -   "
            log(f"[runtime]   {row['runtime']:<11} {speed}  {row['note']}")
    chosen = min(medians, key=medians.get)
    decision = {
        "runtime": chosen,
        "precision": precision,
        "measured": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "probe": f"{described} {probe.shape[1]}x{probe.shape[0]}",
        "rule": (f"fastest median of {repeats} interleaved runs among the runtimes that keep >= {MIN_AGREEMENT:.0%} "
                 f"of tf float32's detections (same label, IoU >= {MATCH_IOU})" if precision == "float32"
                 else f"fastest median of {repeats} interleaved runs"),
        "machine": facts,
        "candidates": rows,
    }  # fmt: skip
    decision_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(decision_path, lambda f: f.write(json.dumps(decision, indent=1).encode()))
    log(f"[runtime] auto {precision}: chose {chosen} ({times_line(medians, chosen)}); cached in {decision_path}")
    compiled = runners[chosen]
    compiled.reason = f"auto: measured fastest ({decision_path})"
    compiled.measurements = rows
    return compiled


def times_line(medians, chosen):
    """``"12.3 ms, 1.40x faster than tf"``: the chosen runtime's median (``medians``: seconds per runtime)
    against the slowest other one."""
    others = {name: value for name, value in medians.items() if name != chosen}
    line = f"{medians[chosen] * 1e3:.1f} ms"
    if others:
        slowest = max(others, key=others.get)
        line += f", {others[slowest] / medians[chosen]:.2f}x faster than {slowest}"
    return line


def _read_decision(path):
    try:
        decision = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return decision if isinstance(decision, dict) else None


def _digest(value):
    import hashlib

    return hashlib.sha256(json.dumps(value, sort_keys=True, default=repr).encode()).hexdigest()
