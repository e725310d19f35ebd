"""The fixed-size inference graph that ONNX, LiteRT and OpenVINO exports convert.

Input ``images``: uint8 RGB ``[batch, H, W, 3]`` with ``H x W`` fixed at export
(``--input-size``). Inside, the graph of ``detector.detect`` (``models.detection_graph``: the
official test preprocessing, the network with its frozen BatchNorms folded, the integral box
decoding), traced with the portable layers. Then either

* ``with_nms=True``: ``detection_graph.detect_batch`` (class-aware NMS,
  ``tf.image.combined_non_max_suppression``) and the outputs of the SavedModel
  (``detection_boxes [B, K, 4]``, ``detection_scores [B, K]``, ``detection_classes [B, K]``
  int32, ``num_detections [B]`` int32; -1 padding), or
* ``with_nms=False``: ``detection_graph.pre_nms_candidates``: ``candidate_boxes [B, M, 4]``
  (xyxy pixels of the ``H x W`` input, what the NMS compares) and ``candidate_scores [B, M, C']``
  (``C' = num_classes + 1`` for GFLv2; the last column is the official redundant background
  column), which ``gflv2_keras/export/numpy_postprocess.py`` turns into the same detections.
  When the box format is not ``xyxy``, also ``candidate_output_boxes [B, M, 4]``: the same
  candidates in that format, from which the NumPy post-processing takes the kept boxes.

Box formats (``--box-layout``): the names of ``keras.utils.bounding_boxes``
(``ops.box_formats.BOUNDING_BOX_FORMATS``: ``xyxy``, ``yxyx``, ``xywh``, ``center_xywh``,
``center_yxhw``, ``rel_xyxy``, ``rel_yxyx``, ``rel_xywh``, ``rel_center_xywh``), converted by
``ops.box_formats.convert_boxes`` from the xyxy pixels of the ``H x W`` input (``rel_*``:
relative to ``H``, ``W``). The TF Object Detection API's normalised ``(ymin, xmin, ymax, xmax)``
is ``rel_yxyx``; exports written before these names, whose ``export.json`` says
``"box_layout": "yxyx"``, hold that layout (``LEGACY_BOX_LAYOUTS``).
"""

import tensorflow as tf

from gflv2_keras.models.detection_graph import detect_batch, pre_nms_candidates
from gflv2_keras.ops.box_formats import convert_boxes, validate_bounding_box_format

INPUT_NAME = "images"
# ``export.json`` "box_layout" of exports written before the Keras names -> its Keras format.
LEGACY_BOX_LAYOUTS = {"xyxy": "xyxy", "yxyx": "rel_yxyx"}


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
        box_layout: the format of the returned boxes, a name of ``ops.box_formats``.
    """
    height, width = (int(v) for v in input_size)
    if min(height, width) < 1:
        raise ValueError(f"input size must be positive, got {height} x {width}")
    fmt = validate_bounding_box_format(box_layout)
    spec = tf.TensorSpec([batch_size, height, width, 3], tf.uint8, name=INPUT_NAME)

    def detections(images):
        found = detect_batch(detector, images, bounding_box_format=fmt)
        return {
            "detection_boxes": tf.cast(found["boxes"], tf.float32),
            "detection_scores": tf.cast(found["confidence"], tf.float32),
            "detection_classes": tf.cast(found["labels"], tf.int32),
            "num_detections": tf.cast(found["num_detections"], tf.int32),
        }

    def candidates(images):
        found = pre_nms_candidates(detector, images)
        outputs = {"candidate_boxes": found["boxes"], "candidate_scores": found["scores"]}
        if fmt != "xyxy":
            outputs["candidate_output_boxes"] = convert_boxes(found["boxes"], "xyxy", fmt, height, width)
        return outputs

    return tf.function(detections if with_nms else candidates, input_signature=[spec], autograph=False)
