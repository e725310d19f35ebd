"""Box and anchor-point geometry shared by decoding, target assignment and losses.

Conventions (used everywhere in the package):
* Boxes are ``[..., 4]`` float tensors ``(x1, y1, x2, y2)`` in absolute pixels of the
  image they refer to, with no "+1" (a box from 0 to 10 has width 10), as in MMDetection v2.
* Anchor points sit at ``(x * s, y * s)`` for feature column ``x``, row ``y`` and stride
  ``s`` (centre offset 0, not 0.5). Points are flattened level by level (P3..P7) and
  row-major inside a level (flat index ``y * W + x``), the order of the official code.
* Distances are ``[..., 4]`` ``(left, top, right, bottom)`` from the point to the box sides.

All functions are written with ``keras.ops`` so they run on any backend and under XLA.
"""

from keras import ops

STRIDES = (8, 16, 32, 64, 128)


def level_sizes(height, width, strides=STRIDES):
    """Feature-map sizes of each pyramid level for a padded input of ``height x width``.

    The backbone and FPN halve sizes with symmetric-padded stride-2 convs and pools, which
    rounds up, so level ``l`` has ``ceil(prev / 2)`` rows per halving.

    Returns:
        A list of ``(h, w)`` per stride: python ints for int inputs, scalar tensors for
        tensor inputs (dynamic shapes inside a traced function).
    """
    sizes = []
    h, w = height, width
    stride = 1
    for s in strides:
        while stride < s:
            # ceil(h / 2) without a negative floor division: ONNX (tf2onnx) divides integers
            # truncating, so -(-h // 2) of a dynamic size would round down in a --dynamic-size export.
            h, w = (h + 1) // 2, (w + 1) // 2
            stride *= 2
        sizes.append((h, w))
    return sizes


def anchor_points(sizes, strides=STRIDES, dtype="float32"):
    """Anchor points of all levels, flattened in the official order.

    Args:
        sizes: ``[(h, w), ...]`` feature sizes per level (see ``level_sizes``).
        strides: stride of each level.

    Returns:
        ``points``: ``[N, 2]`` ``(x, y)`` pixel coordinates ``(col * s, row * s)``.
        ``point_strides``: ``[N]`` stride of each point.
    """
    points, point_strides = [], []
    for (h, w), s in zip(sizes, strides):
        xs = ops.arange(w, dtype=dtype) * s
        ys = ops.arange(h, dtype=dtype) * s
        grid_y, grid_x = ops.meshgrid(ys, xs, indexing="ij")
        points.append(ops.stack([ops.reshape(grid_x, [-1]), ops.reshape(grid_y, [-1])], -1))
        point_strides.append(ops.full([h * w], s, dtype=dtype))
    return ops.concatenate(points, 0), ops.concatenate(point_strides, 0)


def anchor_boxes(points, point_strides, octave_scale=8.0):
    """The square ATSS anchor of side ``octave_scale * stride`` centred on each point.

    Args:
        points: ``[N, 2]`` ``(x, y)``; point_strides: ``[N]``.

    Returns:
        ``[N, 4]`` xyxy boxes.
    """
    half = point_strides * (octave_scale / 2.0)
    x, y = points[:, 0], points[:, 1]
    return ops.stack([x - half, y - half, x + half, y + half], -1)


def distance_to_boxes(points, distances, max_shape=None):
    """Boxes from point-to-side distances (``distance2bbox`` of the official code).

    Args:
        points: ``[..., 2]`` ``(x, y)``.
        distances: ``[..., 4]`` ``(left, top, right, bottom)``, same units as points.
        max_shape: optional ``(height, width)`` (scalars or tensors broadcastable to
            ``[...]``); x is clipped to ``[0, width]`` and y to ``[0, height]``.

    Returns:
        ``[..., 4]`` xyxy boxes.
    """
    x, y = points[..., 0], points[..., 1]
    x1 = x - distances[..., 0]
    y1 = y - distances[..., 1]
    x2 = x + distances[..., 2]
    y2 = y + distances[..., 3]
    if max_shape is not None:
        height, width = max_shape
        x1, x2 = (ops.minimum(ops.maximum(v, 0.0), width) for v in (x1, x2))
        y1, y2 = (ops.minimum(ops.maximum(v, 0.0), height) for v in (y1, y2))
    return ops.stack([x1, y1, x2, y2], -1)


def boxes_to_distances(points, boxes, max_distance=None, eps=0.1):
    """Point-to-side distances of boxes (``bbox2distance``), clipped to ``[0, max - eps]``.

    Args:
        points: ``[..., 2]``; boxes: ``[..., 4]`` xyxy, same units.
        max_distance: if given, distances are clipped to ``[0, max_distance - eps]``
            (the DFL target range, ``reg_max - 0.1`` in the official code).

    Returns:
        ``[..., 4]`` ``(left, top, right, bottom)``.
    """
    x, y = points[..., 0], points[..., 1]
    d = ops.stack([x - boxes[..., 0], y - boxes[..., 1], boxes[..., 2] - x, boxes[..., 3] - y], -1)
    if max_distance is not None:
        d = ops.clip(d, 0.0, max_distance - eps)
    return d


def box_area(boxes):
    """Area of xyxy boxes ``[..., 4]`` (no +1), ``[...]``."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def aligned_iou(boxes1, boxes2, eps=1e-6):
    """IoU of corresponding boxes, ``[..., 4]`` x ``[..., 4]`` → ``[...]``; union ≥ eps."""
    inter = _aligned_intersection(boxes1, boxes2)
    union = ops.maximum(box_area(boxes1) + box_area(boxes2) - inter, eps)
    return inter / union


def aligned_giou(boxes1, boxes2, eps=1e-6):
    """Generalised IoU of corresponding boxes (``[...]``); union and hull area ≥ eps."""
    inter = _aligned_intersection(boxes1, boxes2)
    union = ops.maximum(box_area(boxes1) + box_area(boxes2) - inter, eps)
    hull_wh = ops.maximum(
        ops.maximum(boxes1[..., 2:], boxes2[..., 2:]) - ops.minimum(boxes1[..., :2], boxes2[..., :2]), 0.0
    )
    hull = ops.maximum(hull_wh[..., 0] * hull_wh[..., 1], eps)
    return inter / union - (hull - union) / hull


def pairwise_iou(boxes1, boxes2, eps=1e-6):
    """IoU of every pair: ``[..., N, 4]`` x ``[..., M, 4]`` → ``[..., N, M]``; union ≥ eps."""
    a = ops.expand_dims(boxes1, -2)
    b = ops.expand_dims(boxes2, -3)
    lt = ops.maximum(a[..., :2], b[..., :2])
    rb = ops.minimum(a[..., 2:], b[..., 2:])
    wh = ops.maximum(rb - lt, 0.0)
    inter = wh[..., 0] * wh[..., 1]
    union = ops.maximum(box_area(a) + box_area(b) - inter, eps)
    return inter / union


def _aligned_intersection(boxes1, boxes2):
    lt = ops.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = ops.minimum(boxes1[..., 2:], boxes2[..., 2:])
    wh = ops.maximum(rb - lt, 0.0)
    return wh[..., 0] * wh[..., 1]


__all__ = [
    "STRIDES",
    "level_sizes",
    "anchor_points",
    "anchor_boxes",
    "distance_to_boxes",
    "boxes_to_distances",
    "box_area",
    "aligned_iou",
    "aligned_giou",
    "pairwise_iou",
]
