"""The inference graphs that ONNX, LiteRT and OpenVINO exports convert: fixed canvas or per-image.

**Fixed canvas** (``input_size=(H, W)``, the default, every format). Inputs ``images``: uint8
RGB ``[batch, H, W, 3]``, each image already resized keeping its aspect ratio to fit ``H x W``
and placed at the top-left (``numpy_postprocess.letterbox``: ``factor = min(H / h, W / w)``, the
official keep-ratio rule with the export size as the scale), and ``image_shape``: int32
``[batch, 2]``, the ``(height, width)`` of each resized image. Inside, the graph of
``detector.detect`` without its resize (``models.detection_graph`` with ``image_shape``:
normalisation, zero outside ``image_shape``, padding to /32, the network with its frozen
BatchNorms folded, the integral box decoding clipped to ``image_shape``), traced with the
portable layers. Boxes are in pixels of the canvas; ``numpy_postprocess.to_original`` maps them
to the original image. For an image of the canvas' orientation and the default size (the
preset's input scale) the resized image is the official one; what differs from ``predict`` is
the padding up to the whole canvas (``docs/export.md`` measures it).

**Per-image canvas** (``input_size="dynamic"``; ONNX, OpenVINO). Input ``images``: uint8 RGB
``[batch, h, w, 3]`` of any size; inside, exactly ``detector.detect``'s graph (the official
keep-ratio resize to the preset's input scale, padding to /32 of each image's own size); boxes in
pixels of the original image. LiteRT needs static shapes and stays fixed-size.

Then either

* ``with_nms=True``: ``detection_graph.detect_batch`` (class-aware NMS,
  ``tf.image.combined_non_max_suppression``) and the outputs of the SavedModel
  (``detection_boxes [B, K, 4]``, ``detection_scores [B, K]``, ``detection_classes [B, K]``
  int32, ``num_detections [B]`` int32; -1 padding), or
* ``with_nms=False``: ``detection_graph.pre_nms_candidates``: ``candidate_boxes [B, M, 4]``
  (xyxy pixels of the canvas, what the NMS compares) and ``candidate_scores [B, M, C']``
  (``C' = num_classes + 1`` for GFLv2; the last column is the official redundant background
  column), which ``gflv2_keras/export/numpy_postprocess.py`` turns into the same detections.
  When the box format is not ``xyxy``, also ``candidate_output_boxes [B, M, 4]``: the same
  candidates in that format, from which the NumPy post-processing takes the kept boxes.

Box formats (``--box-layout``): the names of ``keras.utils.bounding_boxes``
(``ops.box_formats.BOUNDING_BOX_FORMATS``: ``xyxy``, ``yxyx``, ``xywh``, ``center_xywh``,
``center_yxhw``, ``rel_xyxy``, ``rel_yxyx``, ``rel_xywh``, ``rel_center_xywh``), converted by
``ops.box_formats.convert_boxes`` from the xyxy pixels (``rel_*``: relative to ``image_shape``,
which is relative to the original image, or to the original image of a per-image export). The
TF Object Detection API's normalised ``(ymin, xmin, ymax, xmax)`` is ``rel_yxyx``; exports
written before these names, whose ``export.json`` says ``"box_layout": "yxyx"``, hold that
layout (``LEGACY_BOX_LAYOUTS``).
"""

import tensorflow as tf

from gflv2_keras.models.detection_graph import detect_batch, pre_nms_candidates
from gflv2_keras.ops.box_formats import convert_boxes, validate_bounding_box_format

INPUT_NAME = "images"
IMAGE_SHAPE_NAME = "image_shape"  # fixed canvas: (height, width) of the resized image in it
DYNAMIC = "dynamic"  # ``input_size`` of a per-image-canvas export
# ``export.json`` "box_layout" of exports written before the Keras names -> its Keras format.
LEGACY_BOX_LAYOUTS = {"xyxy": "xyxy", "yxyx": "rel_yxyx"}


def default_input_size(detector):
    """``(H, W)`` of a landscape image that fills ``input_scale`` (short side, long side)."""
    long_side, short_side = max(detector.input_scale), min(detector.input_scale)
    return short_side, long_side


def inference_function(detector, input_size, batch_size=1, with_nms=True, box_layout="xyxy"):
    """A ``tf.function`` with the input signature of the module docstring.

    Args:
        detector: a built ``GFLV2Detector``.
        input_size: ``(H, W)`` of the fixed canvas (inputs ``images`` and ``image_shape``), or
            ``"dynamic"`` (input ``images`` of any size, the per-image canvas; needs NMS inside).
        batch_size: fixed batch dimension (``None``: any).
        with_nms: NMS inside (detections out) or not (candidates out).
        box_layout: the format of the returned boxes, a name of ``ops.box_formats``.
    """
    fmt = validate_bounding_box_format(box_layout)
    if input_size == DYNAMIC:
        if not with_nms:
            raise ValueError("a per-image-canvas (dynamic size) export needs the NMS inside the graph")
        spec = tf.TensorSpec([batch_size, None, None, 3], tf.uint8, name=INPUT_NAME)

        def per_image(images):
            return _detection_outputs(detect_batch(detector, images, bounding_box_format=fmt))

        return tf.function(per_image, input_signature=[spec], autograph=False)

    height, width = (int(v) for v in input_size)
    if min(height, width) < 1:
        raise ValueError(f"input size must be positive, got {height} x {width}")
    specs = [
        tf.TensorSpec([batch_size, height, width, 3], tf.uint8, name=INPUT_NAME),
        tf.TensorSpec([batch_size, 2], tf.int32, name=IMAGE_SHAPE_NAME),
    ]

    def detections(images, image_shape):
        return _detection_outputs(detect_batch(detector, images, bounding_box_format=fmt, image_shape=image_shape))

    def candidates(images, image_shape):
        found = pre_nms_candidates(detector, images, image_shape=image_shape)
        outputs = {"candidate_boxes": found["boxes"], "candidate_scores": found["scores"]}
        if fmt != "xyxy":
            shape = tf.cast(image_shape, tf.float32)[:, :, None, None]  # each image's own size
            outputs["candidate_output_boxes"] = convert_boxes(found["boxes"], "xyxy", fmt, shape[:, 0], shape[:, 1])
        return outputs

    return tf.function(detections if with_nms else candidates, input_signature=specs, autograph=False)


def _detection_outputs(found):
    """``detect_batch``'s dict → the export's output names and dtypes (the SavedModel's)."""
    return {
        "detection_boxes": tf.cast(found["boxes"], tf.float32),
        "detection_scores": tf.cast(found["confidence"], tf.float32),
        "detection_classes": tf.cast(found["labels"], tf.int32),
        "num_detections": tf.cast(found["num_detections"], tf.int32),
    }
