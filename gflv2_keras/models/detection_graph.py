"""The inference graph of a GFLv2 detector, as two functions every inference path traces.

``pre_nms_candidates(detector, images)``: the official test preprocessing (keep-ratio resize,
normalisation, zero padding to /32), the network with its frozen BatchNorms folded into their
convolutions (``fast_inference.folded_norms``), the anchor points and the per-level top-k
integral decoding (``ops.postprocess.decode_candidates``): every (point, class) candidate the
NMS will see, in original-image pixels.

``detect_batch(detector, images)``: the same candidates, class-aware NMS and the conversion to a
``bounding_box_format`` (``ops.postprocess.postprocess``, whose first step is that same
``decode_candidates``): the detections of ``detector.detect``/``predict``.

Who traces what:

================================================  ==========================================
``detector.detect`` / ``predict`` / evaluation    ``detect_batch`` (``network``: the fused,
                                                  optionally XLA-compiled network)
SavedModel (TF Serving, ``TFSMLayer``)            ``detect_batch``
ONNX, OpenVINO (NMS inside)                       ``detect_batch``
LiteRT (NMS in NumPy, ``postprocess.py``)         ``pre_nms_candidates``
================================================  ==========================================

So an export differs from ``detect`` only where its runtime must: the portable network layers
(no XLA kernel, no deformable-convolution custom op) and, for LiteRT, the NMS run in NumPy.

Both are graph-safe (``tf.function``, export tracing) and take uint8 RGB ``[B, H, W, 3]`` of one
size; ``H`` and ``W`` may be dynamic (the SavedModel) or static (fixed-size exports, the compiled
per-canvas functions of ``detect``).

Fixed-size exports pass ``image_shape`` as well: their images are canvases that already hold
each image keep-ratio resized at the top-left (``export/numpy_postprocess.py letterbox``), so
the graph does not resize; it normalises, zeroes the canvas outside ``image_shape`` (the
official zero padding), pads to /32 (``canvas_inputs``) and returns boxes in canvas pixels.
"""

import numpy as np
from keras import ops

from gflv2_keras.models.fast_inference import folded_norms
from gflv2_keras.models.preprocessing import MEAN, SIZE_DIVISOR, STD, canvas_size, preprocess_images
from gflv2_keras.ops.box_formats import convert_boxes, validate_bounding_box_format
from gflv2_keras.ops.postprocess import decode_candidates, postprocess


def static_hw(images):
    """``(H, W)`` of an NHWC batch: python ints when static, else scalar tensors."""
    shape = ops.shape(images)
    return shape[1], shape[2]


def canvas_inputs(images, image_shape, divisor=SIZE_DIVISOR):
    """Network inputs of fixed-canvas images that are already resized (the fixed-size exports).

    Args:
        images: uint8 RGB ``[B, H, W, 3]`` with static ``H``, ``W``: image ``b`` occupies the
            top-left ``image_shape[b]`` of its canvas (the rest is ignored).
        image_shape: int ``[B, 2]`` ``(height, width)`` of each resized image, ``<= (H, W)``.

    Returns:
        ``(inputs, image_info)`` as ``preprocessing.preprocess_images``: float32 ``[B, Hp, Wp,
        3]`` normalised, zero outside ``image_shape`` and padded to ``divisor``; ``image_info``
        with that ``image_shape`` and a ``scale_factor`` of 1 (boxes stay in canvas pixels).
    """
    height, width = (int(v) for v in static_hw(images))
    shape = ops.cast(image_shape, "int32")
    inside = (ops.arange(height, dtype="int32")[None, :, None] < shape[:, 0][:, None, None]) & (
        ops.arange(width, dtype="int32")[None, None, :] < shape[:, 1][:, None, None]
    )
    normalized = (ops.cast(images, "float32") - np.float32(MEAN)) / np.float32(STD)
    inputs = ops.where(inside[..., None], normalized, ops.zeros_like(normalized))
    padded_h, padded_w = -(-height // divisor) * divisor, -(-width // divisor) * divisor
    inputs = ops.pad(inputs, [[0, 0], [0, padded_h - height], [0, padded_w - width], [0, 0]])
    image_shape = ops.cast(shape, "float32")
    return inputs, {"image_shape": image_shape, "scale_factor": ops.ones_like(image_shape)}


def network_outputs(detector, images, canvas=None, network=None, image_shape=None):
    """Preprocess ``images`` and run the network with its frozen BatchNorms folded.

    Args:
        detector: a ``GFLV2Detector`` (reads ``input_scale``, ``points_for`` and ``call``).
        images: uint8 RGB ``[B, H, W, 3]`` of one size.
        canvas: the static padded network size ``(Hp, Wp)`` (``preprocessing.canvas_size``);
            ``None`` uses it when ``H`` and ``W`` are static, else pads in the graph.
        network: callable ``[B, Hp, Wp, 3]`` float → the outputs of ``detector(x)``; default the
            portable ``detector(x, training=False)`` (what exports trace).
        image_shape: ``None`` (the official preprocessing), or int ``[B, 2]``: ``images`` are
            fixed canvases holding already resized images of these sizes (``canvas_inputs``).

    Returns:
        ``{"confidence": [B, N, C'], "box_logits": [B, N, 4(R+1)], "points": [N, 2],
        "strides": [N], "sizes": [(h, w)] per level, "image_info": {"image_shape",
        "scale_factor"}}`` (``preprocessing.preprocess_images``).
    """
    if image_shape is not None:
        inputs, image_info = canvas_inputs(images, image_shape)
    else:
        original_h, original_w = static_hw(images)
        if canvas is None and isinstance(original_h, int) and isinstance(original_w, int):
            canvas = canvas_size(original_h, original_w, detector.input_scale)
        inputs, image_info = preprocess_images(images, detector.input_scale, canvas=canvas)
    with folded_norms(detector):
        outputs = network(inputs) if network is not None else detector(inputs, training=False)
    sizes, points, point_strides = detector.points_for(*static_hw(inputs))
    return {
        "confidence": outputs["confidence"],
        "box_logits": outputs["box_logits"],
        "points": points,
        "strides": point_strides,
        "sizes": sizes,
        "image_info": image_info,
    }


def pre_nms_candidates(detector, images, canvas=None, network=None, return_candidates=False, image_shape=None):
    """Everything of ``detect_batch`` before NMS: the decoded per-level top-k candidates.

    Args: ``images``, ``canvas``, ``network``, ``image_shape`` as ``network_outputs`` (with
        ``image_shape``, boxes are in canvas pixels); ``return_candidates`` also returns the
        candidates' raw data (what the box-distribution outputs read).

    Returns:
        ``{"boxes": [B, K, 4] float32 xyxy pixels of the original images, "scores": [B, K, C']
        float32 per-class joint probabilities (``C' = num_classes + 1`` for GFLv2: the last
        column is the official redundant background column), "image_info": {...}}`` with
        ``K = sum over levels of min(nms_pre, points of the level)``. Class-aware NMS of
        ``(boxes, scores)`` (score ``> score_threshold``, IoU ``> iou_threshold`` suppressed, the
        best ``max_detections`` kept, background column dropped) gives ``detect_batch``'s
        detections. With ``return_candidates`` also ``"box_logits" [B, K, 4(R+1)]`` float32,
        ``"points" [B, K, 2]`` (network-input pixels) and ``"strides" [B, K]``.
    """
    raw = network_outputs(detector, images, canvas=canvas, network=network, image_shape=image_shape)
    decoded = decode_candidates(
        raw["confidence"],
        raw["box_logits"],
        raw["points"],
        raw["strides"],
        raw["sizes"],
        raw["image_info"],
        reg_max=detector.reg_max,
        nms_pre=int(detector.test_config["nms_pre"]),
        return_candidates=return_candidates,
    )
    candidates = {"boxes": decoded[0], "scores": decoded[1], "image_info": raw["image_info"]}
    if return_candidates:
        candidates.update(box_logits=decoded[2], points=decoded[3], strides=decoded[4])
    return candidates


def detect_batch(detector, images, bounding_box_format=None, canvas=None, return_box_distributions=False, network=None,
                 image_shape=None):  # fmt: skip
    """Preprocess, run and post-process a batch of equally sized uint8 images (graph-safe).

    The body of ``GFLV2Detector.detect_batch``: ``pre_nms_candidates``' path followed by NMS
    (``ops.postprocess.postprocess``, which starts with the same ``decode_candidates``).

    Args:
        detector: a ``GFLV2Detector``.
        images: uint8 RGB ``[B, H, W, 3]``.
        bounding_box_format: format of the returned boxes (``ops.box_formats``; ``rel_*``
            relative to each original image); ``None`` means the detector's
            ``bounding_box_format`` (the exports ask for ``"xyxy"`` or their ``--box-layout``).
        canvas: the static padded network size ``(Hp, Wp)`` (``preprocessing.canvas_size``);
            ``None`` uses it when ``H`` and ``W`` are static, else pads in the graph (export).
        return_box_distributions: also return what the head knew about each kept box,
            computed after NMS for the kept detections only (off by default; see
            ``docs/box_uncertainty.md``).
        network: callable ``[B, Hp, Wp, 3]`` float → the outputs of ``detector(x)``; default the
            portable ``detector(x, training=False)`` (what exports trace). ``detect``/``predict``
            pass their optimised one (``models.fast_inference.InferenceFunctions.network``).
        image_shape: int ``[B, 2]`` for fixed-canvas images already resized (``canvas_inputs``,
            the fixed-size exports): boxes are then in canvas pixels, ``rel_*`` formats relative
            to each ``image_shape`` (that is, to the original image).

    The network runs with frozen BatchNorms folded into their convolutions. Decoding and NMS
    are float32 whatever the dtype policy.

    Returns:
        ``{"boxes": [B, K, 4] of the original images, "confidence": [B, K], "labels": [B, K]
        int32, "num_detections": [B] int32}`` with ``K = max_detections``; rows past
        ``num_detections`` are -1 in every field. With ``return_box_distributions``, also
        (float32, sides ordered left, top, right, bottom, pixels of the ORIGINAL image
        whatever ``bounding_box_format``; ``ops.box_distributions.kept_box_distributions``):
        ``"classification" [B, K]`` class probability, ``"quality" [B, K]`` DGQP quality
        (GFLv2 only; ``confidence = classification * quality``), ``"side_offsets" [B, K, 4]``
        expected anchor-to-side distances (what the box uses), ``"side_std" [B, K, 4]`` their
        standard deviations, ``"side_topk_mass" [B, K, 4]`` mass of the top-``reg_topk`` bins
        (what DGQP reads), ``"side_distributions" [B, K, 4, reg_max + 1]`` bin probabilities,
        ``"bin_widths" [B, K, 4]`` one bin in pixels, ``"anchor_points" [B, K, 2]`` ``(x, y)``.
    """
    fmt = (
        detector.bounding_box_format
        if bounding_box_format is None
        else validate_bounding_box_format(bounding_box_format)
    )
    raw = network_outputs(detector, images, canvas=canvas, network=network, image_shape=image_shape)
    detections = postprocess(
        raw["confidence"],
        raw["box_logits"],
        raw["points"],
        raw["strides"],
        raw["sizes"],
        raw["image_info"],
        num_classes=detector.num_classes,
        reg_max=detector.reg_max,
        **detector.test_config,
        **(box_distribution_options(detector) if return_box_distributions else {}),
    )
    if fmt != "xyxy":
        if image_shape is None:
            original_h, original_w = static_hw(images)
        else:  # per image, broadcast against the [B, K, 1] coordinates
            original_h, original_w = (raw["image_info"]["image_shape"][:, i, None, None] for i in (0, 1))
        boxes = convert_boxes(detections["boxes"], "xyxy", fmt, original_h, original_w)
        detections["boxes"] = ops.where(detections["labels"][..., None] >= 0, boxes, -1.0)
    return detections


def box_distribution_options(detector):
    """``postprocess`` arguments of the optional box-distribution outputs."""
    head = detector.head
    options = {"return_box_distributions": True, "reg_topk": head.reg_topk}
    if head.use_dgqp:
        # The head's own DGQP on the kept points' logits, viewed as a [B, K, 1] feature map.
        options["quality_fn"] = lambda logits: head.quality(logits[:, :, None, :])[:, :, 0, 0]
    return options
