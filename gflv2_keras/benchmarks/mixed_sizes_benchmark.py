"""``detect`` over a folder's worth of photos of mixed sizes: what compilation costs a real run.

Each image size maps to a network canvas (``preprocessing.canvas_size``); a compiled function per
canvas means a folder of mixed sizes pays a compilation for almost every image. This benchmark
runs ``detector.detect`` on ``N`` uint8 images whose sizes are drawn (seeded) from common camera
and phone resolutions, both orientations, in one fresh process per variant: this tree and,
with ``--compare-with DIR``, another checkout (e.g. the release before a change), the variants
taking turns image by image so drifts of the machine hit both alike. Reported per variant: the
time of the whole run (compilations included), images/s, the first image (the first
compilation) and the median image after the first.
"""

import json
import statistics

from gflv2_keras.benchmarks.backend_benchmark import time_in_workers, variants

# (height, width) of common photos: phones (4:3, 16:9), cameras (3:2), web and VOC/COCO-like sizes.
PHOTO_SIZES = (
    (3024, 4032), (4032, 3024), (3000, 4000), (2448, 3264), (1536, 2048), (1080, 1920), (1920, 1080),
    (720, 1280), (1280, 720), (768, 1024), (600, 800), (480, 640), (640, 480), (375, 500), (500, 375),
    (333, 500), (427, 640), (640, 427), (2000, 3000), (3000, 2000),
)  # fmt: skip

WORKER = r"""
import json, os, sys, time
sys.path.insert(0, os.environ["GFLV2_SOURCE"])
import numpy as np
import keras
from gflv2_keras import GFLV2Detector
preset, sizes = sys.argv[1], json.loads(sys.argv[2])
keras.utils.set_random_seed(0)
detector = GFLV2Detector.from_preset(preset, load_weights=False)
rng = np.random.default_rng(0)
print(json.dumps({"ready": True, "warmup_s": 0.0}), flush=True)
for (height, width), _ in zip(sizes, sys.stdin):
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    start = time.perf_counter()
    detector.detect(image)
    print(json.dumps({"ms": 1000 * (time.perf_counter() - start)}), flush=True)
"""


def photo_sizes(count, seed=0):
    """``count`` ``(height, width)`` drawn with replacement from ``PHOTO_SIZES`` (seeded)."""
    import numpy as np

    picks = np.random.default_rng(seed).integers(0, len(PHOTO_SIZES), count)
    return [PHOTO_SIZES[i] for i in picks]


def run_mixed_sizes_benchmark(preset, count=50, compare_with=None, seed=0):
    """Per variant ``{"variant", "total_s", "images_per_s", "first_ms", "median_ms", "times_ms"}``."""
    sizes = photo_sizes(count, seed)
    workers = time_in_workers(WORKER, [preset, json.dumps(sizes)], variants(["tensorflow"], compare_with), len(sizes))
    rows = []
    for worker in workers:
        times = worker["times_ms"]
        total = sum(times) / 1000
        rows.append({"variant": worker["variant"], "total_s": total, "images_per_s": len(times) / total,
                     "first_ms": times[0], "median_ms": statistics.median(times[1:] or times),
                     "times_ms": times})  # fmt: skip
    return rows, sizes


def format_mixed_sizes_table(rows, preset, sizes, facts, canvases):
    """The Markdown table of ``run_mixed_sizes_benchmark``, with the machine and the canvas count."""
    reference = rows[0]["total_s"]
    lines = [
        f"detect, {preset}, random weights, {len(sizes)} uint8 photos of {len(set(sizes))} sizes "
        f"({canvases} network canvases); {facts['cpu']} ({', '.join(facts['isa'])}), {facts['cores']} cores",
        "",
        "| variant | whole run (s) | images/s | first image (ms) | median image after it (ms) | speed vs first row |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row['variant']} | {row['total_s']:.1f} | {row['images_per_s']:.2f} | {row['first_ms']:.0f} | "
                     f"{row['median_ms']:.0f} | {reference / row['total_s']:.2f}x |")  # fmt: skip
    return "\n".join(lines)
