"""NumPy pre- and post-processing of the exports: the fixed canvas, and candidates → detections.

Needs only NumPy; every fixed-size export copies this file next to the model as
``postprocess.py`` so a deployment does not need ``gflv2_keras``.

**The fixed canvas** (ONNX, OpenVINO, LiteRT exported at a fixed ``H x W``, the default). An
image of any ``h x w`` is resized keeping its aspect ratio so that it fits the canvas (the
official keep-ratio rule with the export size as the scale: ``factor = min(H / h, W / w)`` in
float32, each side ``int(side * factor + 0.5)``, ``keep_ratio_size``), with TensorFlow's
half-pixel bilinear resize rounded to the uint8 grid (``resize_bilinear``, equal to
``tf.image.resize(..., "bilinear")`` as ``models/preprocessing.py`` uses it), placed at the
top-left of a zero ``H x W`` canvas (``letterbox``). The model gets the canvas (``images``) and the
resized size (``image_shape``, int32 ``[batch, 2]`` ``(height, width)``): it normalises the
image, zeroes everything outside it (the official zero padding) and returns boxes in pixels of
the canvas (``rel_*`` formats: relative to ``image_shape``, so to the original image).
``to_original`` maps xyxy canvas pixels back to the original image with the same factor the
official pipeline divides by (``image_shape / (h, w)`` per axis).

**NMS** (exports without NMS inside: LiteRT). ``postprocess`` reproduces, per image,
``tf.image.combined_non_max_suppression(..., clip_boxes=False)`` followed by dropping the
official redundant background column (``gflv2_keras/ops/postprocess.py``; official
``mmdet/core/post_processing/bbox_nms.py multiclass_nms`` + ``bbox2result``):

* every (candidate, class) pair with ``score > score_threshold`` enters the NMS of its class;
* per class, pairs are visited by descending score (ties: lower candidate index first) and a
  pair is suppressed when its IoU with a kept pair of that class is ``> iou_threshold``;
  at most ``max_detections`` are kept per class;
* the kept pairs of all classes are sorted by descending score, the best ``max_detections``
  kept, and those of class ``num_classes`` (the background column) removed.

Boxes: the NMS compares ``candidate_boxes`` (xyxy pixels of the canvas). An export whose
``export.json`` ``"bounding_box_format"`` is not ``xyxy`` also outputs ``candidate_output_boxes``
(the same candidates in that format, converted inside the model); pass them as
``output_boxes`` and the kept boxes are taken from them.

Usage (``meta = json.load(open("export.json"))``; ``H, W = meta["input_size"]``)::

    from postprocess import letterbox, postprocess, to_original
    canvas, image_shape = letterbox(image, H, W)        # image: uint8 RGB [h, w, 3], any size
    out = run(images=canvas[None], image_shape=image_shape[None])
    # NMS inside (ONNX, OpenVINO): out["detection_boxes"][0, :out["num_detections"][0]]; LiteRT:
    dets = postprocess(out["candidate_boxes"], out["candidate_scores"], num_classes=80,
                       score_threshold=0.05, iou_threshold=0.6, max_detections=100,
                       output_boxes=out.get("candidate_output_boxes"))
    boxes = to_original(dets[0]["boxes"], image_shape, image.shape[:2])   # xyxy original pixels
"""

import numpy as np


def keep_ratio_size(height, width, canvas_height, canvas_width):
    """``(new_h, new_w)``: an ``height x width`` image resized keeping its ratio to fit the canvas.

    ``factor = min(canvas_height / height, canvas_width / width)`` and each side becomes
    ``int(side * factor + 0.5)``, in float32 as ``models.preprocessing.static_rescale_size`` (so
    an image of the canvas' orientation gets exactly the official size when the canvas is the
    preset's scale). Each side is kept within ``[1, canvas side]``: an extreme aspect ratio
    still leaves one row or column to run on instead of an empty image.
    """
    height, width = int(height), int(width)
    if min(height, width) < 1:
        raise ValueError(f"{width}x{height} image (width x height) has no pixels")
    h, w = np.float32(height), np.float32(width)
    factor = min(np.float32(np.float32(canvas_height) / h), np.float32(np.float32(canvas_width) / w))
    new_h = int(np.floor(np.float32(h * factor) + np.float32(0.5)))
    new_w = int(np.floor(np.float32(w * factor) + np.float32(0.5)))
    return min(max(new_h, 1), int(canvas_height)), min(max(new_w, 1), int(canvas_width))


def _interpolation(size, new_size):
    """``(lower, upper, weight)`` of TensorFlow's half-pixel bilinear scaler (``resize_bilinear_op.cc``),
    the NumPy twin of ``models.preprocessing``'s tables (this file must run without the package)."""
    scale = np.float32(size) / np.float32(max(new_size, 1))
    source = (np.arange(new_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    floor = np.floor(source)
    lower = np.maximum(floor, 0).astype(np.int64)
    upper = np.minimum(np.ceil(source), size - 1).astype(np.int64)
    return lower, upper, (source - floor).astype(np.float32)


def resize_bilinear(image, new_height, new_width):
    """uint8 ``[h, w, C]`` → uint8 ``[new_height, new_width, C]``: half-pixel bilinear, no antialias.

    TensorFlow's float32 arithmetic operation for operation (``tf.image.resize(image, size,
    "bilinear")``, what the official preprocessing of ``predict`` uses), rounded to the uint8 grid.
    """
    image = np.asarray(image)
    height, width = image.shape[:2]
    if (height, width) == (new_height, new_width):
        return image.astype(np.uint8, copy=False)
    top, bottom, dy = _interpolation(height, new_height)
    left, right, dx = _interpolation(width, new_width)
    pixels = image.astype(np.float32)
    lefts, rights = pixels[:, left], pixels[:, right]
    rows = lefts + (rights - lefts) * dx[:, None]
    tops, bottoms = rows[top], rows[bottom]
    resized = tops + (bottoms - tops) * dy[:, None, None]
    return np.round(np.clip(resized, 0.0, 255.0)).astype(np.uint8)


def letterbox(image, canvas_height, canvas_width):
    """One uint8 RGB ``[h, w, 3]`` image → ``(canvas, image_shape)`` for a fixed-size export.

    Returns:
        ``canvas``: uint8 ``[canvas_height, canvas_width, 3]``, the image resized by
        ``keep_ratio_size`` (``resize_bilinear``) at the top-left, zeros elsewhere;
        ``image_shape``: int32 ``[2]`` ``(new_h, new_w)``, the model's ``image_shape`` input.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image [H, W, 3], got shape {image.shape}")
    new_h, new_w = keep_ratio_size(image.shape[0], image.shape[1], canvas_height, canvas_width)
    canvas = np.zeros((int(canvas_height), int(canvas_width), 3), np.uint8)
    canvas[:new_h, :new_w] = resize_bilinear(image, new_h, new_w)
    return canvas, np.array([new_h, new_w], np.int32)


def to_original(boxes, image_shape, original_shape):
    """xyxy ``[K, 4]`` boxes in pixels of the canvas → pixels of the original ``(h, w)`` image.

    Divides by the per-axis factor ``image_shape / original_shape`` (float32), as the official
    pipeline divides its boxes by ``scale_factor``.
    """
    factor = np.float32(image_shape).reshape(2) / np.float32(original_shape[:2]).reshape(2)
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    return boxes / np.float32([factor[1], factor[0], factor[1], factor[0]])


def box_iou(box, boxes):
    """IoU of one xyxy box ``[4]`` with ``[N, 4]`` boxes (corner order-agnostic, as TF's NMS)."""
    def corners(b):
        return (np.minimum(b[..., 0], b[..., 2]), np.minimum(b[..., 1], b[..., 3]),
                np.maximum(b[..., 0], b[..., 2]), np.maximum(b[..., 1], b[..., 3]))  # fmt: skip

    ax1, ay1, ax2, ay2 = corners(box)
    bx1, by1, bx2, by2 = corners(boxes)
    area_a = (ax2 - ax1) * (ay2 - ay1)
    area_b = (bx2 - bx1) * (by2 - by1)
    inter = np.maximum(np.minimum(ax2, bx2) - np.maximum(ax1, bx1), 0) * np.maximum(
        np.minimum(ay2, by2) - np.maximum(ay1, by1), 0
    )
    union = area_a + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where((area_a > 0) & (area_b > 0) & (union > 0), inter / union, 0.0)
    return iou


def class_nms(boxes, scores, score_threshold, iou_threshold, max_output):
    """Indices of the kept rows of one class, in visiting (descending score) order."""
    candidates = np.flatnonzero(scores > score_threshold)
    order = candidates[np.lexsort((candidates, -scores[candidates]))]
    kept = []
    for index in order:
        if len(kept) >= max_output:
            break
        if not kept or np.all(box_iou(boxes[index], boxes[kept]) <= iou_threshold):
            kept.append(index)
    return np.asarray(kept, dtype=np.int64)


def postprocess_image(boxes, scores, num_classes, score_threshold=0.05, iou_threshold=0.6, max_detections=100,
                      output_boxes=None):  # fmt: skip
    """One image: ``boxes [M, 4]`` xyxy, ``scores [M, C']`` → unpadded detections.

    ``output_boxes [M, 4]``: the candidates in the export's box format, if not xyxy.

    Returns:
        ``{"boxes": [K, 4] float32 (xyxy, or rows of output_boxes), "confidence": [K] float32
        (descending), "labels": [K] int64}``.
    """
    boxes = np.asarray(boxes, np.float32)
    scores = np.asarray(scores, np.float32)
    kept_scores, kept_classes, kept_rows = [], [], []
    for cls in range(scores.shape[1]):
        rows = class_nms(boxes, scores[:, cls], score_threshold, iou_threshold, max_detections)
        kept_rows.append(rows)
        kept_scores.append(scores[rows, cls])
        kept_classes.append(np.full(len(rows), cls, np.int64))
    rows, all_scores, classes = (np.concatenate(parts) for parts in (kept_rows, kept_scores, kept_classes))
    order = np.argsort(-all_scores, kind="stable")[:max_detections]
    order = order[classes[order] < num_classes]
    source = boxes if output_boxes is None else np.asarray(output_boxes, np.float32)
    return {"boxes": source[rows[order]], "confidence": all_scores[order], "labels": classes[order]}


def postprocess(candidate_boxes, candidate_scores, num_classes, score_threshold=0.05, iou_threshold=0.6,
                max_detections=100, output_boxes=None):  # fmt: skip
    """A batch: ``[B, M, 4]`` and ``[B, M, C']`` → list of per-image detection dicts.

    ``output_boxes``: the model's ``candidate_output_boxes [B, M, 4]`` (exports whose box format
    is not xyxy); the returned boxes are then in that format.
    """
    if output_boxes is None:
        output_boxes = [None] * len(candidate_boxes)
    return [
        postprocess_image(boxes, scores, num_classes, score_threshold, iou_threshold, max_detections, out)
        for boxes, scores, out in zip(candidate_boxes, candidate_scores, output_boxes)
    ]
