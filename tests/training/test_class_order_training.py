"""Fine-tuning and resuming match classes by name: the preset's classifier row of each named class stays
that class's row whatever order the data lists its classes in, new names resize the classifier, and a
resume with data of other class names is refused in one line (issue 20)."""

import math

import numpy as np
import pytest

from gflv2_keras.cli import main as cli_main
from gflv2_keras.data.class_map import reorder_classes
from gflv2_keras.data.coco import load_coco
from gflv2_keras.data.layouts import write_yolo
from gflv2_keras.data.synthetic import make_synthetic_coco

PRESET_CLASSES = ["rectangle", "ellipse", "triangle"]
SIZE = (96, 64)
PRIOR_BIAS = -math.log((1 - 0.01) / 0.01)


@pytest.fixture(scope="module")
def preset(tmp_path_factory, nano_factory):
    """A nano preset whose classifier rows are told apart (bias = row number); returns its folder and rows."""
    detector = nano_factory(seed=5, class_names=PRESET_CLASSES, input_scale=list(SIZE))
    detector.head.gfl_cls.bias.assign(np.arange(4, dtype="float32"))  # 3 classes + the official extra row
    folder = tmp_path_factory.mktemp("preset") / "preset"
    detector.save_to_preset(str(folder))
    return str(folder), _classifier(detector)


def _classifier(detector):
    """``(kernel [3, 3, in, C + 1], bias [C + 1])`` of the classification output, NumPy."""
    layer = detector.head.gfl_cls
    return np.asarray(layer.kernel.numpy()), np.asarray(layer.bias.numpy())


def _data(root, classes, category_ids, seed=1):
    return make_synthetic_coco(str(root), num_train=3, num_val=1, seed=seed, image_size=(64, 80),
                               object_size=(12, 30), max_objects=3, classes=classes, category_ids=category_ids)


def _trainer(preset_folder, data, images, work_dir, resume=False):
    from gflv2_keras.recipes import finetune_recipe
    from gflv2_keras.training.options import resolve_run
    from gflv2_keras.training.trainer import Trainer

    recipe = finetune_recipe(preset_folder, data, images=images, epochs=1, batch_size=2, image_size=SIZE,
                             verbose=False)
    return Trainer(resolve_run(recipe, str(work_dir), resume=resume, evaluate=False, tensorboard=False))


def _built(trainer):
    data = trainer.build_data()
    schedule = trainer.build_schedule(data)
    return data, schedule, trainer.build_model(data, schedule)


def _box_names(dataset, class_names=None):
    """``{image_id: sorted class names of its boxes}``."""
    names = class_names or dataset.class_names
    return {r["image_id"]: sorted(names[int(i)] for i in r["labels"]) for r in dataset.records}


def test_data_with_the_preset_s_names_in_another_order_keeps_the_preset_as_it_is(preset, tmp_path):
    folder, (kernel, bias) = preset
    coco = _data(tmp_path / "data", ["triangle", "ellipse", "rectangle"], [1, 2, 3])  # file order: triangle first
    file = load_coco(coco["train_annotations"], coco["train_images"], verbose=False)
    assert file.class_names == ["triangle", "ellipse", "rectangle"]
    data, _, model = _built(_trainer(folder, coco["train_annotations"], coco["train_images"], tmp_path / "w"))
    assert model.class_names == PRESET_CLASSES and data.dataset.class_names == PRESET_CLASSES
    tuned_kernel, tuned_bias = _classifier(model)
    np.testing.assert_array_equal(tuned_kernel, kernel)
    np.testing.assert_array_equal(tuned_bias, bias)
    assert _box_names(data.dataset, model.class_names) == _box_names(file)  # every box keeps its class name


def test_new_names_resize_the_classifier_keeping_each_named_row(preset, tmp_path, capsys):
    folder, (kernel, bias) = preset
    coco = _data(tmp_path / "data", ["star", "triangle", "rectangle"], [1, 2, 3])
    file = load_coco(coco["train_annotations"], coco["train_images"], verbose=False)
    data, _, model = _built(_trainer(folder, coco["train_annotations"], coco["train_images"], tmp_path / "w"))
    assert model.class_names == ["rectangle", "triangle", "star"]  # the preset's names first, in its order
    assert "the classifier rows of ['rectangle', 'triangle'] come from" in capsys.readouterr().out
    tuned_kernel, tuned_bias = _classifier(model)
    for row, preset_row in ((0, 0), (1, 2), (3, 3)):  # rectangle, triangle, the extra row
        np.testing.assert_array_equal(tuned_kernel[..., row], kernel[..., preset_row])
        assert tuned_bias[row] == bias[preset_row]
    assert tuned_bias[2] == pytest.approx(PRIOR_BIAS) and abs(tuned_kernel[..., 2].std() - 0.01) < 0.004  # new
    assert _box_names(data.dataset, model.class_names) == _box_names(file)


@pytest.fixture(scope="module")
def run_with_checkpoint(preset, tmp_path_factory):
    """A fine-tuning work dir with a checkpoint of a run on [cross, star]: the run state the trainer records,
    the variables of a stand-in model (the class check comes before any weight is read)."""
    import keras

    from gflv2_keras.training.checkpoint import save_checkpoint

    folder, _ = preset
    root = tmp_path_factory.mktemp("resume")
    coco = _data(root / "a", ["star", "cross"], [9, 2])  # file order: cross (2), star (9)
    trainer = _trainer(folder, coco["train_annotations"], coco["train_images"], root / "w")
    data = trainer.build_data()
    assert data.dataset.class_names == ["cross", "star"]  # names the preset lacks: the data's order
    stand_in = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    optimizer = keras.optimizers.SGD()
    optimizer.build(stand_in.trainable_variables)
    trainer.run_id = "run-a"
    state = {**trainer.run_state(data, trainer.build_schedule(data)), "iteration": 0, "epoch": 0, "history": []}
    save_checkpoint(str(trainer.options.checkpoint_dir), stand_in, optimizer, state)
    return coco, root / "w"


def test_resuming_with_data_of_other_class_names_is_one_line(preset, run_with_checkpoint, tmp_path, capsys):
    folder, _ = preset
    other = _data(tmp_path / "b", ["star", "ellipse"], [9, 2])
    command = ["train", "--preset", folder, "--data", other["train_annotations"], "--train-images",
               other["train_images"], "--resume", "--work-dir", str(run_with_checkpoint[1]), "--epochs", "1",
               "--batch-size", "2", "--image-size", *map(str, SIZE), "--no-eval"]
    assert cli_main(command) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1, error
    assert "cannot resume: the run was trained for the classes ['cross', 'star']" in error
    assert "missing ['cross']; new ['ellipse']" in error and "matched by name" in error


def test_resuming_with_the_names_in_another_order_follows_the_run_s_order(preset, run_with_checkpoint, tmp_path,
                                                                          capsys):
    folder, _ = preset
    coco, work_dir = run_with_checkpoint
    file = load_coco(coco["train_annotations"], coco["train_images"], verbose=False)
    yaml = write_yolo(reorder_classes(file, ["star", "cross"]), str(tmp_path / "yolo"), split="train")
    assert _trainer(folder, yaml, None, tmp_path / "fresh").build_data().dataset.class_names == ["star", "cross"]
    data = _trainer(folder, yaml, None, work_dir, resume=True).build_data()
    assert data.dataset.class_names == ["cross", "star"]  # the run's order: the model is built in it
    assert "matched by name to the run's ['cross', 'star']" in capsys.readouterr().out
    by_stem = {r["name"]: r for r in data.dataset.records}
    for record in file.records:  # the same boxes keep their names
        stem = record["file_name"].rsplit("/", 1)[1].split(".")[0]
        assert sorted(data.dataset.class_names[i] for i in by_stem[stem]["labels"]) == \
            sorted(file.class_names[i] for i in record["labels"])
