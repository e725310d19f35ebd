"""Training throughput (images/s) of full training steps: forward, ATSS + losses, backward, SGD.

Each variant compiles the detector as the trainer does (``training.trainer.compile_for_training``:
``CoupledSGD``, momentum 0.9, coupled L2 1e-4) and times
``train_on_batch`` on a fixed synthetic batch (random images, 8 random boxes per image at the
stated size) after ``warmup`` untimed steps; the median step time of ``iterations`` steps is
reported. ``graph`` is Keras' ``tf.function`` train step without XLA (``jit_compile=False``),
``xla`` compiles it with XLA (``jit_compile=True``).
"""

import statistics
import time

import numpy as np


def synthetic_batch(batch, height, width, boxes_per_image=8, seed=0):
    """Random normalised images ``[B, H, W, 3]`` and ``{"boxes", "labels"}`` targets (xyxy pixels)."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=(batch, height, width, 3)).astype(np.float32)
    xy = rng.uniform(0, 0.7, (batch, boxes_per_image, 2)) * [width, height]
    wh = rng.uniform(0.05, 0.3, (batch, boxes_per_image, 2)) * [width, height]
    boxes = np.concatenate([xy, np.minimum(xy + wh, [width, height])], -1).astype(np.float32)
    labels = rng.integers(0, 3, (batch, boxes_per_image)).astype(np.int32)
    return images, {"boxes": boxes, "labels": labels}


def run_training_benchmark(presets, height, width, batch=1, modes=("graph", "xla"), warmup=2, iterations=5, log=print):
    """Time training steps for each preset and mode; returns a list of result dicts."""
    import keras

    from gflv2_keras import GFLV2Detector
    from gflv2_keras.training.trainer import compile_for_training

    images, targets = synthetic_batch(batch, height, width)
    rows = []
    for preset in presets:
        for mode in modes:
            keras.utils.set_random_seed(0)
            detector = GFLV2Detector.from_preset(preset, load_weights=False).build_for_inference()
            compile_for_training(detector, 1e-4, jit_compile=mode == "xla")
            log(f"timing {preset} / {mode} at {height}x{width}, batch {batch} ({warmup} warm-up + {iterations} timed) ...")
            for _ in range(warmup):
                detector.train_on_batch(images, targets)
            times = []
            for _ in range(iterations):
                start = time.perf_counter()
                detector.train_on_batch(images, targets)
                times.append(time.perf_counter() - start)
            step = statistics.median(times)
            rows.append({"preset": preset, "mode": mode, "height": height, "width": width, "batch": batch,
                         "step_s": step, "images_per_s": batch / step})
    return rows


def format_table(rows, context):
    lines = [
        f"training steps (forward + ATSS + QFL/DFL/GIoU + backward + CoupledSGD); {context['cpu']} "
        f"({context['cores']} cores); TF {context['tensorflow']}, Keras {context['keras']}",
        "",
        "| preset | input | batch | mode | step ms | images/s |",
        "|---|---|---:|---|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['preset']} | {r['height']}x{r['width']} | {r['batch']} | {r['mode']} | "
                     f"{r['step_s'] * 1e3:.0f} | {r['images_per_s']:.2f} |")
    return "\n".join(lines)
