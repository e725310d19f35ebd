"""``gflv2 train --preset P --data PATH``: fine-tuning on COCO / VOC / YOLO data, and its errors."""

import json
import os
import re
import shutil

import numpy as np
import pytest

from gflv2_keras.cli import main as cli_main
from gflv2_keras.data.coco import load_coco
from gflv2_keras.data.layouts import write_voc, write_yolo
from gflv2_keras.data.synthetic import make_synthetic_coco

PRETRAIN_CLASSES = ["rectangle", "ellipse", "triangle"]
FINETUNE_CLASSES = ["cross", "star"]
SPARSE_IDS = [17, 3]
SIZE = ["128", "96"]
TUNE_TRAIN_IMAGES = 96  # the slow fine-tune vs scratch comparison
TUNE_EPOCHS = "12"


def write_layouts(root, num_train, num_val, seed=21, image_size=(96, 128)):
    """The fine-tuning set (two classes the preset never saw) as COCO with sparse ids, VOC and YOLO."""
    coco = make_synthetic_coco(str(root / "coco"), num_train=num_train, num_val=num_val, seed=seed,
                               image_size=image_size, object_size=(16, 64), max_objects=3,
                               classes=FINETUNE_CLASSES, category_ids=SPARSE_IDS)
    paths = {"coco": coco["train_annotations"], "coco_val": coco["val_annotations"],
             "coco_images": ["--train-images", coco["train_images"], "--val-images", coco["val_images"]]}
    for split in ("train", "val"):
        dataset = load_coco(coco[f"{split}_annotations"], coco[f"{split}_images"], for_training=False, verbose=False)
        for record in dataset.records:
            record["name"] = f"{split}_{record['image_id']:04d}"
        write_voc(dataset, str(root / "voc"), split=split)
        paths["yolo"] = write_yolo(dataset, str(root / "yolo"), split=split)
    paths["voc"] = str(root / "voc")
    return paths


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, nano_factory):
    """A nano preset for three other shapes (random weights: only the transfer is checked here)."""
    directory = tmp_path_factory.mktemp("pretrained") / "preset"
    nano_factory(seed=9, class_names=PRETRAIN_CLASSES, input_scale=[128, 96]).save_to_preset(str(directory))
    return str(directory)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_layouts(tmp_path_factory.mktemp("finetune"), num_train=4, num_val=2)


# COCO in the default run; VOC and YOLO reading is covered by the data tests, their fine-tuning runs slow.
@pytest.mark.parametrize("layout", [pytest.param("voc", marks=pytest.mark.slow),
                                    pytest.param("yolo", marks=pytest.mark.slow), "coco"])
def test_one_command_fine_tunes_on_each_layout(layout, pretrained, data, tmp_path, capsys):
    work_dir = tmp_path / "run"
    command = ["train", "--preset", pretrained, "--data", data[layout], "--epochs", "1", "--batch-size", "2",
               "--image-size", *SIZE, "--work-dir", str(work_dir), "--steps-per-epoch", "1"]
    if layout == "coco":
        command += ["--val-data", data["coco_val"], *data["coco_images"]]
    assert cli_main(command) == 0
    out = capsys.readouterr().out
    assert "from preset weights" in out and "per-class AP" in out
    history = json.loads((work_dir / "history.json").read_text())
    assert len(history) == 1 and "val_AP" in history[0] and np.isfinite(history[0]["loss"])
    for name in ("preset/config.json", "preset/model.weights.h5", "curve.png", "recipe.json", "log.csv"):
        assert (work_dir / name).is_file(), name
    recipe = json.loads((work_dir / "recipe.json").read_text())
    assert recipe["init_weights"] == pretrained and recipe["eval_every_epochs"] == 1
    config = json.loads((work_dir / "preset" / "task.json").read_text())["config"]  # the detector
    # VOC: sorted names; COCO (and the YOLO file written from it): category id order.
    expected = sorted(FINETUNE_CLASSES) if layout == "voc" else [FINETUNE_CLASSES[i] for i in np.argsort(SPARSE_IDS)]
    assert config["class_names"] == expected and config["num_classes"] == 2


def test_step_zero_weights_are_the_preset_s_except_the_classifier(pretrained, data, tmp_path):
    from gflv2_keras.models.detector import GFLV2Detector
    from gflv2_keras.models.transfer import CLASSIFIER_OUTPUT, _key
    from gflv2_keras.recipes import finetune_recipe
    from gflv2_keras.training.options import resolve_run
    from gflv2_keras.training.trainer import Trainer

    def weights_of(recipe):
        trainer = Trainer(resolve_run(recipe, str(tmp_path / recipe["name"]), tensorboard=False, evaluate=False))
        training_data = trainer.build_data()
        return {_key(v): np.asarray(v) for v in trainer.build_model(training_data, trainer.build_schedule(training_data)).weights}

    source = {_key(v): np.asarray(v) for v in GFLV2Detector.from_preset(pretrained).weights}
    tuned = weights_of(finetune_recipe(pretrained, data["voc"], epochs=3, verbose=False, name="tuned"))
    scratch = weights_of(finetune_recipe(pretrained, data["voc"], epochs=3, from_scratch=True, verbose=False,
                                         name="scratch"))
    assert set(tuned) == set(source)
    classifier = [k for k in tuned if k.startswith(CLASSIFIER_OUTPUT)]
    assert classifier and tuned[classifier[0]].shape != source[classifier[0]].shape
    for key in set(tuned) - set(classifier):
        np.testing.assert_array_equal(tuned[key], source[key], err_msg=key)
    assert any(not np.array_equal(scratch[k], source[k]) for k in set(tuned) - set(classifier))


def test_finetune_schedule_scales_with_the_epochs(pretrained, data):
    from gflv2_keras.recipes import finetune_recipe

    twelve = finetune_recipe(pretrained, data["yolo"], verbose=False)
    assert (twelve["epochs"], twelve["lr_steps"], twelve["base_lr_per_16"]) == (12, [8, 11], 0.01)
    assert twelve["warmup_iters"] == 1  # 4 images / batch 2 = 2 steps: half an epoch
    assert finetune_recipe(pretrained, data["yolo"], epochs=24, verbose=False)["lr_steps"] == [16, 22]
    assert finetune_recipe(pretrained, data["yolo"], epochs=1, verbose=False)["lr_steps"] == []
    coco = finetune_recipe(pretrained, data["coco"], verbose=False)
    assert coco["val_data"] is None and coco["eval_every_epochs"] == 0


@pytest.fixture(scope="module")
def shapes_preset(tmp_path_factory):
    """The demo architecture trained on three shapes (400 images, 12 epochs): the 'pretrained' model."""
    from gflv2_keras.recipes import coco_recipe
    from gflv2_keras.training.trainer import train

    root = tmp_path_factory.mktemp("pretrain")
    pre = make_synthetic_coco(str(root / "data"), num_train=400, num_val=20, seed=2, classes=PRETRAIN_CLASSES,
                              image_size=(96, 128), object_size=(16, 64), max_objects=3)
    recipe = coco_recipe("gflv2_tiny_r18_demo", name="pretrain", epochs=12, lr_steps=[9, 11], base_lr_per_16=0.06,
                         batch_per_replica=8, scale=[128, 96], warmup_iters=20, checkpoint_every_steps=0,
                         eval_every_epochs=0, train_data=pre["train_annotations"], train_images=pre["train_images"],
                         val_data=None, val_images=None)
    return train(recipe, str(root / "work"), tensorboard=False, verbose=0)["preset_dir"]


@pytest.fixture(scope="module")
def tuning_data(tmp_path_factory):
    return write_layouts(tmp_path_factory.mktemp("tune"), num_train=TUNE_TRAIN_IMAGES, num_val=32, seed=8)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["voc", "yolo", "coco"])
def test_fine_tuning_beats_training_from_scratch(layout, shapes_preset, tuning_data, tmp_path):
    """Fine-tune the shapes preset on two other shapes: held-out AP after a short run is higher from
    the pretrained weights than from scratch (same recipe otherwise), whatever the layout."""
    scores = {}
    for mode in ("tuned", "scratch"):
        work_dir = tmp_path / mode
        command = ["train", "--preset", shapes_preset, "--data", tuning_data[layout], "--epochs", TUNE_EPOCHS,
                   "--batch-size", "8", "--image-size", *SIZE, "--work-dir", str(work_dir)]
        command += ["--from-scratch"] if mode == "scratch" else []
        if layout == "coco":
            command += ["--val-data", tuning_data["coco_val"], *tuning_data["coco_images"]]
        assert cli_main(command) == 0
        scores[mode] = json.loads((work_dir / "history.json").read_text())[-1]["val_AP"]
    print(f"\n[fine-tune] {layout}: held-out AP fine-tuned {scores['tuned']:.3f}, from scratch {scores['scratch']:.3f}")
    # Measured (BENCHMARKS.md, Fine-tuning): tuned 0.090 / 0.087 / 0.090 vs scratch 0.061 / 0.065 / 0.059 (VOC / YOLO / COCO).
    assert scores["tuned"] > scores["scratch"] + 0.01, scores


# ---------------------------------------------------------------------------------------------- errors
def _one_error_line(capsys, command):
    assert cli_main(command) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1, error
    return error


BAD_FILES = {
    "not_json": ("{ not json", "is not valid JSON"),
    "no_images": (json.dumps({"annotations": [], "categories": []}), "has no 'images' field"),
    "empty": (json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}),
              "no usable training image"),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_annotation_files_end_in_one_line(case, pretrained, tmp_path, capsys):
    text, message = BAD_FILES[case]
    path = tmp_path / "gt.json"
    path.write_text(text)
    error = _one_error_line(capsys, ["train", "--preset", pretrained, "--data", str(path), "--work-dir",
                                     str(tmp_path / "w")])
    assert error.startswith("gflv2 train: error: ") and message in error and "gt.json" in error
    if case != "empty":  # an empty ground truth is evaluated as "no image to evaluate"
        error = _one_error_line(capsys, ["evaluate", "--preset", pretrained, "--data", str(path)])
        assert error.startswith("gflv2 evaluate: error: ") and message in error
    else:
        error = _one_error_line(capsys, ["evaluate", "--preset", pretrained, "--data", str(path)])
        assert "no image to evaluate" in error
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_missing_image_files_are_one_line_not_a_schedule_error(pretrained, data, tmp_path, capsys):
    # The COCO JSON's own folder holds no images: every file is missing.
    error = _one_error_line(capsys, ["train", "--preset", pretrained, "--data", data["coco"], "--no-eval",
                                     "--work-dir", str(tmp_path / "w")])
    assert "no readable training image" in error and "file is missing" in error and "steps_per_epoch" not in error


def test_an_empty_recipe_training_set_is_one_line(tmp_path, capsys):
    root = tmp_path / "data"
    (root / "annotations").mkdir(parents=True)
    (root / "train2017").mkdir()
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(
        {"images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 10}], "annotations": [],
         "categories": [{"id": 1, "name": "a"}]}))
    error = _one_error_line(capsys, ["train", "--recipe", "gflv2_r50_fpn_1x_coco", "--data-root", str(root),
                                     "--no-eval", "--work-dir", str(tmp_path / "w")])
    assert "no usable training image" in error and "steps_per_epoch" not in error


@pytest.fixture(scope="module")
def tuned(tmp_path_factory, nano_factory):
    """A nano preset for the fine-tuning classes: evaluation matches the data's classes to the preset's by name."""
    directory = tmp_path_factory.mktemp("tuned") / "preset"
    nano_factory(seed=9, class_names=FINETUNE_CLASSES, input_scale=[128, 96]).save_to_preset(str(directory))
    return str(directory)


def test_evaluate_reports_the_problems_of_the_ground_truth(tuned, data, tmp_path, capsys):
    content = json.loads(open(data["coco_val"]).read())
    image = dict(content["images"][0])
    content["images"].append({**image, "id": 999, "file_name": "missing.jpg"})
    content["images"].append(dict(image))  # duplicate id
    first = content["annotations"][0]
    content["annotations"].append({**first, "id": 1001, "category_id": 12345})
    content["annotations"].append({**first, "id": 1002, "bbox": [image["width"] - 5, 0, 50, 10]})
    bad = tmp_path / "val.json"
    bad.write_text(json.dumps(content))
    images = os.path.dirname(data["coco_val"]).replace("annotations", "val")
    metrics = tmp_path / "m.json"
    assert cli_main(["evaluate", "--preset", tuned, "--data", str(bad), "--images", images,
                     "--metrics", str(metrics)]) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    for expected in ("problems in the ground truth", "missing.jpg", "duplicate", "12345", "annotation id 1002"):
        assert expected in text, (expected, text)
    saved = json.loads(metrics.read_text())
    assert len(saved["per_class"]) == 2 and any("12345" in p for p in saved["problems"])


def test_train_writes_every_data_problem_to_the_work_dir(pretrained, data, tmp_path, capsys):
    content = json.loads(open(data["coco"]).read())
    first = content["annotations"][0]
    content["annotations"] += [{**first, "id": 5000 + i, "category_id": 999} for i in range(3)]
    bad = tmp_path / "train.json"
    bad.write_text(json.dumps(content))
    images = tmp_path / "images"  # a copy with one corrupt picture: found when the headers are read
    shutil.copytree(os.path.dirname(data["coco"]).replace("annotations", "train"), images)
    corrupt = content["images"][-1]["file_name"]
    (images / corrupt).write_bytes(b"not an image")
    from gflv2_keras.recipes import finetune_recipe
    from gflv2_keras.training.options import resolve_run
    from gflv2_keras.training.trainer import Trainer

    recipe = finetune_recipe(pretrained, str(bad), images=str(images), verbose=False)
    trainer = Trainer(resolve_run(recipe, str(tmp_path / "work"), evaluate=False))
    trainer.build_data()
    listed = (tmp_path / "work" / "data_problems.txt").read_text().splitlines()
    assert len([line for line in listed if "category_id" in line and "999" in line]) == 3
    assert len(listed) == 4 and corrupt in listed[-1] and "left out" in listed[-1], listed
    assert f"listed in {tmp_path / 'work' / 'data_problems.txt'}" in capsys.readouterr().out


def test_no_eval_demands_no_validation_split(tmp_path):
    from gflv2_keras.recipes import SYNTHETIC_DATA, coco_recipe
    from gflv2_keras.training.options import resolve_run

    root = tmp_path / "data"
    make_synthetic_coco(str(root), num_train=2, num_val=1, seed=1)
    os.remove(root / "annotations" / "val.json")
    recipe = coco_recipe("gflv2_test_r18_nano", **SYNTHETIC_DATA)
    with pytest.raises(FileNotFoundError, match=r"val\.json does not exist \(recipe field 'val_data'.*--no-eval"):
        resolve_run(recipe, str(tmp_path / "a"), data_root=str(root))
    options = resolve_run(recipe, str(tmp_path / "b"), data_root=str(root), evaluate=False)
    assert options.data_paths["train_data"].endswith("train.json")


def test_a_named_preset_without_weights_is_one_line_under_evaluate(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("GFLV2_KERAS_HOME", str(tmp_path / "home"))
    images = os.path.dirname(data["coco_val"]).replace("annotations", "val")
    error = _one_error_line(capsys, ["evaluate", "--preset", "gflv2_test_r18_nano", "--data", data["coco_val"],
                                     "--images", images])
    assert re.match(r"gflv2 evaluate: error: No weights for preset 'gflv2_test_r18_nano'", error)
