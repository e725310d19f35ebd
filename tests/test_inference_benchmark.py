"""``gflv2 benchmark``'s inference table runs end to end, the PyTorch twin included (nano preset, tiny image).

Timings are not checked (benchmarks, not timed tests): what is checked is that every variant of
the table is built from the preset and ran, so a change of the preset layout cannot break the
``--torch`` comparison unnoticed (it did once: the twin read a config key the keras-hub layout
had moved).
"""

import pytest

from gflv2_keras.benchmarks import inference_benchmark
from gflv2_keras.models.preprocessing import canvas_size
from gflv2_keras.models.preset_io import preset_config

pytest.importorskip("torch")


def test_inference_table_with_torch_twin(monkeypatch):
    # The 4096^3 GEMM floors take seconds each and are not what this test is about.
    monkeypatch.setattr(inference_benchmark, "measure_gemm_rate", lambda dtype="float32", **_: 1e11)
    results, context = inference_benchmark.run_inference_benchmark(
        preset="gflv2_test_r18_nano", height=48, width=80, precisions=("float32",), batches=(1, 2),
        with_torch=True, warmup=0, repeats=1, torch_threads=1, log=lambda *_: None,
    )
    expected = {
        ("float32", "network"), ("float32", "network-xla"), ("float32", "predict"), ("float32", "predict b2"),
        ("torch", "fp32 NCHW"), ("torch", "channels_last"), ("torch", "channels_last bf16"),
    }
    assert set(results) == expected
    assert all(r["seconds"] > 0 for r in results.values())
    assert results[("float32", "predict b2")]["images"] == 2
    scale = preset_config("gflv2_test_r18_nano")[0]["input_scale"]
    assert context["canvas"] == canvas_size(48, 80, scale)
    assert context["network_flops"] > 0
