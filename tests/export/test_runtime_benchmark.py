"""``gflv2 benchmark --runtime``: interleaved per-runtime ``detect`` timing and its table."""

import pytest

from gflv2_keras.benchmarks import runtime_benchmark


@pytest.mark.slow
def test_tf_and_onnxruntime_rows(nano_factory, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("tf2onnx")
    preset = tmp_path / "preset"
    nano_factory(seed=0).save_to_preset(preset)
    rows, context = runtime_benchmark.run_runtime_benchmark(
        str(preset), 96, 128, runtimes=["tf", "onnxruntime"], warmup=1, iterations=3, log=lambda _: None
    )
    assert [r["runtime"] for r in rows] == ["tf", "onnxruntime"]
    for row in rows:
        assert 0 < row["min_ms"] <= row["median_ms"] <= row["max_ms"]
    table = runtime_benchmark.format_runtime_table(rows, context)
    assert "input 96x128" in table and "2 threads" in table
    assert table.count("\n| ") == 3  # header row + two runtimes
    assert "| tf |" in table and "| 1.00x |" in table


def test_unavailable_runtime_is_listed_not_timed():
    rows = [
        {"runtime": "tf", "note": "x", "median_ms": 20.0, "min_ms": 19.0, "max_ms": 25.0},
        {"runtime": "openvino", "note": "pip install openvino", "median_ms": None, "min_ms": None, "max_ms": None},
        {"runtime": "onnxruntime", "note": "y", "median_ms": 10.0, "min_ms": 9.0, "max_ms": 11.0},
    ]
    context = {"preset": "p", "height": 8, "width": 8, "threads": 2, "warmup": 1, "iterations": 3, "cpu": "c",
               "isa": "avx2", "random_weights": True}
    lines = runtime_benchmark.format_runtime_table(rows, context).splitlines()
    assert lines[4].startswith("| onnxruntime | 10 |") and lines[4].split("|")[4].strip() == "2.00x"  # fastest first
    assert lines[5].startswith("| tf | 20 |")
    assert lines[6] == "| openvino | – | – | – | not available: pip install openvino |"


def test_unknown_runtime_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown --runtime tensorrt"):
        runtime_benchmark.run_runtime_benchmark("p", 8, 8, runtimes=["tensorrt"])
