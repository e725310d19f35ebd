"""``gflv2 benchmark --runtime``: the race of every runtime x precision, its floors and goal ratios.

* ``--runtime`` / ``--precision`` select rows (runtime names take their rows of the precisions,
  ``runtime-precision`` names one row, the int8 names of earlier releases included).
* The table's arithmetic is checked against numbers computed here from the rows' medians:
  images/s, ``vs tf float32``, floor share = floor ms / row ms per image, where the floor is the
  network's FLOPs at the fastest library's matmul rate, and the three goal ratios.
* A nano run (tiny image, 1 round) times TensorFlow and PyTorch rows at two batch sizes and the
  matmul floors of float32, bfloat16 and int8 in the same rounds; a row that cannot be built says
  why and the run goes on.
  The exported runtimes (calibrated int8, OpenVINO bf16) and PT2E int8 are a slow test.
"""

import pytest

from gflv2_keras.benchmarks import matmul_floors, race_report, race_rows, runtime_benchmark
from test_export_formats import needs_extra

SIZE = (96, 128)  # the nano preset's input size: its canvas is the image itself


def _row(runtime, precision, times, runs="detect", note="n", unavailable=None):
    return {"runtime": runtime, "precision": precision, "runs": runs, "note": note, "unavailable": unavailable or {},
            "times": {b: {"median_ms": ms, "min_ms": ms - 1, "max_ms": ms + 1} for b, ms in times.items()}}  # fmt: skip


def _context(**changes):
    context = {"preset": "p", "height": 8, "width": 8, "canvas": (32, 32), "batches": [1, 4], "threads": 2,
               "warmup": 1, "iterations": 3, "cpu": "c", "isa": "avx2", "random_weights": True, "versions": "v",
               "network_flops": 400e9,
               # float32: openvino fastest (floor 400e9 / 200e9 = 2000 ms); bfloat16: tensorflow (1000 ms);
               # int8: openvino (500 ms)
               "floors": {"float32": {"openvino": 200e9, "torch": 150e9, "tensorflow": 100e9},
                          "bfloat16": {"openvino": 300e9, "tensorflow": 400e9},
                          "int8": {"openvino": 800e9, "torch": 500e9}}}  # fmt: skip
    return {**context, **changes}


def test_rows_are_selected_by_runtime_precision_and_row_name():
    select = race_rows.select_rows
    assert select(["tf", "openvino"]) == [("tf", "float32"), ("tf", "bfloat16"), ("openvino", "float32"),
                                          ("openvino", "bfloat16"), ("openvino", "int8")]  # fmt: skip
    assert select(["litert", "onnxruntime"], ["int8-dynamic"]) == [("onnxruntime", "int8-dynamic"),
                                                                   ("litert", "int8-dynamic")]  # fmt: skip
    # A row name takes its row whatever --precision says; the int8 names of earlier releases still work.
    assert select(["torch", "onnxruntime-int8", "openvino-int8"], ["float32"]) == [
        ("onnxruntime", "int8"), ("openvino", "int8"), ("torch", "float32")]
    assert race_rows.ROWS[race_rows.ROW_NAMES["onnxruntime-int8"]] == ("onnx", "int8")
    assert race_rows.ROWS[race_rows.ROW_NAMES["openvino-bfloat16"]] == ("openvino", "fp32")  # the IR, bf16 compute
    with pytest.raises(ValueError, match="unknown --runtime tensorrt"):
        select(["tensorrt"])
    with pytest.raises(ValueError, match="no row for --runtime litert in --precision bfloat16"):
        select(["litert"], ["bfloat16"])
    with pytest.raises(ValueError, match="--precision float16 has no --runtime rows"):
        select(["tf"], ["float16"])


def test_unknown_runtime_is_one_clear_error_before_anything_loads():
    with pytest.raises(ValueError, match="unknown --runtime tensorrt"):
        runtime_benchmark.run_runtime_benchmark("p", 8, 8, runtimes=["tensorrt"])


def test_floor_rates_and_the_fastest_library():
    size = matmul_floors.MATMUL_SIZE
    rates = matmul_floors.floor_rates({("float32", "openvino"): 0.1, ("float32", "torch"): 0.05,
                                       ("int8", "openvino"): 0.02}, size)  # fmt: skip
    assert rates["float32"]["openvino"] == pytest.approx(2 * size**3 / 0.1)
    assert matmul_floors.fastest(rates) == {"float32": ("torch", pytest.approx(2 * size**3 / 0.05)),
                                            "int8": ("openvino", pytest.approx(2 * size**3 / 0.02))}  # fmt: skip


def test_table_arithmetic_against_the_row_medians():
    rows = [
        _row("tf", "float32", {1: 4000.0, 4: 12000.0}),  # 4000 and 3000 ms per image
        _row("tf", "bfloat16", {1: 2000.0, 4: 8000.0}),
        _row("openvino", "int8", {1: 800.0, 4: 2000.0}),  # 800, 500 ms per image
        _row("onnxruntime", "int8", {1: 1000.0, 4: 3600.0}),
        _row("litert", "int8-dynamic", {1: 700.0, 4: 2400.0}),  # weights only: in the table, not in the goals
        _row("torch", "bfloat16", {1: 2600.0, 4: 8800.0}, runs="network only"),
        _row("torch", "int8", {1: 100.0, 4: 400.0}, runs="network only"),  # fastest, but not end to end
    ]
    context = _context()
    floors = race_report.floor_ms(context)
    assert floors == {"float32": ("openvino", pytest.approx(2000.0)),
                      "bfloat16": ("tensorflow", pytest.approx(1000.0)), "int8": ("openvino", pytest.approx(500.0))}
    lines = race_report.format_race_table(rows, context).splitlines()
    assert "batch 1, 4, 2 threads" in lines[0] and "CPU c (avx2)" in lines[0]
    assert lines[2] == ("| runtime | precision | runs | b1 ms per call (min–max) | b1 images/s "
                        "| b4 ms per call (min–max) | b4 images/s | vs tf float32 (b1 / b4) | floor share (b1 / b4) "
                        "| artefact |")  # fmt: skip
    table = {tuple(c.strip() for c in line.split("|")[1:3]): [c.strip() for c in line.split("|")[1:-1]]
             for line in lines[4:11]}  # fmt: skip
    assert [" ".join(key) for key in table] == ["torch int8", "litert int8-dynamic", "openvino int8", "onnxruntime int8",
                                                "tf bfloat16", "torch bfloat16", "tf float32"]  # fastest per image first
    ov = table[("openvino", "int8")]
    assert ov[3:7] == ["800 (799–801)", f"{1000 / 800:.2f}", "2000 (1999–2001)", f"{4000 / 2000:.2f}"]
    assert ov[7] == f"{4000 / 800:.2f}x / {3000 / 500:.2f}x"  # vs tf float32, per image at each batch
    assert ov[8] == f"{500 / 800:.2f} / {500 / 500:.2f}"  # int8 floor 500 ms / row ms per image
    assert table[("tf", "bfloat16")][8] == f"{1000 / 2000:.2f} / {1000 / 2000:.2f}"
    assert table[("litert", "int8-dynamic")][8] == f"{500 / 700:.2f} / {500 / 600:.2f}"  # held against the int8 floor
    assert table[("tf", "float32")][7:9] == ["1.00x / 1.00x", f"{2000 / 4000:.2f} / {2000 / 3000:.2f}"]
    text = "\n".join(lines)
    assert "float32 200 GFLOP/s (openvino; torch 150, tensorflow 100)" in text
    assert "bfloat16 400 GFLOP/s (tensorflow; openvino 300)" in text and "int8 800 GOP/s (openvino; torch 500)" in text
    assert "floor per image: float32 2000 ms, bfloat16 1000 ms, int8 500 ms" in text
    goals = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[-3:]}
    # int8 end to end (openvino: torch's int8 is the network alone) vs tf float32
    assert goals["int8 end to end vs tf float32 detect >= 2.0x"] == [
        f"openvino int8 {4000 / 800:.2f}x: met", f"openvino int8 {3000 / 500:.2f}x: met"]
    # the fastest bfloat16 end to end (tf) vs PyTorch bf16 channels_last network alone
    assert goals["best bfloat16 end to end vs PyTorch bf16 channels_last network alone >= 1.2x"] == [
        f"tf bfloat16 {2600 / 2000:.2f}x: met", f"tf bfloat16 {2200 / 2000:.2f}x: not met"]
    assert goals["int8 end to end, share of the int8 matmul floor >= 0.5"] == [
        f"openvino int8 {500 / 800:.2f}: met", f"openvino int8 {500 / 500:.2f}: met"]


def test_unavailable_rows_say_why_and_missing_goal_rows_are_named():
    rows = [
        _row("tf", "float32", {1: 20.0}),
        _row("openvino", "int8", {}, note="openvino needs the 'openvino' package"),
        _row("torch", "int8", {1: 5.0}, runs="network only", unavailable={4: "ImportError: no torchao"}),
    ]
    lines = race_report.format_race_table(rows, _context(network_flops=None, floors={})).splitlines()
    assert lines[4].startswith("| torch | int8 | network only | 5.0 (4.0–6.0) | 200.00 | – | – | "
                               "4.00x / – | – / – |")  # fmt: skip
    assert lines[4].endswith("| n; b4 not available: ImportError: no torchao |")
    assert lines[6] == ("| openvino | int8 | detect | – | – | – | – | – | – | "
                        "not available: openvino needs the 'openvino' package |")  # fmt: skip
    assert "matmul floors: none timed" in lines
    assert lines[-3].endswith("| – (a row it needs is missing) | – (a row it needs is missing) |")


def test_nano_race_times_rows_and_floors_in_the_same_rounds(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from gflv2_keras.benchmarks import torch_inference

    def no_int8(model, inputs, calibration=None):
        raise ImportError(f"PyTorch int8 (PT2E) needs torchao: {torch_inference.TORCHAO_HINT}")

    monkeypatch.setattr(torch_inference, "pt2e_int8", no_int8)
    rows, context = runtime_benchmark.run_runtime_benchmark(
        "gflv2_test_r18_nano", *SIZE, runtimes=["tf-float32", "torch"], batches=(1, 2), warmup=0, iterations=1,
        log=lambda _: None)  # fmt: skip
    found = {(r["runtime"], r["precision"]): r for r in rows}
    assert list(found) == [("tf", "float32"), ("torch", "float32"), ("torch", "bfloat16"), ("torch", "int8")]
    for key in list(found)[:3]:
        assert set(found[key]["times"]) == {1, 2} and all(t["median_ms"] > 0 for t in found[key]["times"].values())
    assert found[("torch", "float32")]["runs"] == "network only" and found[("tf", "float32")]["runs"] == "detect"
    assert found[("torch", "int8")]["times"] == {}
    assert found[("torch", "int8")]["note"].startswith("PT2E int8 could not be built: ImportError: PyTorch int8")
    # floors of every precision of the rows, from the libraries present (TensorFlow always; PyTorch here)
    assert {"tensorflow", "torch"} <= set(context["floors"]["float32"]) and "torch" in context["floors"]["int8"]
    assert context["canvas"] == SIZE and context["network_flops"] > 0 and context["batches"] == [1, 2]
    table = race_report.format_race_table(rows, context)
    assert "| torch | int8 | network only | – |" in table and "pip install 'gflv2-keras[bench]'" in table


@pytest.mark.slow
@needs_extra("onnx")
@needs_extra("openvino")
def test_exported_and_pt2e_int8_rows(tmp_path):
    """Calibrated int8 exports, OpenVINO bf16 compute and PyTorch PT2E int8 (Inductor compiles: minutes)."""
    pytest.importorskip("torchao")
    rows, context = runtime_benchmark.run_runtime_benchmark(
        "gflv2_test_r18_nano", *SIZE, runtimes=["tf-float32", "onnxruntime", "openvino", "torch-int8"],
        precisions=("float32", "bfloat16", "int8"), batches=(1, 2), warmup=1, iterations=2, log=lambda _: None)
    found = {(r["runtime"], r["precision"]): r for r in rows}
    assert set(found) == {("tf", "float32"), ("onnxruntime", "float32"), ("onnxruntime", "int8"),
                          ("openvino", "float32"), ("openvino", "bfloat16"), ("openvino", "int8"), ("torch", "int8")}
    for key, row in found.items():
        assert set(row["times"]) == {1, 2}, (key, row["note"], row["unavailable"])
    assert "bf16 compute" in found[("openvino", "bfloat16")]["note"]
    assert set(context["floors"]) == {"float32", "bfloat16", "int8"} and "openvino" in context["floors"]["int8"]
    goals = race_report.goal_values(rows, context, 1)
    assert goals[0] and goals[2] and goals[1] is None  # no PyTorch bf16 row: that goal cannot be judged
