"""What a training run leaves to look at: preset/ (best held-out epoch) and last/, the data and evaluation
pictures, and TensorBoard's per-step scalars and prediction pictures."""

import contextlib
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from gflv2_keras.training.callbacks import BestPresetCallback, StepScalarLogger, best_epoch

STEPS = 2  # per epoch


def read_events(folder):
    """``{tag: [(step, value)]}`` of every event file in ``folder`` (scalars as floats, images as their PNG bytes)."""
    import tensorflow as tf

    found = {}
    for path in sorted(Path(folder).glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                array = tf.make_ndarray(value.tensor)
                found.setdefault(value.tag, []).append((event.step, array.item() if array.ndim == 0 else list(array)))
    return found


@pytest.fixture(scope="module")
def run(tiny_coco, nano_recipe, tmp_path_factory):
    """2 epochs x 2 steps of the nano model, evaluated after each epoch, TensorBoard on."""
    from gflv2_keras.training.trainer import train

    recipe = nano_recipe(name="nano_outputs", eval_every_epochs=1, checkpoint_every_steps=0, keep_checkpoints=2,
                         multiscale_range=None)  # one canvas: one traced training step
    work_dir = tmp_path_factory.mktemp("outputs") / "work"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        result = train(recipe, str(work_dir), data_root=tiny_coco, steps_per_epoch=STEPS, verbose=0)
    return {**result, "work_dir": work_dir, "printed": printed.getvalue()}


def test_the_work_dir_holds_the_pictures_and_both_presets(run):
    work_dir = run["work_dir"]
    for name in ("labels.png", "evaluation/epoch_1/pr_curves.png", "evaluation/epoch_1/confusion_matrix.png",
                 "evaluation/epoch_2/pr_curves.png", "curve.png"):
        with Image.open(work_dir / name) as image:
            assert image.format == "PNG", name
            image.verify()
    assert len(list((work_dir / "ground_truth").glob("*.jpg"))) == 4
    assert list((work_dir / "evaluation" / "epoch_1" / "examples").glob("*.jpg"))
    for folder in ("preset", "last"):
        assert (work_dir / folder / "model.weights.h5").is_file() and (work_dir / folder / "task.json").is_file()


def test_preset_is_the_best_evaluated_epoch_and_last_the_last(run):
    from gflv2_keras.models.detector import GFLV2Detector
    from gflv2_keras.training.checkpoint import checkpoint_path, read_checkpoint

    work_dir, history = run["work_dir"], run["history"]
    aps = [h["val_AP"] for h in history]
    expected = int(np.argmax(aps)) + 1  # the first of equal values
    selected = json.loads((work_dir / "preset" / "metadata.json").read_text())["selected"]
    assert (selected["metric"], selected["epoch"], selected["value"]) == ("val_AP", expected, pytest.approx(max(aps)))
    assert json.loads((work_dir / "last" / "metadata.json").read_text())["selected"]["epoch"] == 2
    assert f"best epoch {expected} of 2: val_AP {max(aps):.4f}" in run["printed"]

    # preset/ holds the weights of the best epoch's end (its checkpoint), last/ the final ones.
    arrays = read_checkpoint(checkpoint_path(str(work_dir / "checkpoints"), expected * STEPS))[1]
    best = GFLV2Detector.from_preset(str(work_dir / "preset"))
    for variable, array in zip(best.weights, arrays):
        np.testing.assert_array_equal(np.asarray(variable), array, err_msg=variable.path)
    last = GFLV2Detector.from_preset(str(work_dir / "last"))
    for a, b in zip(last.weights, run["model"].weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_tensorboard_has_the_losses_of_every_step_and_the_pictures(run):
    work_dir, history = run["work_dir"], run["history"]
    scalars = read_events(work_dir / "tensorboard" / "steps")
    assert set(scalars) == {f"step/{n}" for n in ("loss", "qfl", "dfl", "giou", "lr")}
    for values in scalars.values():
        assert [step for step, _ in values] == [1, 2, 3, 4]
    loss = [v for _, v in scalars["step/loss"]]
    parts = np.sum([[v for _, v in scalars[f"step/{n}"]] for n in ("qfl", "dfl", "giou")], axis=0)
    np.testing.assert_allclose(loss, parts, rtol=1e-4)
    for epoch in (0, 1):  # the steps' own values average to the epoch's logged mean
        assert np.mean(loss[epoch * STEPS:(epoch + 1) * STEPS]) == pytest.approx(history[epoch]["loss"], rel=1e-5)
    assert loss[1] != pytest.approx(history[0]["loss"], rel=1e-6)  # not the running mean
    assert [v for _, v in scalars["step/lr"]][-1] == pytest.approx(history[-1]["lr"])

    pictures = read_events(work_dir / "tensorboard" / "predictions")
    assert len(pictures) == 2  # tiny_coco's two validation images
    for tag, values in pictures.items():
        assert tag.startswith("predictions/0") and [step for step, _ in values] == [STEPS, 2 * STEPS]
        width, height, png = values[-1][1][:3]
        with Image.open(io.BytesIO(png)) as image:
            assert image.size == (int(width), int(height)) and image.width > image.height  # two panels


class _Model:
    def __init__(self, iterations=0):
        self.optimizer = SimpleNamespace(iterations=np.int64(iterations))


def _best_callback(tmp_path, metric="AP", history=None):
    saved = []
    callback = BestPresetCallback(tmp_path / "preset", metric, history,
                                  save=lambda model, folder, metadata: saved.append(metadata["selected"]))
    callback.set_model(_Model(7))
    return callback, saved


def test_the_best_preset_follows_the_recorded_ap(tmp_path):
    callback, saved = _best_callback(tmp_path)
    for epoch, ap in enumerate([0.3, 0.5, 0.4, 0.5, None]):
        callback.on_epoch_end(epoch, {"loss": 1.0} if ap is None else {"loss": 1.0, "val_AP": ap})
    assert [s["epoch"] for s in saved] == [1, 2]  # a tie keeps the earlier epoch, no evaluation changes nothing
    assert callback.best == {"metric": "val_AP", "epoch": 2, "value": 0.5}
    assert best_epoch([{"epoch": 1, "val_AP": 0.2}, {"epoch": 2, "val_AP": 0.2}, {"epoch": 3}]) == {
        "metric": "val_AP", "epoch": 1, "value": 0.2}
    assert best_epoch([{"epoch": 1, "loss": 2.0}]) is None


def test_a_resumed_run_keeps_an_earlier_best(tmp_path):
    history = [{"epoch": 1, "val_AP": 0.3, "val_AP50": 0.9}, {"epoch": 2, "val_AP": 0.5, "val_AP50": 0.6}]
    callback, saved = _best_callback(tmp_path, history=history)
    assert callback.best["epoch"] == 2
    callback.on_epoch_end(2, {"val_AP": 0.45})
    assert not saved
    callback.on_epoch_end(3, {"val_AP": 0.6})
    assert [s["epoch"] for s in saved] == [4]

    # The folder on disk holds epoch 2 (chosen by AP); resumed with --best-metric AP50 the record is that
    # epoch's AP50 from the history, not epoch 1's higher AP50 (whose weights were never kept).
    (tmp_path / "preset").mkdir()
    (tmp_path / "preset" / "metadata.json").write_text(
        json.dumps({"selected": {"metric": "val_AP", "epoch": 2, "value": 0.5}}))
    callback, saved = _best_callback(tmp_path, "AP50", history)
    assert callback.best == {"metric": "val_AP50", "epoch": 2, "value": 0.6}
    callback.on_epoch_end(2, {"val_AP": 0.1, "val_AP50": 0.7})
    assert saved[-1]["epoch"] == 3 and saved[-1]["metric"] == "val_AP50"
    with pytest.raises(ValueError, match="metric"):
        BestPresetCallback(tmp_path / "x", "AP51")


@pytest.mark.parametrize("accumulate", [1, 2])
def test_step_scalars_are_the_steps_own_values(tmp_path, accumulate):
    """Keras' batch logs hold running means; the logger writes each update's own value."""
    steps = np.array([1.0, 3.0, 2.0, 6.0])
    logger = StepScalarLogger(tmp_path, accumulate=accumulate, names=("loss", "lr"))
    logger.set_model(_Model(10))
    logger.on_train_begin()
    logger.on_epoch_begin(0)
    for batch, value in enumerate(steps):
        logger.on_train_batch_end(batch, {"loss": steps[: batch + 1].mean(), "lr": 0.1 * (batch + 1)})
    logger.on_train_end()
    scalars = read_events(tmp_path)
    expected = steps.reshape(-1, accumulate).mean(axis=1)
    assert [step for step, _ in scalars["step/loss"]] == list(range(11, 11 + len(expected)))
    np.testing.assert_allclose([v for _, v in scalars["step/loss"]], expected, rtol=1e-6)
    np.testing.assert_allclose([v for _, v in scalars["step/lr"]], 0.1 * np.arange(accumulate, 5, accumulate), rtol=1e-6)


def test_the_best_metric_is_checked_with_the_other_options(tiny_coco, nano_recipe, tmp_path):
    from gflv2_keras.training.options import resolve_run

    assert resolve_run(nano_recipe(), str(tmp_path / "a"), data_root=tiny_coco, best_metric="AP50").best_metric == "AP50"
    with pytest.raises(ValueError, match="best_metric"):
        resolve_run(nano_recipe(), str(tmp_path / "b"), data_root=tiny_coco, best_metric="mAP")
