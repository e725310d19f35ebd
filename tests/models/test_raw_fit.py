"""``detector.fit`` on raw keras-hub samples: the library's preprocessing is applied for the user."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from gflv2_keras.data.canvas import pad_to_canvas, training_canvas
from gflv2_keras.data.coco import load_coco
from gflv2_keras.data.image_io import read_record_image
from gflv2_keras.data.pipeline import build_dataset

SCALE = (128, 96)


@pytest.fixture(scope="module")
def records(tiny_coco):
    dataset = load_coco(os.path.join(tiny_coco, "annotations", "train.json"), os.path.join(tiny_coco, "train"),
                        verbose=False)
    dataset.records = dataset.records[:4]
    return dataset


def raw_samples(dataset, box_format="xyxy"):
    """The dataset's first images as raw samples: decoded uint8 images and boxes in ``box_format``."""
    def generate():
        for record in dataset.records:
            image = read_record_image(record)  # the library's one reader, as the pipeline
            boxes = keras.utils.bounding_boxes.convert_format(
                record["boxes"], "xyxy", box_format, height=record["height"], width=record["width"]
            )
            yield {"images": image, "bounding_boxes": {"boxes": boxes, "labels": record["labels"]}}

    return tf.data.Dataset.from_generator(generate, output_signature={
        "images": tf.TensorSpec([None, None, 3], tf.uint8),
        "bounding_boxes": {"boxes": tf.TensorSpec([None, 4], tf.float32), "labels": tf.TensorSpec([None], tf.int32)},
    })


def fit_loss(model, data, **kwargs):
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0))  # the weights stay the same
    history = model.fit(data, epochs=1, verbose=0, shuffle=False, **kwargs)
    return history.history["loss"][0]


@pytest.fixture(scope="module")
def pipeline_loss(records, nano_factory):
    pipeline = pad_to_canvas(
        build_dataset(records, 2, scale=SCALE, training=False, shuffle_seed=0), training_canvas(SCALE)
    )
    return fit_loss(nano_factory(seed=4, num_classes=5, input_scale=SCALE), pipeline)


@pytest.mark.parametrize("box_format", ["xyxy", pytest.param("rel_xywh", marks=pytest.mark.slow)])
def test_fit_on_raw_samples_gives_the_pipeline_loss(records, nano_factory, pipeline_loss, box_format):
    expected = pipeline_loss
    model = nano_factory(seed=4, num_classes=5, input_scale=SCALE, bounding_box_format=box_format)
    got = fit_loss(model, raw_samples(records, box_format), batch_size=2, prepare_options={"flip_prob": 0.0})
    assert np.isfinite(expected) and expected > 0
    assert got == pytest.approx(expected, rel=1e-5)


def test_flipped_raw_batches_mirror_the_boxes(records, nano_factory):
    model = nano_factory(seed=4, num_classes=5, input_scale=SCALE)
    plain = next(iter(model.prepare_dataset(raw_samples(records), 2, flip_prob=0.0)))
    flipped = next(iter(model.prepare_dataset(raw_samples(records), 2, flip_prob=1.0)))
    assert plain[0].shape[1:3] == training_canvas(SCALE)
    for i in range(2):
        height, width = (int(v) for v in plain[1]["image_shape"][i])
        valid = plain[1]["labels"][i].numpy() >= 0
        resized_w = round(records.records[i]["width"] * min(SCALE[0] / max(records.records[i]["height"],
                          records.records[i]["width"]), SCALE[1] / min(records.records[i]["height"],
                          records.records[i]["width"])))
        boxes, mirrored = plain[1]["boxes"][i].numpy()[valid], flipped[1]["boxes"][i].numpy()[valid]
        np.testing.assert_allclose(mirrored[:, [2, 0]], resized_w - boxes[:, [0, 2]], atol=1e-3)
        assert width >= resized_w and height > 0


def test_batched_raw_samples_are_refused(records, nano_factory):
    model = nano_factory(seed=4, num_classes=5, input_scale=SCALE)
    with pytest.raises(ValueError, match="unbatched"):
        model.prepare_dataset(raw_samples(records).padded_batch(2), 2)


def test_evaluate_takes_the_raw_samples_fit_takes(records, nano_factory):
    pipeline = pad_to_canvas(
        build_dataset(records, 2, scale=SCALE, training=False, shuffle_seed=0), training_canvas(SCALE)
    )
    model = nano_factory(seed=4, num_classes=5, input_scale=SCALE)
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0))
    expected = model.evaluate(pipeline, verbose=0, return_dict=True)  # inference-mode BatchNorm
    logs = model.evaluate(raw_samples(records), batch_size=2, verbose=0, return_dict=True)
    assert np.isfinite(expected["loss"]) and expected["loss"] > 0
    assert logs["loss"] == pytest.approx(expected["loss"], rel=1e-5)
    assert {"qfl", "dfl", "giou"} <= set(logs)
