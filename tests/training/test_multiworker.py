"""Two real ``gflv2 train --strategy multi-worker`` processes on 127.0.0.1 (``TF_CONFIG``).

What is checked, on a nano detector and a 16-image synthetic COCO set (global batch 4 = 2
workers x 2 images, 4 steps per epoch, 2 epochs, a checkpoint every 2 steps):

- the weights and optimizer state after 8 steps equal those of one process running
  ``--strategy mirrored --cpu-devices 2`` (2 replicas x 2 images: the same per-replica batches,
  the same per-replica BatchNorm statistics, as the nano preset trains BN; ``tests/training/test_mirrored.py``
  proves 2 mirrored replicas equal 1 replica when BN is frozen): rtol 1e-4, atol 1e-6;
- each worker has its own work dir (separate machines, separate disks): the chief's holds what
  a one-process run writes, worker 1's is never created;
- SIGKILL of worker 1 mid-run makes the chief stop within the timeout with one line naming
  "worker 1" (exit code 3, no traceback), and restarting both workers with ``--resume`` ends with
  the weights of the uninterrupted run (worker 1 has no checkpoint: it receives the chief's state).

Every wait is bounded and every child is killed in a ``finally`` block.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RUN_TIMEOUT = 600  # seconds for one training run (2 shared cores, TensorFlow start-up included)
ITERATIONS = 8

SLOW = pytest.mark.slow  # the two-worker tests: 7 TensorFlow processes, 6 to 18 minutes on 2 shared cores

RECIPE = textwrap.dedent(
    """
    from gflv2_keras.recipes import SYNTHETIC_DATA, coco_recipe

    RECIPE = coco_recipe(
        "gflv2_test_r18_nano",
        name="nano_multiworker",
        epochs=2,
        lr_steps=[1],
        base_lr_per_16=0.1,
        batch_per_replica=2,
        scale=[128, 96],
        multiscale_range=[64, 96],  # random scale and flip: each worker must take its share of the same batch
        warmup_iters=2,
        checkpoint_every_steps=2,
        keep_checkpoints=2,
        eval_every_epochs=0,
        **SYNTHETIC_DATA,
    )
    """
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from gflv2_keras.data.synthetic import make_synthetic_coco

    root = tmp_path_factory.mktemp("multiworker")
    data = make_synthetic_coco(str(root / "coco"), num_train=16, num_val=2, seed=5)["root"]
    recipe = root / "nano_multiworker.py"
    recipe.write_text(RECIPE)
    return {"root": root, "data": data, "recipe": str(recipe)}


def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _train_command(setup, work_dir, *extra):
    # --steps-per-epoch 4: 2 epochs x 4 steps = ITERATIONS, whatever the grouping of the 16 images
    # (it gives 5 batches today). With 5 steps per epoch the two-worker and the mirrored runs part
    # from step 7 on (1e-6, then 4e-4 by step 10), the same with the Keras-internal training path
    # this package used before (measured); the test checks the 4-step schedule it was written for.
    return [sys.executable, "-m", "gflv2_keras.cli", "train", "--recipe", setup["recipe"], "--data-root",
            setup["data"], "--work-dir", str(work_dir), "--no-eval", "--steps-per-epoch", "4", *extra]


def _env(tf_config=None):
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TF_CONFIG", None)
    if tf_config:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def _start_workers(setup, work_dirs, *extra):
    """Starts one ``gflv2 train --strategy multi-worker`` process per work dir (worker i -> work_dirs[i])."""
    hosts = [f"127.0.0.1:{port}" for port in _free_ports(len(work_dirs))]
    processes = []
    for index, work_dir in enumerate(work_dirs):
        config = {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}}
        command = _train_command(setup, work_dir, "--strategy", "multi-worker", *extra)
        processes.append(subprocess.Popen(command, env=_env(config), stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, text=True))
    return processes


def _finish(processes, timeout=RUN_TIMEOUT):
    """Waits for every process (bounded); returns ``[(returncode, stdout, stderr)]``; kills all on exit."""
    deadline = time.monotonic() + timeout
    results = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((process.returncode, out, err))
    finally:
        _kill(processes)
    return results


def _kill(processes):
    for process in processes:
        if process.poll() is None:
            process.kill()
            try:
                process.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                pass


def _final_checkpoint(work_dir):
    from gflv2_keras.training.checkpoint import read_checkpoint

    state, model_arrays, optimizer_arrays = read_checkpoint(str(work_dir / "checkpoints" / f"ckpt-{ITERATIONS:09d}.npz"))
    names = [path for path, _ in state["model_variables"] + state["optimizer_variables"]]
    return state, dict(zip(names, model_arrays + optimizer_arrays))


def _assert_same_weights(actual_dir, expected_dir, rtol=1e-4, atol=1e-6):
    state_a, actual = _final_checkpoint(actual_dir)
    state_e, expected = _final_checkpoint(expected_dir)
    assert state_a["global_batch_size"] == state_e["global_batch_size"] == 4
    assert sorted(actual) == sorted(expected)
    moved = 0.0
    for name, value in expected.items():
        np.testing.assert_allclose(actual[name], value, rtol=rtol, atol=atol, err_msg=name)
        moved = max(moved, float(np.abs(value).max()))
    assert moved > 0


def _files(folder):
    """Relative paths of the files under ``folder`` (TensorBoard event files by kind: their names hold time and pid)."""
    names = (str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    return sorted(re.sub(r"tfevents\..*", "tfevents.*", name) for name in names)


def _check_ok(results):
    for index, (code, out, err) in enumerate(results):
        assert code == 0, f"worker {index} exit {code}\n{out[-3000:]}\n{err[-3000:]}"


@pytest.fixture(scope="module")
def uninterrupted(setup):
    """The two-worker run, work dirs ``w0`` (chief) and ``w1``; returns ``[(code, stdout, stderr)]``."""
    root = setup["root"]
    return _finish(_start_workers(setup, [root / "w0", root / "w1"]))


@SLOW
def test_two_workers_equal_two_mirrored_replicas_and_only_the_chief_writes(setup, uninterrupted):
    root = setup["root"]
    reference = subprocess.Popen(
        _train_command(setup, root / "mirrored", "--strategy", "mirrored", "--cpu-devices", "2"),
        env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    (code, out, err), = _finish([reference])
    assert code == 0, out[-3000:] + err[-3000:]

    _check_ok(uninterrupted)
    assert "2 replica(s) x 2 = global batch 4" in uninterrupted[0][1]
    _assert_same_weights(root / "w0", root / "mirrored")
    # The chief writes what a one-process run writes; worker 1 writes nothing at all.
    assert _files(root / "w0") == _files(root / "mirrored")
    assert "history.json" in _files(root / "w0") and "preset/config.json" in _files(root / "w0")
    assert not (root / "w1").exists()


@SLOW
def test_lost_worker_fails_clearly_and_resume_completes_the_run(setup, uninterrupted):
    root = setup["root"]
    _check_ok(uninterrupted)
    work_dirs = [root / "k0", root / "k1"]
    processes = _start_workers(setup, work_dirs)
    try:
        first = work_dirs[0] / "checkpoints" / "ckpt-000000002.npz"
        deadline = time.monotonic() + RUN_TIMEOUT
        while not first.exists():
            assert time.monotonic() < deadline, "no checkpoint within the timeout"
            assert all(p.poll() is None for p in processes), "a worker ended before the first checkpoint"
            time.sleep(0.05)
        os.kill(processes[1].pid, signal.SIGKILL)
        code, out, err = _finish(processes[:1], timeout=180)[0]  # TensorFlow's heartbeats: about 10 s
    finally:
        _kill(processes)
    assert code == 3, out[-3000:] + err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("gflv2 train: error:")]
    assert len(lines) == 1 and "lost worker 1" in lines[0] and "--resume" in lines[0], err[-3000:]
    assert "Traceback" not in err
    assert not (work_dirs[0] / "history.json").exists()  # the run did not finish

    results = _finish(_start_workers(setup, work_dirs, "--resume"))
    _check_ok(results)
    assert "[train] resumed from" in results[0][1]
    _assert_same_weights(work_dirs[0], root / "w0")
    assert not work_dirs[1].exists()


def test_lost_worker_message_names_the_lost_task():
    import tensorflow as tf

    from gflv2_keras.training.strategy import lost_worker_message

    text = (  # what TensorFlow 2.21 reported in the SIGKILL test above
        "Collective ops is aborted by: Error reported from /job:worker/task:0: The following tasks are "
        "unhealthy (stopped sending heartbeats):\n/job:worker/replica:0/task:1\nThe tasks have crashed."
    )
    message = lost_worker_message(tf.errors.UnavailableError(None, None, text), "runs/a")
    assert "lost worker 1 " in message and "--resume" in message and "runs/a/checkpoints" in message
    assert "\n" not in message
    assert "lost a peer" in lost_worker_message(tf.errors.DeadlineExceededError(None, None, "timed out"))
    assert lost_worker_message(ValueError("a user's mistake")) is None
