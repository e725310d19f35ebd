"""A synthetic shape-detection dataset in COCO format: the built-in demo data.

Images of about 256 px show 1 to ``max_objects`` solid shapes of five classes (rectangle,
ellipse, triangle, cross, star) in saturated colours, 16 to 120 px across, on muted textured
backgrounds (gradients, blotches, stripes, checkers, plus grain). Shapes may overlap; a new
shape is only placed where it leaves every earlier shape at least 60 % visible, so each object
stays recognisable. Every annotation box is the tight box of the object's visible pixels
(xyxy pixel edges, COCO ``[x, y, w, h]`` in the file) and ``area`` is its visible pixel count.

Everything is a function of ``seed``: image ``i`` of a split is drawn from its own
``numpy.random.default_rng((seed, split, i))`` (``render_image``), so any image can be
re-created on its own. Pillow draws and numpy composes; no TensorFlow.

Layout written by ``make_synthetic_coco(output_dir)``::

    output_dir/train/000001.jpg ...   output_dir/annotations/train.json
    output_dir/val/000001.jpg ...     output_dir/annotations/val.json

Command line: ``python -m gflv2_keras.data.synthetic OUTPUT_DIR [--num-train N] ...``.
"""

import argparse
import colorsys
import json
import os
import time

import numpy as np
from PIL import Image, ImageDraw

CLASS_NAMES = ("rectangle", "ellipse", "triangle", "cross", "star")
SPLITS = {"train": 0, "val": 1}
MIN_VISIBLE_FRACTION = 0.6
_PLACEMENT_TRIES = 10


def make_synthetic_coco(
    output_dir,
    num_train=1000,
    num_val=200,
    image_size=(224, 288),
    seed=0,
    max_objects=6,
    object_size=(16, 120),
    image_format="jpg",
    jpeg_quality=92,
    classes=None,
    category_ids=None,
):
    """Writes the synthetic dataset.

    Args:
        output_dir: destination folder (created).
        num_train, num_val: number of images per split.
        image_size: ``(min_side, max_side)``: height and width are each drawn uniformly from
            this inclusive range.
        seed: int; the same seed writes the same files.
        max_objects: most shapes per image (at least one).
        object_size: ``(min, max)`` shape size in pixels (uniform; rectangles and ellipses get
            an aspect ratio in [0.5, 2] around it).
        image_format: ``"jpg"`` (small, fast) or ``"png"`` (lossless, pixel-exact shapes).
        jpeg_quality: JPEG quality.
        classes: names (a subset of ``CLASS_NAMES``) of the shapes drawn, or None: all five.
            A subset makes a second class set (e.g. pretrain on three shapes, fine-tune on two).
        category_ids: the file's category id of each of ``classes`` (any distinct ints, e.g.
            sparse ones), or None: 1, 2, ... in ``CLASS_NAMES`` order.

    Returns:
        dict of absolute paths: ``root``, ``train_images``, ``val_images``,
        ``train_annotations``, ``val_annotations``.
    """
    if image_format not in ("jpg", "png"):
        raise ValueError(f"make_synthetic_coco: image_format must be 'jpg' or 'png', got {image_format!r}")
    names = list(CLASS_NAMES) if classes is None else list(classes)
    unknown = [n for n in names if n not in CLASS_NAMES]
    if unknown or not names or len(set(names)) != len(names):
        raise ValueError(f"make_synthetic_coco: classes must be distinct names of {CLASS_NAMES}, got {classes!r}")
    indices = [CLASS_NAMES.index(n) for n in names]
    if category_ids is None:
        category_ids = [i + 1 for i in indices]
    if len(category_ids) != len(names) or len(set(category_ids)) != len(names):
        raise ValueError(f"make_synthetic_coco: category_ids must be {len(names)} distinct ints, got {category_ids!r}")
    category_of = dict(zip(indices, (int(c) for c in category_ids)))
    drawn = None if classes is None else indices
    root = os.path.abspath(output_dir)
    paths = {"root": root}
    for split, count in (("train", num_train), ("val", num_val)):
        image_dir = os.path.join(root, split)
        ann_file = os.path.join(root, "annotations", f"{split}.json")
        os.makedirs(image_dir, exist_ok=True)
        os.makedirs(os.path.dirname(ann_file), exist_ok=True)
        images, annotations = [], []
        for index in range(count):
            image_id = index + 1
            image, objects = render_image(image_rng(seed, split, index), image_size, max_objects, object_size, drawn)
            file_name = f"{image_id:06d}.{image_format}"
            save_kwargs = {"quality": jpeg_quality} if image_format == "jpg" else {"compress_level": 1}
            Image.fromarray(image).save(os.path.join(image_dir, file_name), **save_kwargs)
            images.append({"id": image_id, "file_name": file_name, "height": image.shape[0], "width": image.shape[1]})
            for obj in objects:
                x1, y1, x2, y2 = obj["box"]
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": category_of[obj["class_index"]],
                        "bbox": [x1, y1, x2 - x1, y2 - y1],
                        "area": obj["area"],
                        "iscrowd": 0,
                    }
                )
        content = {
            "info": {"description": f"gflv2_keras synthetic shapes, split {split}, seed {seed}"},
            "images": images,
            "annotations": annotations,
            "categories": [
                {"id": category_of[i], "name": CLASS_NAMES[i], "supercategory": "shape"} for i in indices
            ],
        }
        with open(ann_file, "w") as f:
            json.dump(content, f)
        paths[f"{split}_images"] = image_dir
        paths[f"{split}_annotations"] = ann_file
    return paths


def image_rng(seed, split, index):
    """The generator of image ``index`` of ``split`` (``"train"`` / ``"val"``)."""
    return np.random.default_rng((seed, SPLITS[split], index))


def render_image(rng, image_size=(224, 288), max_objects=6, object_size=(16, 120), draw_classes=None):
    """Draws one image (``draw_classes``: indices into ``CLASS_NAMES`` to draw from, None: all).

    Returns:
        ``image``: uint8 ``[H, W, 3]`` RGB.
        ``objects``: list of dicts ``class_index`` (0-based into ``CLASS_NAMES``), ``box``
        ``[x1, y1, x2, y2]`` ints, tight around the visible pixels (pixel ``(r, c)`` covers
        ``[c, c + 1) x [r, r + 1)``), ``area`` visible pixel count, ``color`` ``(r, g, b)``
        (unique within the image).
    """
    height, width = (int(rng.integers(image_size[0], image_size[1] + 1)) for _ in range(2))
    image = _background(rng, height, width)
    owner = np.full((height, width), -1, np.int32)  # index of the visible object at each pixel
    full_areas, visible, classes, colors = [], [], [], []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        if draw_classes is None:
            class_index = int(rng.integers(len(CLASS_NAMES)))
        else:
            class_index = draw_classes[int(rng.integers(len(draw_classes)))]
        color = _shape_color(rng, colors)
        for _ in range(_PLACEMENT_TRIES):
            mask, (x0, y0) = _shape_mask(rng, class_index, height, width, object_size)
            window = owner[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]]
            covered = window[mask]
            lost = np.bincount(covered[covered >= 0], minlength=len(classes))
            if np.all(np.subtract(visible, lost) >= MIN_VISIBLE_FRACTION * np.asarray(full_areas)):
                window[mask] = len(classes)
                image[y0 : y0 + mask.shape[0], x0 : x0 + mask.shape[1]][mask] = color
                visible = list(np.subtract(visible, lost)) + [int(mask.sum())]
                full_areas.append(int(mask.sum()))
                classes.append(class_index)
                colors.append(color)
                break
    objects = []
    for index, (class_index, color) in enumerate(zip(classes, colors)):
        rows, cols = np.nonzero(owner == index)
        box = [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1]
        objects.append({"class_index": class_index, "box": box, "area": int(rows.size), "color": color})
    return image, objects


def _shape_mask(rng, class_index, height, width, object_size):
    """A boolean mask of one shape and the top-left corner where it goes (inside the image)."""
    size = rng.uniform(object_size[0], object_size[1])
    if CLASS_NAMES[class_index] in ("rectangle", "ellipse"):
        aspect = float(np.exp(rng.uniform(np.log(0.5), np.log(2.0))))
    else:
        aspect = float(rng.uniform(0.8, 1.25))
    w = int(np.clip(round(size * np.sqrt(aspect)), 8, width - 2))
    h = int(np.clip(round(size / np.sqrt(aspect)), 8, height - 2))
    canvas = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(canvas)
    name = CLASS_NAMES[class_index]
    if name == "rectangle":
        draw.rectangle([0, 0, w - 1, h - 1], fill=255)
    elif name == "ellipse":
        draw.ellipse([0, 0, w - 1, h - 1], fill=255)
    else:
        draw.polygon(_fit_polygon(_polygon(rng, name), w, h), fill=255)
    mask = np.asarray(canvas) > 0
    x0 = int(rng.integers(0, width - w + 1))
    y0 = int(rng.integers(0, height - h + 1))
    return mask, (x0, y0)


def _polygon(rng, name):
    """Unit-size vertices ``[N, 2]`` of a triangle, cross or star, randomly rotated."""
    if name == "triangle":
        angles = np.deg2rad([90, 210, 330]) + rng.uniform(-0.25, 0.25, 3)
        points = np.stack([np.cos(angles), np.sin(angles)], 1)
        turn = rng.uniform(0, 2 * np.pi)
    elif name == "cross":
        t = rng.uniform(0.15, 0.22)  # half arm thickness
        points = np.array(
            [[-t, -1], [t, -1], [t, -t], [1, -t], [1, t], [t, t], [t, 1], [-t, 1], [-t, t], [-1, t], [-1, -t], [-t, -t]]
        )
        turn = np.deg2rad(rng.uniform(-20, 20))
    else:  # 5-pointed star
        inner = rng.uniform(0.38, 0.5)
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        points = np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)
        turn = rng.uniform(0, 2 * np.pi)
    rotation = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
    return points @ rotation.T


def _fit_polygon(points, w, h):
    """Stretches vertices to span ``[0, w - 1] x [0, h - 1]`` (Pillow's inclusive pixel grid)."""
    low, high = points.min(0), points.max(0)
    fitted = (points - low) / (high - low) * [w - 1, h - 1]
    return [tuple(p) for p in fitted]


def _shape_color(rng, taken):
    """A saturated colour not yet used in the image (backgrounds are muted, so shapes stand out)."""
    while True:
        rgb = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.7, 1.0), rng.uniform(0.55, 1.0))
        color = tuple(int(round(255 * c)) for c in rgb)
        if color not in taken:
            return color


def _background(rng, height, width):
    """A muted RGB background: gradient, blotches, stripes or checkers, plus noise."""
    base = rng.uniform(40, 215) + rng.uniform(-25, 25, 3)
    other = rng.uniform(40, 215) + rng.uniform(-25, 25, 3)
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    kind = rng.integers(4)
    if kind == 0:  # linear gradient in a random direction
        angle = rng.uniform(0, 2 * np.pi)
        t = xs * np.float32(np.cos(angle)) + ys * np.float32(np.sin(angle))
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    elif kind == 1:  # smooth blotches: upsampled coarse noise
        coarse = rng.integers(0, 256, (int(rng.integers(3, 9)),) * 2, dtype=np.uint8)
        t = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), np.float32) / 255.0
    elif kind == 2:  # soft stripes
        period = rng.uniform(12, 48)
        angle = rng.uniform(0, np.pi)
        t = 0.5 + 0.5 * np.sin((2 * np.pi / period) * (xs * np.float32(np.cos(angle)) + ys * np.float32(np.sin(angle))))
    else:  # checkers
        cell = int(rng.integers(12, 40))
        t = ((np.arange(height)[:, None] // cell + np.arange(width)[None, :] // cell) % 2).astype(np.float32)
    image = base.astype(np.float32) + (other - base).astype(np.float32) * t[..., None]
    # Grey-level grain plus a little colour noise (integer noise is much cheaper than Gaussian).
    amplitude = int(rng.integers(3, 16))
    image += rng.integers(-amplitude, amplitude + 1, (height, width, 1), dtype=np.int16)
    image += rng.integers(-4, 5, (height, width, 3), dtype=np.int16)
    return np.clip(image, 0, 255).astype(np.uint8)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write the synthetic shapes dataset in COCO format.")
    parser.add_argument("output_dir")
    parser.add_argument("--num-train", type=int, default=1000)
    parser.add_argument("--num-val", type=int, default=200)
    parser.add_argument("--min-side", type=int, default=224)
    parser.add_argument("--max-side", type=int, default=288)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-objects", type=int, default=6)
    parser.add_argument("--format", choices=("jpg", "png"), default="jpg")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    paths = make_synthetic_coco(
        args.output_dir,
        num_train=args.num_train,
        num_val=args.num_val,
        image_size=(args.min_side, args.max_side),
        seed=args.seed,
        max_objects=args.max_objects,
        image_format=args.format,
    )
    total = args.num_train + args.num_val
    print(f"wrote {total} images in {time.perf_counter() - start:.1f} s")
    for key, path in paths.items():
        print(f"{key}: {path}")


if __name__ == "__main__":
    main()
