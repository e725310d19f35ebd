"""What a Keras user does with any model works with the detector: summary, callbacks, freezing the
backbone, feature extraction (the README's "In the Keras world" table)."""

import keras
import numpy as np
import pytest

from gflv2_keras import GFLV2Backbone


def _batch():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 128, 128, 3)).astype("float32")
    targets = {"boxes": np.array([[[8, 10, 60, 70]], [[20, 20, 100, 110]]], "float32"),
               "labels": np.array([[0], [2]], "int32")}  # fmt: skip
    return images, targets


def test_summary_lists_backbone_and_head(nano, capsys):
    nano.summary()
    out = capsys.readouterr().out
    assert "gflv2_backbone" in out and "bbox_head" in out and "Total params" in out


def test_callbacks_see_every_loss_part(nano_factory):
    model = nano_factory(seed=2)
    model.compile(global_batch_size=2)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_train_batch_end(self, batch, logs=None):
            seen.append(dict(logs))

    model.fit(*_batch(), batch_size=2, epochs=1, verbose=0, callbacks=[Record()])
    assert seen and {"loss", "qfl", "dfl", "giou"} <= set(seen[0])
    assert all(np.isfinite(v) for v in seen[0].values())


def test_a_frozen_backbone_does_not_move(nano_factory):
    model = nano_factory(seed=3)
    model.backbone.trainable = False
    assert model.trainable_weights and all(w.path.split("/")[0] != model.backbone.name for w in model.trainable_weights)
    model.compile(global_batch_size=2)
    before = [w.numpy().copy() for w in model.backbone.weights]
    head_before = model.head.gfl_cls.kernel.numpy().copy()
    model.fit(*_batch(), batch_size=2, epochs=1, verbose=0)
    for old, new in zip(before, model.backbone.weights):
        np.testing.assert_array_equal(old, new.numpy())
    assert np.abs(model.head.gfl_cls.kernel.numpy() - head_before).max() > 0


@pytest.mark.parametrize("size", [(64, 64), (96, 160)])
def test_feature_extraction_gives_the_five_pyramid_levels(nano, size):
    assert isinstance(nano.backbone, GFLV2Backbone)
    levels = nano.backbone(np.zeros((1, *size, 3), "float32"))
    assert [tuple(p.shape[1:3]) for p in levels] == [(-(-size[0] // s), -(-size[1] // s)) for s in (8, 16, 32, 64, 128)]
    assert all(p.shape[-1] == nano.fpn_channels for p in levels)
    encoder = nano.backbone.image_encoder(np.zeros((1, *size, 3), "float32"))  # C3, C4, C5
    assert len(encoder) == 3
