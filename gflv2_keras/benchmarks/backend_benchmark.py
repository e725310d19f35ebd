"""``predict`` latency per Keras backend (and, optionally, of another source tree), interleaved.

Keras fixes its backend when it is imported, so each variant is its own worker process (same
preset, same seeded random weights, same uint8 image). The parent asks the workers for one timed
``predict`` each in turn, round after round, so slow drifts of the machine hit every variant
alike; the table reports the median per variant. ``--compare-with DIR`` adds a TensorFlow worker
that imports ``gflv2_keras`` from another checkout (e.g. the release before a redesign), so a
before/after comparison comes from one run.
"""

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import json, os, sys, time
sys.path.insert(0, os.environ["GFLV2_SOURCE"])
import numpy as np
import keras
from gflv2_keras import GFLV2Detector
preset, height, width, warmup = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
keras.utils.set_random_seed(0)
detector = GFLV2Detector.from_preset(preset, load_weights=False)
image = np.random.default_rng(0).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
start = time.perf_counter()
for _ in range(warmup):
    detector.predict(image)
print(json.dumps({"ready": True, "warmup_s": time.perf_counter() - start}), flush=True)
for line in sys.stdin:
    start = time.perf_counter()
    detector.predict(image)
    print(json.dumps({"ms": 1000 * (time.perf_counter() - start)}), flush=True)
"""


def variants(backends, compare_with=None):
    """``[(label, backend, source tree)]``: this tree per backend, plus TensorFlow of ``compare_with``."""
    here = str(Path(__file__).resolve().parents[2])
    found = [(f"{b} (this tree)", b, here) for b in backends]
    if compare_with:
        found.append((f"tensorflow ({Path(compare_with).name})", "tensorflow", str(Path(compare_with).resolve())))
    return found


def time_in_workers(script, arguments, found_variants, rounds):
    """Runs ``script`` (a worker: one JSON ``{"ready", "warmup_s"}`` line, then one ``{"ms"}`` line per
    input line) once per variant of ``variants``; the workers take turns, ``rounds`` times each.

    Returns ``[{"variant", "warmup_s", "times_ms"}]``; the processes are killed afterwards.
    """
    workers = []
    for label, backend, source in found_variants:
        env = {**os.environ, "KERAS_BACKEND": backend, "GFLV2_SOURCE": source, "TF_CPP_MIN_LOG_LEVEL": "3"}
        process = subprocess.Popen(
            [sys.executable, "-c", script, *arguments],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
        )  # fmt: skip
        workers.append({"variant": label, "process": process, "times_ms": []})
    try:
        for worker in workers:  # one at a time: compilation must not overlap the others' timing
            worker["warmup_s"] = read_reply(worker)["warmup_s"]
        for _ in range(rounds):
            for worker in workers:
                worker["process"].stdin.write("run\n")
                worker["process"].stdin.flush()
                worker["times_ms"].append(read_reply(worker)["ms"])
    finally:
        for worker in workers:
            worker["process"].kill()
    return [{key: w[key] for key in ("variant", "warmup_s", "times_ms")} for w in workers]


def run_backend_benchmark(preset, height, width, backends, compare_with=None, warmup=2, repeats=5):
    """Median ``predict`` ms per variant; returns ``[{"variant", "median_ms", "times_ms", "warmup_s"}]``."""
    workers = time_in_workers(WORKER, [preset, str(height), str(width), str(warmup)],
                              variants(backends, compare_with), repeats)  # fmt: skip
    return [
        {"variant": w["variant"], "median_ms": statistics.median(w["times_ms"]), "times_ms": w["times_ms"],
         "warmup_s": w["warmup_s"]}
        for w in workers
    ]  # fmt: skip


def read_reply(worker):
    """The next JSON line of a worker process (``RuntimeError`` when it stopped)."""
    line = worker["process"].stdout.readline()
    if not line:
        raise RuntimeError(f"backend benchmark: the {worker['variant']} worker stopped (run it alone to see why)")
    return json.loads(line)


def format_backend_table(rows, preset, height, width, facts):
    """The Markdown table of ``run_backend_benchmark`` rows, with the machine."""
    reference = rows[0]["median_ms"]
    lines = [
        f"predict, {preset}, random weights, uint8 {height}x{width}, batch 1; {facts['cpu']} "
        f"({', '.join(facts['isa'])}), {facts['cores']} cores; median of {len(rows[0]['times_ms'])} interleaved rounds",
        "",
        "| variant | median ms | speed vs first row | warm-up (s, incl. compilation) |",
        "|---|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['variant']} | {row['median_ms']:.0f} | {reference / row['median_ms']:.2f}x | "
                     f"{row['warmup_s']:.0f} |")  # fmt: skip
    return "\n".join(lines)
