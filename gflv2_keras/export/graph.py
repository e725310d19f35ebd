"""The fixed-size inference graph that ONNX, LiteRT and OpenVINO exports convert.

Input ``images``: uint8 RGB ``[batch, H, W, 3]`` with ``H x W`` fixed at export
(``--input-size``); inside, the official test preprocessing of ``detector.detect``
(keep-ratio resize to ``input_scale``, normalisation, padding to 32), the network and the
integral box decoding. Then either

* ``with_nms=True``: class-aware NMS (``tf.image.combined_non_max_suppression``) and the
  outputs of the SavedModel (``detection_boxes [B, K, 4]``, ``detection_scores [B, K]``,
  ``detection_classes [B, K]`` int32, ``num_detections [B]`` int32; -1 padding), or
* ``with_nms=False``: the pre-NMS candidates ``candidate_boxes [B, M, 4]`` (xyxy pixels of the
  ``H x W`` input) and ``candidate_scores [B, M, C']`` (``C' = num_classes + 1`` for GFLv2; the
  last column is the official redundant background column), which
  ``gflv2_keras/export/numpy_postprocess.py`` turns into the same detections.

Box layouts (``BOX_LAYOUTS``): ``"xyxy"`` = ``(x1, y1, x2, y2)`` in pixels of the input image
(as ``detector.detect``); ``"yxyx"`` = ``(ymin, xmin, ymax, xmax)`` divided by ``(H, W, H, W)``,
as the TF Object Detection API serves. Candidates are always xyxy pixels (the layout is applied
after NMS, by the NumPy post-processing).
"""

import tensorflow as tf

from gflv2_keras.models.preprocessing import preprocess_images
from gflv2_keras.ops.postprocess import decode_candidates

BOX_LAYOUTS = ("xyxy", "yxyx")
INPUT_NAME = "images"
def to_layout(boxes, valid, height, width, layout):
    """xyxy pixel boxes ``[..., 4]`` → ``layout``; rows where ``valid`` is False stay -1."""
    if layout == "xyxy":
        return boxes
    if layout != "yxyx":
        raise ValueError(f"unknown box layout {layout!r}; valid: {', '.join(BOX_LAYOUTS)}")
    scale = tf.constant([height, width, height, width], tf.float32)
    converted = tf.gather(boxes, [1, 0, 3, 2], axis=-1) / scale
    return tf.where(valid[..., None], converted, -1.0)


def default_input_size(detector):
    """``(H, W)`` of a landscape image that fills ``input_scale`` (short side, long side)."""
    long_side, short_side = max(detector.input_scale), min(detector.input_scale)
    return short_side, long_side


def inference_function(detector, input_size, batch_size=1, with_nms=True, box_layout="xyxy"):
    """A ``tf.function`` with the fixed input signature of the module docstring.

    Args:
        detector: a built ``GFLV2Detector``.
        input_size: ``(H, W)`` of the input images.
        batch_size: fixed batch dimension (``None``: any).
        with_nms: NMS inside (detections out) or not (candidates out).
        box_layout: ``"xyxy"`` or ``"yxyx"`` (see module docstring); used with ``with_nms``.
    """
    height, width = (int(v) for v in input_size)
    if min(height, width) < 1:
        raise ValueError(f"input size must be positive, got {height} x {width}")
    if box_layout not in BOX_LAYOUTS:
        raise ValueError(f"unknown box layout {box_layout!r}; valid: {', '.join(BOX_LAYOUTS)}")
    spec = tf.TensorSpec([batch_size, height, width, 3], tf.uint8, name=INPUT_NAME)

    def detections(images):
        found = detector.detect_batch(images, bounding_box_format="xyxy")
        valid = found["labels"] >= 0
        return {
            "detection_boxes": to_layout(tf.cast(found["boxes"], tf.float32), valid, height, width, box_layout),
            "detection_scores": tf.cast(found["confidence"], tf.float32),
            "detection_classes": tf.cast(found["labels"], tf.int32),
            "num_detections": tf.cast(found["num_detections"], tf.int32),
        }

    def candidates(images):
        inputs, image_info = preprocess_images(images, detector.input_scale)
        outputs = detector(inputs, training=False)
        sizes, points, strides = detector.points_for(inputs.shape[1], inputs.shape[2])
        boxes, confidence = decode_candidates(
            outputs["confidence"],
            outputs["box_logits"],
            points,
            strides,
            sizes,
            image_info,
            reg_max=detector.reg_max,
            nms_pre=int(detector.test_config["nms_pre"]),
        )
        return {"candidate_boxes": boxes, "candidate_scores": confidence}

    return tf.function(detections if with_nms else candidates, input_signature=[spec], autograph=False)
