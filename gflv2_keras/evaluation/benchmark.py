"""Timing of the COCOeval backends (faster-coco-eval, pycocotools) on a synthetic split.

``python -m gflv2_keras.evaluation.benchmark --images 5000 --detections 100 --repeats 3`` prints,
per backend, the median wall time of ``backend.coco_score`` (result loading, evaluate,
accumulate, summarize) and checks that both give the same 12 numbers.

``synthetic_case`` builds the split: images of 480x640 pixels holding 0 to ``2 * objects``
ground-truth boxes (small, medium and large, several classes, a share of them crowd regions)
and ``detections`` results per image: the ground truth jittered, some with another class,
duplicates (scores 0.2 to 1), and boxes on background (scores 0.01 to 0.6).
"""

import argparse
import contextlib
import io
import platform
import statistics

import numpy as np

from gflv2_keras.evaluation.backend import FASTER, PYCOCOTOOLS, coco_score, faster_coco_eval_available

IMAGE_SIZE = (480, 640)  # height, width


def synthetic_case(num_images=100, detections=20, num_classes=5, objects=4, crowd_fraction=0.05, seed=0):
    """A COCO ground truth (``pycocotools.coco.COCO``) and COCO result dicts on it.

    Args:
        num_images: images in the split (ids 1..N).
        detections: results per image (at least the jittered ground truth; the rest on background).
        num_classes: categories (ids 1..K).
        objects: mean ground-truth boxes per image (0 to ``2 * objects``).
        crowd_fraction: share of ground-truth boxes marked ``iscrowd`` 1.
        seed: the same seed gives the same case.

    Returns:
        ``(coco_gt, results)``; boxes are COCO ``[x, y, w, h]`` pixels.
    """
    from pycocotools.coco import COCO

    rng = np.random.default_rng(seed)
    height, width = IMAGE_SIZE
    images, annotations, results = [], [], []
    for image_id in range(1, num_images + 1):
        images.append({"id": image_id, "height": height, "width": width, "file_name": f"{image_id}.jpg"})
        count = int(rng.integers(0, 2 * objects + 1))
        sides = np.exp(rng.uniform(np.log(8), np.log(400), (count, 2)))  # small, medium and large
        corners = rng.uniform(0, 1, (count, 2)) * np.maximum([width, height] - sides, 1)
        labels = rng.integers(1, num_classes + 1, count)
        for (x, y), (w, h), label in zip(corners, sides, labels):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label),
                                "bbox": [float(x), float(y), float(w), float(h)], "area": float(w * h),
                                "iscrowd": int(rng.uniform() < crowd_fraction)})
        kept = []
        for (x, y), (w, h), label in zip(corners, sides, labels):
            for _ in range(int(rng.integers(1, 3))):  # a detection, sometimes a duplicate
                jitter = rng.normal(0, 0.08, 4) * [w, h, w, h]
                cls = int(label) if rng.uniform() > 0.1 else int(rng.integers(1, num_classes + 1))
                kept.append(([x + jitter[0], y + jitter[1], max(w + jitter[2], 1.0), max(h + jitter[3], 1.0)], cls))
        kept = kept[:detections]
        scores = list(rng.uniform(0.2, 1.0, len(kept)))
        for _ in range(detections - len(kept)):  # background, scored lower
            w, h = np.exp(rng.uniform(np.log(8), np.log(300), 2))
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            kept.append(([x, y, w, h], int(rng.integers(1, num_classes + 1))))
            scores.append(rng.uniform(0.01, 0.6))
        for (box, cls), score in zip(kept, scores):
            results.append({"image_id": image_id, "category_id": cls, "bbox": [float(v) for v in box],
                            "score": float(score)})
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations,
                    "categories": [{"id": k, "name": f"class{k}"} for k in range(1, num_classes + 1)]}
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco, results


def time_backends(num_images, detections, repeats=3, num_classes=80, seed=0):
    """``{backend: {"seconds": [...], "median": s, "stats": [12]}}`` on one ``synthetic_case``."""
    coco_gt, results = synthetic_case(num_images, detections, num_classes=num_classes, objects=7, seed=seed)
    backends = ([FASTER] if faster_coco_eval_available() else []) + [PYCOCOTOOLS]
    timings = {}
    for name in backends:
        runs = [coco_score(coco_gt, results, backend=name) for _ in range(repeats)]
        seconds = [run.seconds for run in runs]
        timings[name] = {"seconds": seconds, "median": statistics.median(seconds), "stats": runs[0].stats}
    return timings


def cpu_model():
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m gflv2_keras.evaluation.benchmark", description=__doc__)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--detections", type=int, default=100, help="results per image")
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    timings = time_backends(args.images, args.detections, args.repeats, args.classes)
    print(f"COCOeval bbox, {args.images} images x {args.detections} detections, {args.classes} classes; "
          f"median of {args.repeats} runs; {cpu_model()}")
    print("| backend | median s | runs (s) | AP | AP50 |")
    print("|---|---:|---|---:|---:|")
    for name, timing in timings.items():
        runs = ", ".join(f"{s:.2f}" for s in timing["seconds"])
        print(f"| {name} | {timing['median']:.2f} | {runs} | {timing['stats'][0]:.4f} | {timing['stats'][1]:.4f} |")
    if len(timings) == 2:
        fast, slow = timings[FASTER], timings[PYCOCOTOOLS]
        difference = float(np.max(np.abs(np.subtract(fast["stats"], slow["stats"]))))
        print(f"speed-up {slow['median'] / fast['median']:.1f}x; largest difference of the 12 stats {difference:.1e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
