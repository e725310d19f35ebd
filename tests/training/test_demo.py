"""``gflv2 demo``: the quick smoke run by default; the full run and its accuracy target when slow."""

import os

import pytest

from gflv2_keras.cli import main as cli_main


def test_demo_quick_runs_the_whole_pipeline(tmp_path, capsys):
    assert cli_main(["demo", "--quick", "--output", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "epoch" in printed and "AP50" in printed and "held-out COCO AP" in printed
    assert os.path.getsize(tmp_path / "predictions.png") > 0
    assert os.path.isfile(tmp_path / "work_dir_quick" / "preset" / "model.weights.h5")
    assert os.path.isfile(tmp_path / "curve.json") and os.path.getsize(tmp_path / "curve.png") > 0
    # Running again into the same folder refuses (one line, exit 2) and leaves the run as it was.
    weights = (tmp_path / "work_dir_quick" / "preset" / "model.weights.h5").read_bytes()
    assert cli_main(["demo", "--quick", "--output", str(tmp_path)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (tmp_path / "work_dir_quick" / "preset" / "model.weights.h5").read_bytes() == weights
    (tmp_path / "work_dir_quick" / "left_by_the_previous_run.txt").write_text("x")
    assert cli_main(["demo", "--quick", "--output", str(tmp_path), "--overwrite"]) == 0
    assert "--overwrite: removing the previous run" in capsys.readouterr().out
    assert not (tmp_path / "work_dir_quick" / "left_by_the_previous_run.txt").exists()
    assert os.path.isfile(tmp_path / "work_dir_quick" / "preset" / "model.weights.h5")
    assert not list(tmp_path.rglob(".gflv2.lock"))  # the demo's locks (output, data, work dir) are released


@pytest.mark.slow
def test_demo_reaches_the_accuracy_target(tmp_path):
    """The full demo (about 8-12 minutes on 2 CPU cores): held-out AP >= 0.5 and AP50 >= 0.8."""
    from gflv2_keras.training.demo import run_demo

    summary = run_demo(str(tmp_path))
    print(f"demo: {summary['seconds'] / 60:.1f} min, AP {summary['AP']:.3f}, AP50 {summary['AP50']:.3f}")
    assert summary["AP"] >= 0.5
    assert summary["AP50"] >= 0.8
