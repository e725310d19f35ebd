"""Checkpoints: atomic writes survive crashes (SIGKILL, exceptions) and resume reproduces a run exactly."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest

from gflv2_keras.training import checkpoint as ckpt

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class _TinyModel(keras.Model):
    def __init__(self):
        super().__init__()
        self.dense = keras.layers.Dense(3)

    def call(self, x):
        return self.dense(x)


def _model_and_optimizer(seed):
    keras.utils.set_random_seed(seed)
    model = _TinyModel()
    model(np.zeros((1, 4), np.float32))
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    for m in optimizer.variables[1:]:
        m.assign(np.full(m.shape, float(seed), np.float32))
    return model, optimizer


def test_save_restore_round_trip_and_keep_last(tmp_path):
    model, optimizer = _model_and_optimizer(1)
    for iteration in (2, 4, 6, 8):
        ckpt.save_checkpoint(str(tmp_path), model, optimizer, {"iteration": iteration, "note": "x"}, keep=2)
    assert [os.path.basename(p) for p in ckpt.list_checkpoints(str(tmp_path))] == [
        "ckpt-000000006.npz",
        "ckpt-000000008.npz",
    ]
    other, other_opt = _model_and_optimizer(2)
    state = ckpt.restore_checkpoint(ckpt.latest_checkpoint(str(tmp_path)), other, other_opt)
    assert state["iteration"] == 8 and state["note"] == "x"
    for a, b in zip(model.weights + optimizer.variables, other.weights + other_opt.variables):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_retention_only_deletes_checkpoints_of_its_own_run(tmp_path):
    model, optimizer = _model_and_optimizer(1)
    for iteration in (100, 200):
        ckpt.save_checkpoint(str(tmp_path), model, optimizer, {"iteration": iteration, "run_id": "old"}, keep=1)
    (tmp_path / "ckpt-000000050.npz").write_bytes(b"damaged: never ours to delete")
    for iteration in (1, 2, 3):
        ckpt.save_checkpoint(str(tmp_path), model, optimizer, {"iteration": iteration, "run_id": "new"}, keep=2)
    names = sorted(os.path.basename(p) for p in ckpt.list_checkpoints(str(tmp_path)))
    assert names == ["ckpt-000000002.npz", "ckpt-000000003.npz", "ckpt-000000050.npz", "ckpt-000000200.npz"]


def test_restore_names_the_mismatching_variable(tmp_path):
    model, optimizer = _model_and_optimizer(1)
    path = ckpt.save_checkpoint(str(tmp_path), model, optimizer, {"iteration": 1})
    keras.utils.set_random_seed(0)
    wrong = keras.Sequential([keras.layers.Dense(5)])
    wrong(np.zeros((1, 4), np.float32))
    with pytest.raises(ValueError, match="kernel"):
        ckpt.restore_checkpoint(path, wrong, keras.optimizers.SGD(0.1, momentum=0.9))


def test_failed_write_never_replaces_a_good_checkpoint(tmp_path):
    model, optimizer = _model_and_optimizer(1)
    good = ckpt.save_checkpoint(str(tmp_path), model, optimizer, {"iteration": 5})
    before = open(good, "rb").read()

    def crash_half_way(f):
        f.write(before[: len(before) // 2])
        raise KeyboardInterrupt("crash while writing")

    with pytest.raises(KeyboardInterrupt):
        ckpt.atomic_write(good, crash_half_way)
    assert open(good, "rb").read() == before
    assert os.listdir(tmp_path) == [os.path.basename(good)]  # no temporary file left behind
    assert ckpt.read_checkpoint(good)[0]["iteration"] == 5


def test_damaged_newest_checkpoint_falls_back_to_previous(tmp_path):
    model, optimizer = _model_and_optimizer(1)
    ckpt.save_checkpoint(str(tmp_path), model, optimizer, {"iteration": 3})
    newest = ckpt.save_checkpoint(str(tmp_path), model, optimizer, {"iteration": 6})
    data = open(newest, "rb").read()
    with open(newest, "wb") as f:  # what a non-atomic writer would leave after a crash
        f.write(data[: len(data) // 3])
    with open(os.path.join(tmp_path, "ckpt-000000009.npz.tmp-123"), "wb") as f:
        f.write(b"partial")
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        ckpt.read_checkpoint(newest)
    assert ckpt.latest_checkpoint(str(tmp_path)).endswith("ckpt-000000003.npz")
    ckpt.clean_temporary_files(str(tmp_path))
    assert not any(".tmp-" in name for name in os.listdir(tmp_path))


def test_sigkill_during_writes_leaves_only_complete_files(tmp_path):
    """A process writing big checkpoints in a loop is killed with SIGKILL at an arbitrary moment."""
    script = textwrap.dedent(
        f"""
        import sys, numpy as np
        sys.path.insert(0, {REPO!r})
        from gflv2_keras.training.checkpoint import atomic_write
        path = {str(tmp_path / "ckpt-000000001.npz")!r}
        i = 0
        while True:
            i += 1
            payload = np.full(4_000_000, i, np.float32)  # 16 MB: the kill lands mid-write
            atomic_write(path, lambda f: np.savez(f, payload=payload, counter=np.array(i)))
            print(i, flush=True)
        """
    )
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "1"  # at least one complete write
        time.sleep(0.35)
    finally:
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    with np.load(tmp_path / "ckpt-000000001.npz") as data:
        counter = int(data["counter"])
        assert counter >= 1
        assert np.all(data["payload"] == counter)


# ---------------------------------------------------------------- resume of a real training run
class _CrashAt(keras.callbacks.Callback):
    def __init__(self, iteration):
        super().__init__()
        self.iteration = iteration

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.iteration:
            raise RuntimeError("injected crash")


def _checksums(folder):
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_resume_after_crash_equals_uninterrupted_run(tiny_coco, nano_recipe, tmp_path):
    from gflv2_keras.data.canvas import training_canvases
    from gflv2_keras.training.trainer import train

    common = dict(data_root=tiny_coco, tensorboard=False, save_preset=False, verbose=0)
    reference = train(nano_recipe(), work_dir=str(tmp_path / "a"), **common)
    steps = reference["steps_per_epoch"]
    assert reference["iterations"] == 2 * steps
    # Every step ran one of the few traced steps (one per canvas, the box count being fixed).
    assert reference["model"].train_step_traces <= len(training_canvases((128, 96), (64, 96)))

    # Crash mid-epoch 2 one step after a checkpoint: the newest checkpoint is epoch 1 + 2 steps.
    crash = steps + 3
    with pytest.raises(RuntimeError, match="injected crash"):
        train(nano_recipe(), work_dir=str(tmp_path / "b"), callbacks=[_CrashAt(crash)], **common)
    latest = ckpt.latest_checkpoint(str(tmp_path / "b" / "checkpoints"))
    assert latest.endswith(f"ckpt-{crash - 1:09d}.npz")

    resumed = train(nano_recipe(), work_dir=str(tmp_path / "b"), resume=True, **common)
    assert resumed["iterations"] == 2 * steps
    model_a, model_b = reference["model"], resumed["model"]
    for wa, wb in zip(model_a.weights, model_b.weights):
        np.testing.assert_allclose(np.asarray(wb), np.asarray(wa), rtol=1e-5, atol=1e-6, err_msg=wa.path)
    for va, vb in zip(model_a.optimizer.variables, model_b.optimizer.variables):
        np.testing.assert_allclose(np.asarray(vb), np.asarray(va), rtol=1e-5, atol=1e-6, err_msg=va.path)
    # A new run (no --resume) into the used work dir refuses and changes nothing.
    before = _checksums(tmp_path / "b")
    with pytest.raises(ValueError, match=r"already holds a training run .*--resume.*new --work-dir"):
        train(nano_recipe(), work_dir=str(tmp_path / "b"), **common)
    assert _checksums(tmp_path / "b") == before
    # The per-epoch history survives the crash (epoch 1 from the checkpoint, epoch 2 resumed).
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["history"][0]["loss"] == pytest.approx(reference["history"][0]["loss"], rel=1e-5)
