"""``gflv2 benchmark --training`` times real training steps of the keras-hub detector (nano, one step)."""

import math

from gflv2_keras.benchmarks.training_benchmark import run_training_benchmark


def test_training_benchmark_times_a_step_of_the_nano_preset():
    rows = run_training_benchmark(["gflv2_test_r18_nano"], 64, 96, batch=2, modes=("graph",), warmup=1,
                                  iterations=1, log=lambda line: None)  # fmt: skip
    assert [(r["preset"], r["mode"], r["batch"]) for r in rows] == [("gflv2_test_r18_nano", "graph", 2)]
    row = rows[0]
    assert math.isfinite(row["step_s"]) and row["step_s"] > 0
    assert row["images_per_s"] == 2 / row["step_s"]
    assert 0 < row["loss_share"] < 1  # ATSS + losses are a part of the whole step, which includes them
