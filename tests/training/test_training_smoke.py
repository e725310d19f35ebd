"""The default training path end to end on tiny synthetic data, plus recipes and the CLIs."""

import json
import os
import re
from pathlib import Path

import numpy as np

import pytest

from gflv2_keras.cli import main as cli_main
from gflv2_keras.presets import PRESETS
from gflv2_keras.recipes import SYNTHETIC_DATA, coco_recipe, list_recipes, load_recipe

OFFICIAL = (
    "gflv2_r50_fpn_1x_coco",
    "gflv2_r50_fpn_ms2x_coco",
    "gflv2_r101_fpn_ms2x_coco",
    "gflv2_r101_dcn_fpn_ms2x_coco",
    "gflv2_x101_32x4d_dcn_fpn_ms2x_coco",
    "gflv2_r2_101_dcn_fpn_ms2x_coco",
)


@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    from gflv2_keras.data.synthetic import make_synthetic_coco

    return make_synthetic_coco(str(tmp_path_factory.mktemp("coco")), num_train=8, num_val=2, seed=5)


@pytest.fixture(scope="module")
def trained(tiny_coco, tmp_path_factory):
    from gflv2_keras.training.trainer import train

    recipe = coco_recipe(
        "gflv2_test_r18_nano",
        name="nano_smoke",
        epochs=4,
        lr_steps=[],
        base_lr_per_16=0.2,
        batch_per_replica=4,
        scale=[128, 96],
        warmup_iters=1,
        checkpoint_every_steps=0,
        eval_every_epochs=4,
        **SYNTHETIC_DATA,
    )
    work_dir = tmp_path_factory.mktemp("work")
    return train(recipe, data_root=tiny_coco["root"], work_dir=str(work_dir), tensorboard=False, verbose=0)


def _grouped_steps(tiny_coco, batch=4):
    """Steps of one epoch when batches hold one orientation (landscape w >= h, or portrait), as mmdet's GroupSampler."""
    sizes = [(i["width"], i["height"]) for i in json.load(open(tiny_coco["train_annotations"]))["images"]]
    landscape = sum(1 for w, h in sizes if w >= h)
    return -(-landscape // batch) + -(-(len(sizes) - landscape) // batch)


def test_fit_logs_the_losses_and_the_loss_falls(trained, tiny_coco):
    history = trained["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    for entry in history:
        for key in ("loss", "qfl", "dfl", "giou", "lr"):
            assert np.isfinite(entry[key]), (key, entry)
        assert entry["loss"] == pytest.approx(entry["qfl"] + entry["dfl"] + entry["giou"], rel=1e-4)
    assert history[-1]["loss"] < 0.9 * history[0]["loss"]
    assert "val_AP" in history[-1] and "val_AP" not in history[0]  # evaluated every 4th epoch
    assert trained["iterations"] == 4 * _grouped_steps(tiny_coco) and trained["global_batch_size"] == 4


def test_run_leaves_checkpoints_logs_and_a_loadable_preset(trained, tiny_coco, capsys):
    from gflv2_keras.models.detector import GFLV2Detector
    from gflv2_keras.training.checkpoint import latest_checkpoint, read_checkpoint

    work_dir = trained["work_dir"]
    state = read_checkpoint(latest_checkpoint(os.path.join(work_dir, "checkpoints")))[0]
    steps = _grouped_steps(tiny_coco)
    assert (state["iteration"], state["epoch"], state["steps_per_epoch"]) == (4 * steps, 4, steps)
    assert len(json.load(open(os.path.join(work_dir, "history.json")))) == 4
    assert os.path.isfile(os.path.join(work_dir, "log.csv"))
    assert os.path.getsize(os.path.join(work_dir, "curve.png")) > 0  # the Python API draws it too

    detector = GFLV2Detector.from_preset(trained["preset_dir"])
    assert detector.num_classes == 5  # taken from the dataset, not the preset's 3
    for a, b in zip(detector.weights, trained["model"].weights):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    args = ["evaluate", "--preset", trained["preset_dir"], "--annotations", tiny_coco["val_annotations"]]
    assert cli_main(args + ["--images", tiny_coco["val_images"]]) == 0
    printed = capsys.readouterr().out
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl"):
        assert f"  {name} " in printed

    # --output / --metrics: written, then never replaced without --overwrite (checked before evaluating).
    output = os.path.join(work_dir, "eval", "detections.json")
    args += ["--images", tiny_coco["val_images"], "--output", output]
    assert cli_main(args) == 0
    metrics = output.replace(".json", "_metrics.json")
    before = {p: os.stat(p).st_mtime_ns for p in (output, metrics)}
    assert json.load(open(metrics))["AP"] >= 0.0
    capsys.readouterr()
    assert cli_main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert {p: os.stat(p).st_mtime_ns for p in (output, metrics)} == before
    assert cli_main(args + ["--overwrite"]) == 0
    assert os.stat(output).st_mtime_ns != before[output]


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"learning_rate": 0.1}, "learning_rate"),
        ({"epochs": 0}, "epochs"),
        ({"batch_per_replica": 2.5}, "batch_per_replica"),
        ({"steps_per_epoch": "2"}, "steps_per_epoch"),
        ({"cpu_devices": True}, "cpu_devices"),
        ({"jit_compile": "yes"}, "jit_compile"),
        ({"evaluate": None}, "evaluate"),
        ({"verbose": 3}, "verbose"),
        ({"train_images": ""}, "train_images"),
        ({"strategy": "tpu"}, "strategy"),
        ({"resume": 1}, "resume"),
        ({"callbacks": [print]}, r"callbacks\[0\]"),
    ],
)
def test_a_bad_override_is_refused_before_anything_is_built(overrides, field, tiny_coco, tmp_path, monkeypatch):
    from gflv2_keras.training import trainer

    def refuse(*args, **kwargs):
        raise AssertionError("the trainer was built")

    monkeypatch.setattr(trainer, "Trainer", refuse)
    recipe = coco_recipe("gflv2_test_r18_nano", **SYNTHETIC_DATA)
    work_dir = tmp_path / "work"
    with pytest.raises(ValueError, match=f"train: {field}|unknown option.*{field}") as error:
        trainer.train(recipe, work_dir, data_root=tiny_coco["root"], **overrides)
    assert "\n" not in str(error.value)
    assert not work_dir.exists()
    # The same call with valid values reaches the trainer: the refusal above is the override's.
    with pytest.raises(AssertionError, match="the trainer was built"):
        trainer.train(recipe, work_dir, data_root=tiny_coco["root"], epochs=1, steps_per_epoch=1, verbose=0)


def test_every_official_row_and_the_demo_have_a_recipe():
    assert set(OFFICIAL) | {"gflv2_tiny_r18_demo"} <= set(list_recipes())
    repo_recipes = Path(__file__).resolve().parents[2] / "recipes"
    one_x, ms2x = load_recipe("gflv2_r50_fpn_1x_coco"), load_recipe(str(repo_recipes / "gflv2_r101_fpn_ms2x_coco.py"))
    assert (one_x["epochs"], one_x["lr_steps"], one_x["multiscale_range"]) == (12, [8, 11], None)
    assert (ms2x["epochs"], ms2x["lr_steps"], ms2x["multiscale_range"]) == (24, [16, 22], [480, 960])
    for name in OFFICIAL:
        recipe = load_recipe(name)
        assert recipe["preset"] == name
        assert recipe["base_lr_per_16"] == 0.01 and recipe["batch_per_replica"] == 2
        assert (recipe["momentum"], recipe["weight_decay"], recipe["warmup_iters"]) == (0.9, 1e-4, 500)
        assert recipe["official_config"].endswith(".py")


def test_every_preset_names_a_recipe_that_exists():
    named = {name: info["metadata"]["recipe"] for name, info in PRESETS.items() if "recipe" in info["metadata"]}
    assert set(OFFICIAL) | {"gflv2_tiny_r18_demo"} <= set(named)
    for preset, recipe in named.items():
        assert load_recipe(recipe)["preset"] == preset


def test_recipe_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="Unknown recipe 'nope'.*gflv2_r50_fpn_1x_coco"):
        load_recipe("nope")
    bad = tmp_path / "bad.py"
    bad.write_text(
        "from gflv2_keras.recipes import coco_recipe\n"
        "RECIPE = dict(coco_recipe('gflv2_r50_fpn_1x_coco'), learning_rate=0.1)\n"
    )
    with pytest.raises(ValueError, match=r"bad\.py: missing fields \[\], unknown fields \['learning_rate'\]"):
        load_recipe(str(bad))
    with pytest.raises(ValueError, match="invalid value of 'epochs'"):
        coco_recipe("gflv2_r50_fpn_1x_coco", epochs=0)


def test_train_cli_reports_missing_data_and_bad_options_in_one_line(tmp_path, capsys):
    train = ["train", "--recipe", "gflv2_r50_fpn_1x_coco", "--data-root", str(tmp_path)]
    assert cli_main(train) == 2
    error = capsys.readouterr().err
    assert re.fullmatch(
        r"gflv2 train: error: \S*instances_train2017\.json does not exist \(recipe field 'train_data'.*\n", error
    )
    with pytest.raises(SystemExit) as exited:  # argparse's own check of the value
        cli_main(train + ["--cpu-devices", "0"])
    assert exited.value.code == 2
    assert re.fullmatch(r"gflv2 train: error: argument --cpu-devices: 0 must be 1 or more.*\n", capsys.readouterr().err)


def test_recipe_refuses_two_initialisation_sources():
    with pytest.raises(ValueError, match="exclude each other"):
        coco_recipe("gflv2_r50_fpn_1x_coco", init_weights="some_preset_dir", pretrained_backbone="resnet50.pth")
