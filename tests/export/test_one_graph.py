"""One inference graph: ``models.detection_graph`` is what ``detect`` and every export trace.

``detect_batch`` (the function) gives the detector's ``detect_batch``; NMS of
``pre_nms_candidates`` gives ``detect_batch``; every export graph has the frozen BatchNorms
folded (no op of a ``batchnorm`` name scope left, while the plain ``detector(x)`` has them);
the LiteRT export's candidates are ``pre_nms_candidates`` and its NumPy-NMS detections are
``detect``'s; ``keras_export`` writes ``detector(x)`` for any input size.
"""

import numpy as np
import pytest
import tensorflow as tf

from gflv2_keras.export import numpy_postprocess
from gflv2_keras.models import detection_graph

from test_export_formats import SIZE, needs_extra, pattern


@pytest.fixture(scope="module")
def graph_setup(scoring_nano):
    detector, _ = scoring_nano
    return detector, [pattern(*SIZE, seed) for seed in (21, 22)]


def as_numpy(tree):
    return {key: np.asarray(value) for key, value in tree.items()}


def test_the_function_is_the_detectors_detect_batch(graph_setup):
    detector, images = graph_setup
    batch = tf.constant(np.stack(images))
    for fmt in ("xyxy", "rel_yxyx", "center_xywh"):
        ours = as_numpy(detection_graph.detect_batch(detector, batch, fmt))
        theirs = as_numpy(detector.detect_batch(batch, fmt))
        assert set(ours) == set(theirs)
        for key in ours:
            np.testing.assert_allclose(ours[key], theirs[key], atol=1e-5, rtol=0, err_msg=f"{fmt} {key}")
    ours = as_numpy(detection_graph.detect_batch(detector, batch, return_box_distributions=True))
    theirs = as_numpy(detector.detect_batch(batch, return_box_distributions=True))
    assert set(ours) == set(theirs) and "side_std" in ours
    for key in ours:
        np.testing.assert_allclose(ours[key], theirs[key], atol=1e-5, rtol=0, err_msg=key)


def test_nms_of_the_candidates_is_detect_batch(graph_setup):
    detector, images = graph_setup
    batch = tf.constant(np.stack(images))
    candidates = detection_graph.pre_nms_candidates(detector, batch, return_candidates=True)
    count = candidates["boxes"].shape[1]
    assert candidates["scores"].shape[1:] == (count, detector.num_classes + 1)
    assert candidates["box_logits"].shape[1:] == (count, 4 * (detector.reg_max + 1))
    assert candidates["points"].shape[1:] == (count, 2) and candidates["strides"].shape[1:] == (count,)
    config = detector.test_config
    found = numpy_postprocess.postprocess(
        np.asarray(candidates["boxes"]), np.asarray(candidates["scores"]), detector.num_classes,
        config["score_threshold"], config["iou_threshold"], config["max_detections"],
    )  # fmt: skip
    detections = as_numpy(detection_graph.detect_batch(detector, batch, "xyxy"))
    for i, result in enumerate(found):
        n = int(detections["num_detections"][i])
        assert n == len(result["boxes"]) > 0
        np.testing.assert_array_equal(result["labels"], detections["labels"][i, :n])
        np.testing.assert_allclose(result["boxes"], detections["boxes"][i, :n], atol=1e-4, rtol=0)
        np.testing.assert_allclose(result["confidence"], detections["confidence"][i, :n], atol=1e-6, rtol=0)


def batchnorm_nodes(function):
    """Nodes of a traced function (its library included) under a ``batchnorm`` name scope:
    ``tf.nn.batch_normalization``, what an unfolded Keras ``BatchNormalization`` runs."""
    graph_def = function.get_concrete_function().graph.as_graph_def()
    names = [node.name for node in graph_def.node]
    names += [node.name for library in graph_def.library.function for node in library.node_def]
    return [name for name in names if "/batchnorm/" in name]


def test_every_export_graph_has_the_batchnorms_folded(graph_setup):
    from gflv2_keras.export.graph import inference_function
    from gflv2_keras.export.saved_model import TENSOR_SIGNATURE, serving_endpoints
    from gflv2_keras.models.fast_inference import foldable_pairs

    detector, _ = graph_setup
    assert len(foldable_pairs(detector)) > 0, "the test needs frozen BatchNorms"
    spec = [tf.TensorSpec([1, None, None, 3], tf.float32)]
    plain = tf.function(lambda x: detector(x, training=False)["confidence"], input_signature=spec)
    assert batchnorm_nodes(plain), "the check must see unfolded BatchNorms"
    exports = {
        "litert": inference_function(detector, SIZE, with_nms=False),
        "onnx/openvino": inference_function(detector, SIZE, with_nms=True),
    }
    body, signature = serving_endpoints(detector)[TENSOR_SIGNATURE]
    exports["saved_model"] = tf.function(body, input_signature=signature)
    for name, function in exports.items():
        assert batchnorm_nodes(function) == [], name
    assert all(conv._folded_norm is None for conv, _ in foldable_pairs(detector))  # unfolded afterwards


def assert_same_candidates(boxes, scores, expected_boxes, expected_scores, box_atol=1e-3, score_atol=1e-5):
    """The same set of candidates: near-tied scores may swap places inside a level's top-k, so
    each candidate is matched to the closest one of the other side (boxes and scores)."""
    ours = np.concatenate([np.asarray(boxes) / box_atol, np.asarray(scores) / score_atol], axis=-1)
    theirs = np.concatenate([np.asarray(expected_boxes) / box_atol, np.asarray(expected_scores) / score_atol], -1)
    assert ours.shape == theirs.shape
    distance = np.abs(ours[:, None, :] - theirs[None, :, :]).max(axis=-1)  # in units of the tolerances
    assert distance.min(axis=1).max() <= 1 and distance.min(axis=0).max() <= 1


@needs_extra("litert")
def test_litert_export_is_the_candidates_and_detect(graph_setup, tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    from gflv2_keras.export.formats import export_portable
    from gflv2_keras.export.runtimes import load_exported

    detector, images = graph_setup
    folder = export_portable(detector, "litert", tmp_path / "litert")
    runner = Interpreter(model_path=str(folder / "model.tflite")).get_signature_runner()
    exported = load_exported(folder)
    for image in images:
        out = runner(images=image[None], image_shape=np.int32([image.shape[:2]]))  # the image fills the canvas
        assert set(out) == {"candidate_boxes", "candidate_scores"}
        expected = detection_graph.pre_nms_candidates(detector, tf.constant(image[None]))
        assert_same_candidates(out["candidate_boxes"][0], out["candidate_scores"][0], expected["boxes"][0],
                               expected["scores"][0])  # fmt: skip
        result, reference = exported.detect(image), detector.detect(image)
        assert len(result["boxes"]) == len(reference["boxes"]) > 0
        np.testing.assert_array_equal(result["labels"], reference["labels"])
        np.testing.assert_allclose(result["boxes"], reference["boxes"], atol=1e-3, rtol=0)
        np.testing.assert_allclose(result["confidence"], reference["confidence"], atol=1e-5, rtol=0)


def test_keras_export_runs_at_any_size(graph_setup, tmp_path):
    from gflv2_keras.export import keras_export

    detector, _ = graph_setup
    keras_export(detector, tmp_path / "keras", verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "keras"))  # keep it: it owns the variables
    rng = np.random.default_rng(0)
    for height, width in ((64, 64), (96, 160)):
        x = rng.normal(size=(2, height, width, 3)).astype(np.float32)
        served, expected = as_numpy(loaded.serve(tf.constant(x))), as_numpy(detector(x, training=False))
        assert set(served) == {"confidence", "box_logits"}
        for key in served:
            assert served[key].shape == expected[key].shape
            np.testing.assert_allclose(served[key], expected[key], atol=1e-4, rtol=1e-4, err_msg=key)
