"""The worker-process benchmarks (``--mixed-sizes``, and ``--backends`` through the same
``time_in_workers``) run end to end; timings are not checked."""

from gflv2_keras.benchmarks.mixed_sizes_benchmark import PHOTO_SIZES, photo_sizes, run_mixed_sizes_benchmark


def test_mixed_sizes_times_every_photo_in_a_worker():
    rows, sizes = run_mixed_sizes_benchmark("gflv2_test_r18_nano", count=3, seed=1)
    assert sizes == photo_sizes(3, seed=1) and all(size in PHOTO_SIZES for size in sizes)
    (row,) = rows
    assert row["variant"] == "tensorflow (this tree)"
    assert len(row["times_ms"]) == 3 and all(t > 0 for t in row["times_ms"])
    assert abs(row["total_s"] - sum(row["times_ms"]) / 1000) < 1e-9
