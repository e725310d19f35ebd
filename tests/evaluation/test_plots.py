"""Evaluation pictures: PR curves whose area is the AP, the files beside the metrics, the CLI and the callback."""

import contextlib
import io
import json

import numpy as np
import pytest
from PIL import Image

from gflv2_keras.data.coco import load_coco
from gflv2_keras.data.synthetic import make_synthetic_coco
from gflv2_keras.evaluation import backend
from gflv2_keras.evaluation.backend import coco_score
from gflv2_keras.evaluation.benchmark import synthetic_case
from gflv2_keras.evaluation.callback import CocoEvaluationCallback
from gflv2_keras.evaluation.coco_evaluator import evaluate, evaluate_detections
from gflv2_keras.evaluation.plots import draw_pr_curves, pr_curves
from gflv2_keras.inference.draw import class_colour

BACKENDS = [backend.PYCOCOTOOLS] + ([backend.FASTER] if backend.faster_coco_eval_available() else [])


@pytest.fixture(scope="module")
def case_with_an_empty_class():
    """5 classes with ground truth and a 6th without (its detections make COCOeval's -1 entries)."""
    coco_gt, results = synthetic_case(num_images=60, detections=15, num_classes=5, objects=4, crowd_fraction=0.1,
                                      seed=7)
    coco_gt.dataset["categories"].append({"id": 6, "name": "nothing"})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
    results = results + [{"image_id": 1, "category_id": 6, "bbox": [5, 5, 30, 30], "score": 0.7}]
    return coco_gt, results


@pytest.mark.parametrize("name", BACKENDS)
def test_pr_curve_area_is_the_reported_ap(case_with_an_empty_class, name):
    coco_gt, results = case_with_an_empty_class
    score = coco_score(coco_gt, results, backend=name)
    curves = pr_curves(score.precision)
    assert curves["recall"].shape == (101,) and curves["iou50"]["per_class"].shape == (6, 101)
    # The mean of the plotted "all classes" curve over its 101 recall points is COCOeval's AP50 / AP.
    assert curves["iou50"]["all"].mean() == pytest.approx(score.stats[1], abs=1e-9)
    assert curves["iou50_95"]["all"].mean() == pytest.approx(score.stats[0], abs=1e-9)
    assert curves["iou50"]["ap"] == pytest.approx(score.stats[1], abs=1e-9)
    assert 0.2 < score.stats[0] < score.stats[1] < 1.0
    per_class = evaluate_detections(coco_gt, results, verbose=False, backend=name)["per_class"]
    for k, row in enumerate(per_class):
        assert curves["iou50_95"]["per_class_ap"][k] == pytest.approx(row["AP"], abs=1e-9)
        if row["AP50"] >= 0:
            assert curves["iou50"]["per_class"][k].mean() == pytest.approx(row["AP50"], abs=1e-9)
    assert per_class[5]["AP"] == -1.0 and np.isnan(curves["iou50"]["per_class"][5]).all()
    # Interpolated precision never rises with recall.
    assert np.all(np.diff(curves["iou50"]["per_class"][:5], axis=1) <= 1e-12)


def test_pr_picture_draws_the_all_classes_curve(case_with_an_empty_class):
    coco_gt, results = case_with_an_empty_class
    curves = pr_curves(coco_score(coco_gt, results).precision)
    picture = np.asarray(draw_pr_curves(curves, [f"class{k}" for k in range(1, 6)] + ["nothing"]))
    assert picture.shape[2] == 3 and picture.shape[1] > 2 * picture.shape[0] * 0.9
    assert np.sum(np.all(picture == 0, axis=-1)) > 2000  # the thick black curves and the frames
    for k in range(5):  # every class with ground truth has its coloured line
        assert np.sum(np.all(picture == class_colour(k), axis=-1)) > 100


class NoisyDetector:
    """The i-th call returns the i-th record's boxes, jittered, one label changed, one box on background."""

    input_scale = (1333, 800)  # the evaluation CLI checks image sizes at the detector's scale

    def __init__(self, records, num_classes, seed=0):
        rng = np.random.default_rng(seed)
        self.outputs, self.calls = [], 0
        for r in records:
            boxes = np.asarray(r["boxes"], np.float64) + rng.normal(0, 2.0, np.shape(r["boxes"]))
            labels = np.asarray(r["labels"], np.int64).copy()
            labels[:1] = (labels[:1] + 1) % num_classes
            boxes = np.concatenate([boxes, [[1, 1, 30, 30]]])
            labels = np.concatenate([labels, [0]])
            self.outputs.append({"boxes": boxes, "confidence": rng.uniform(0.3, 1.0, len(boxes)), "labels": labels})

    def detect(self, image):
        out = self.outputs[self.calls]
        self.calls += 1
        return out


@pytest.fixture(scope="module")
def small_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("plots")
    coco = make_synthetic_coco(str(root / "data"), num_train=1, num_val=7, seed=4)
    return coco["val_annotations"], coco["val_images"]


def _dataset(small_split):
    return load_coco(small_split[0], small_split[1], for_training=False, verbose=False)


def test_evaluate_writes_the_pictures_and_refuses_to_replace_them(small_split, tmp_path):
    dataset = _dataset(small_split)
    folder = tmp_path / "run"
    results = evaluate(NoisyDetector(dataset.records, dataset.num_classes), dataset, progress=False, verbose=False,
                       plots_dir=str(folder), num_examples=3)
    curves = Image.open(folder / "pr_curves.png")
    matrix = Image.open(folder / "confusion_matrix.png")
    assert curves.format == matrix.format == "PNG" and curves.width > 1000
    examples = sorted(p.name for p in (folder / "examples").iterdir())
    assert len(examples) == 6 and examples[0].startswith("best_01_") and examples[-1].startswith("worst_03_")
    worst = results["plots"]["example_images"]["worst"]
    assert [w["errors"] for w in worst] == sorted((w["errors"] for w in worst), reverse=True)
    assert worst[0]["errors"] >= 2
    assert worst[0]["picture"].endswith(examples[3]) and worst[0]["errors"] == worst[0]["false_positives"] + worst[0][
        "false_negatives"]
    picture = Image.open(worst[0]["picture"])
    assert picture.width > 2 * 480 * 0.9  # ground truth and predictions side by side, panels of at least 480 px
    matrix_numbers = np.asarray(results["confusion_matrix"]["matrix"])
    assert matrix_numbers.shape == (6, 6) and matrix_numbers[5, 0] >= 7  # one background box per image, class 0
    json.dumps(results)  # the metrics stay JSON

    before = (folder / "pr_curves.png").stat().st_mtime_ns
    detector = NoisyDetector(dataset.records, dataset.num_classes)
    with pytest.raises(FileExistsError, match="pr_curves.png already exists.*--overwrite"):
        evaluate(detector, dataset, progress=False, verbose=False, plots_dir=str(folder))
    assert detector.calls == 0 and (folder / "pr_curves.png").stat().st_mtime_ns == before
    evaluate(detector, dataset, progress=False, verbose=False, plots_dir=str(folder), overwrite_plots=True,
             num_examples=1)
    assert len(list((folder / "examples").iterdir())) == 2


def test_a_users_examples_folder_is_not_replaced(small_split, tmp_path):
    dataset = _dataset(small_split)
    (tmp_path / "examples").mkdir()
    (tmp_path / "examples" / "mine.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="examples already exists"):
        evaluate(NoisyDetector(dataset.records, dataset.num_classes), dataset, progress=False, verbose=False,
                 plots_dir=str(tmp_path))
    assert (tmp_path / "examples" / "mine.txt").read_text() == "keep" and not (tmp_path / "pr_curves.png").exists()


def test_no_detection_still_draws(small_split, tmp_path):
    dataset = _dataset(small_split)

    class Blind:
        def detect(self, image):
            return {"boxes": np.zeros((0, 4)), "confidence": np.zeros(0), "labels": np.zeros(0, np.int64)}

    results = evaluate(Blind(), dataset, progress=False, verbose=False, plots_dir=str(tmp_path), num_examples=2)
    assert results["AP"] == 0.0 and (tmp_path / "pr_curves.png").exists()
    missed = sum(row[-1] for row in results["confusion_matrix"]["matrix"])
    assert missed == sum(len(r["boxes"]) for r in dataset.records)


def test_callback_writes_pictures_into_each_epoch_folder(small_split, tmp_path, capsys):
    dataset = _dataset(small_split)
    callback = CocoEvaluationCallback(dataset, detector=None, plots_dir=str(tmp_path / "plots" / "epoch_{epoch}"),
                                      num_examples=1)
    for epoch in (0, 0, 1):  # the same epoch twice (a resumed run): its own pictures are replaced
        callback.detector = NoisyDetector(dataset.records, dataset.num_classes)
        callback.on_epoch_end(epoch, {})
    for epoch in (1, 2):
        assert (tmp_path / "plots" / f"epoch_{epoch}" / "confusion_matrix.png").exists()
        assert len(list((tmp_path / "plots" / f"epoch_{epoch}" / "examples").iterdir())) == 2
    assert f"evaluation pictures in {tmp_path / 'plots' / 'epoch_2'}" in capsys.readouterr().out


def _run_cli(argv, monkeypatch, small_split):
    from gflv2_keras import cli
    from gflv2_keras.evaluation import cli as evaluate_cli

    dataset = _dataset(small_split)
    monkeypatch.setattr(evaluate_cli, "load_detector",
                        lambda preset, dtype: NoisyDetector(dataset.records, dataset.num_classes))
    return cli.main(["evaluate", "--preset", "fake", "--data", small_split[0], "--images", small_split[1], *argv])


def test_cli_writes_pictures_beside_the_metrics_and_refuses_to_replace_them(small_split, tmp_path, monkeypatch, capsys):
    metrics = tmp_path / "out" / "val_metrics.json"
    assert _run_cli(["--metrics", str(metrics), "--examples", "2", "--score-threshold", "0.4"], monkeypatch,
                    small_split) == 0
    out = capsys.readouterr().out
    assert f"pictures written to {metrics.parent}" in out and "examples/ (2 worst, 2 best images)" in out
    record = json.loads(metrics.read_text())
    assert record["confusion_matrix"]["score_threshold"] == 0.4 and record["backend"] in BACKENDS
    assert record["plots"]["pr_curves"] == str(metrics.parent / "pr_curves.png")
    assert {p.name for p in metrics.parent.iterdir()} == {"val_metrics.json", "pr_curves.png", "confusion_matrix.png",
                                                          "examples"}
    # Another evaluation into the same folder: one line, nothing replaced.
    other = tmp_path / "out" / "test_metrics.json"
    assert _run_cli(["--metrics", str(other)], monkeypatch, small_split) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "pr_curves.png already exists" in captured.err
    assert "Traceback" not in captured.err and not other.exists()
    assert _run_cli(["--metrics", str(other), "--no-plots"], monkeypatch, small_split) == 0
    assert _run_cli(["--metrics", str(other), "--plots-dir", str(tmp_path / "pictures"), "--overwrite",
                     "--examples", "0", "--coco-backend", "pycocotools"], monkeypatch, small_split) == 0
    assert sorted(p.name for p in (tmp_path / "pictures").iterdir()) == ["confusion_matrix.png", "pr_curves.png"]
    assert json.loads(other.read_text())["backend"] == "pycocotools"


@pytest.mark.parametrize("argv, message", [
    (["--score-threshold", "1.5"], "--score-threshold must be between 0 and 1, got 1.5"),
    (["--iou-threshold", "0"], "--iou-threshold must be above 0 and at most 1, got 0.0"),
    (["--examples", "-1"], "--examples must be 0 or more, got -1"),
])
def test_cli_option_mistakes_are_one_line(argv, message, small_split, monkeypatch, capsys):
    assert _run_cli(argv, monkeypatch, small_split) == 2
    err = capsys.readouterr().err
    assert err == f"gflv2 evaluate: error: {message}\n"


def test_cli_without_a_metrics_file_says_where_pictures_would_go(small_split, monkeypatch, capsys, tmp_path):
    monkeypatch.chdir(tmp_path)
    assert _run_cli([], monkeypatch, small_split) == 0
    assert "pictures not written: pass --metrics FILE or --plots-dir DIR" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []
