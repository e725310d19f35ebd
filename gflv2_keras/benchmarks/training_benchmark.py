"""Training throughput (images/s) of full training steps: forward, ATSS + losses, backward, SGD.

Each variant compiles the detector as the trainer does (``training.trainer.compile_for_training``:
``CoupledSGD``, momentum 0.9, coupled L2 1e-4) and times
one step of ``fit``'s training function on a fixed synthetic batch (random images, 8 random boxes per image at the
stated size) after ``warmup`` untimed steps; the median step time of ``iterations`` steps is
reported. ``graph`` is Keras' ``tf.function`` train step without XLA (``jit_compile=False``),
``xla`` compiles it with XLA (``jit_compile=True``).

``loss_share`` times what ATSS + QFL/DFL/GIoU cost inside that step: ``compute_loss`` and its
gradient with respect to the head outputs (fixed outputs of one forward pass), compiled the same
way, as a fraction of the whole step. With ``torch=True`` the same step of the independent
PyTorch GFLv2 (``benchmarks.torch_training``: same network, batch, canvas, ATSS and losses, its
own ``torch.optim.SGD``) is timed on the same batch with ``torch.set_num_threads(threads)``.
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


def median_seconds(fn, warmup, iterations):
    """Median wall time of ``fn()`` over ``iterations`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iterations):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_training_benchmark(presets, height, width, batch=1, modes=("graph", "xla"), warmup=2, iterations=5,
                           loss_share=True, torch=False, threads=2, log=print):
    """Time training steps for each preset and mode (and PyTorch's); returns a list of result dicts.

    Rows: ``preset, mode ("graph" | "xla" | "pytorch"), height, width, batch, step_s, images_per_s``,
    and for our modes ``loss_s`` / ``loss_share`` (ATSS + losses + their gradient, None when not
    measured).
    """
    import keras

    import tensorflow as tf

    from gflv2_keras import GFLV2Detector
    from gflv2_keras.training.trainer import compile_for_training

    unknown = [mode for mode in modes if mode not in ("graph", "xla")]
    if unknown:
        raise ValueError(f"--train-modes: unknown {', '.join(unknown)}; valid: graph, xla")
    if iterations < 1:
        raise ValueError(f"--train-iterations must be >= 1, got {iterations}")
    images, targets = synthetic_batch(batch, height, width)
    rows = []
    for preset in presets:
        for mode in modes:
            keras.utils.set_random_seed(0)
            detector = GFLV2Detector.from_preset(preset, load_weights=False, bounding_box_format="xyxy")
            detector.build_for_inference()
            compile_for_training(detector, 1e-4, jit_compile=mode == "xla")
            log(f"timing {preset} / {mode} at {height}x{width}, batch {batch} ({warmup} warm-up + {iterations} timed) ...")
            # The function ``fit`` runs (``make_train_function``), fed from an iterator as ``fit`` feeds it:
            # keras-hub's ``train_on_batch`` cannot take the targets dict.
            train_function = detector.make_train_function()
            batches = iter(tf.data.Dataset.from_tensors((images, targets)).repeat())
            step = median_seconds(lambda: train_function(batches), warmup, iterations)
            loss_s = None
            if loss_share:
                loss_step = loss_and_gradient_function(detector, images, targets, jit_compile=mode == "xla")
                loss_s = median_seconds(loss_step, warmup, iterations)
            rows.append({"preset": preset, "mode": mode, "height": height, "width": width, "batch": batch,
                         "step_s": step, "images_per_s": batch / step, "loss_s": loss_s,
                         "loss_share": None if loss_s is None else loss_s / step})
        if torch:
            rows.append(run_torch_step(preset, images, targets, warmup, iterations, threads, log))
    return rows


def loss_and_gradient_function(detector, images, targets, jit_compile=False):
    """A compiled ``fn()`` running ATSS + QFL/DFL/GIoU and their gradient w.r.t. the head outputs.

    The head outputs are those of one forward pass in training mode, computed once; this is the
    part of the training step that is not the network (the network's own backward is not in it).
    """
    import tensorflow as tf

    outputs = {k: tf.constant(v) for k, v in detector(images, training=True).items()}
    x, y = tf.constant(images), {k: tf.constant(v) for k, v in targets.items()}

    @tf.function(jit_compile=jit_compile)
    def loss_and_gradient():
        with tf.GradientTape() as tape:
            tape.watch(outputs)
            loss = detector.compute_loss(x, y, outputs)
        return loss, tape.gradient(loss, outputs)

    return lambda: [t.numpy() for t in tf.nest.flatten(loss_and_gradient())]


def run_torch_step(preset, images, targets, warmup, iterations, threads=2, log=print):
    """The PyTorch row: the preset's network in the independent PyTorch GFLv2, same batch, own SGD."""
    import torch

    from gflv2_keras.benchmarks.torch_training import TorchTrainingStep, load_reference_model
    from gflv2_keras.presets import preset_info

    torch.set_num_threads(int(threads))
    config = preset_info(preset)["config"]
    batch, height, width = images.shape[:3]
    torch.manual_seed(0)
    step = TorchTrainingStep(load_reference_model(config), height, width, config["num_classes"],
                             reg_max=config.get("head", {}).get("reg_max", 16))  # fmt: skip
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    gt_boxes, gt_labels = torch.from_numpy(targets["boxes"]), torch.from_numpy(targets["labels"])
    log(f"timing {preset} / PyTorch {torch.__version__} ({threads} threads) at {height}x{width}, batch {batch} ...")
    seconds = median_seconds(lambda: step(x, gt_boxes, gt_labels), warmup, iterations)
    return {"preset": preset, "mode": "pytorch", "height": height, "width": width, "batch": batch,
            "step_s": seconds, "images_per_s": batch / seconds, "loss_s": None, "loss_share": None}


def format_table(rows, context):
    lines = [
        f"training steps (forward + ATSS + QFL/DFL/GIoU + backward + CoupledSGD); {context['cpu']} "
        f"({context['cores']} cores); TF {context['tensorflow']}, Keras {context['keras']}",
        "",
        "| preset | input | batch | mode | step ms | images/s | vs PyTorch | ATSS + loss share |",
        "|---|---|---:|---|---:|---:|---:|---:|",
    ]
    torch_speed = {r["preset"]: r["images_per_s"] for r in rows if r["mode"] == "pytorch"}
    for r in rows:
        ratio = f"{r['images_per_s'] / torch_speed[r['preset']]:.2f}x" if r["preset"] in torch_speed else "-"
        share = f"{r['loss_share'] * 100:.1f}% ({r['loss_s'] * 1e3:.0f} ms)" if r.get("loss_share") is not None else "-"
        lines.append(f"| {r['preset']} | {r['height']}x{r['width']} | {r['batch']} | {r['mode']} | "
                     f"{r['step_s'] * 1e3:.0f} | {r['images_per_s']:.2f} | {ratio} | {share} |")
    return "\n".join(lines)
