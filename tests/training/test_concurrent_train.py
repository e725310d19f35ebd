"""Two training runs on one work dir: the second refuses in one line instead of mixing its files in.

The default tests hold the work dir's lock from a light process and check that ``train`` refuses
(fresh and ``resume``), that a run which finished between ``resolve_run``'s check and the lock is
refused too, and that the lock is released when a run fails. The slow test starts two real
``gflv2 train`` processes at once.
"""

import csv
import json
import os
import subprocess
import sys
import textwrap

import pytest

from gflv2_keras.utils.locks import LOCK_NAME, FolderInUseError

HOLDER = textwrap.dedent(
    """
    import sys
    from gflv2_keras.utils.locks import lock_folder
    lock = lock_folder(sys.argv[1], "--work-dir", command="gflv2 train --work-dir " + sys.argv[1]).acquire()
    print("held", flush=True)
    sys.stdin.readline()
    lock.release()
    """
)


@pytest.fixture
def holder(tmp_path):
    """A process holding ``tmp_path / "work"``'s lock until the test ends."""
    work_dir = tmp_path / "work"
    process = subprocess.Popen([sys.executable, "-c", HOLDER, str(work_dir)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert process.stdout.readline().strip() == "held"
    yield work_dir, process.pid
    process.communicate("\n", timeout=30)


def _recipe(nano_recipe):
    return nano_recipe(name="concurrent", epochs=1, lr_steps=[])


@pytest.mark.parametrize("resume", [False, True])
def test_train_refuses_a_work_dir_another_run_holds(holder, nano_recipe, tiny_coco, resume):
    from gflv2_keras.training.trainer import train

    work_dir, pid = holder
    with pytest.raises(FolderInUseError) as refused:
        train(_recipe(nano_recipe), str(work_dir), data_root=tiny_coco, resume=resume, tensorboard=False, verbose=0)
    assert f"pid {pid} " in str(refused.value) and "--work-dir" in str(refused.value)
    assert sorted(p.name for p in work_dir.iterdir()) == [LOCK_NAME]  # nothing of this run was written


def test_a_run_that_finished_while_this_one_started_is_not_overwritten(tmp_path, nano_recipe, tiny_coco):
    from gflv2_keras.training.options import resolve_run
    from gflv2_keras.training.trainer import Trainer

    work_dir = tmp_path / "work"
    options = resolve_run(_recipe(nano_recipe), str(work_dir), data_root=tiny_coco, tensorboard=False, verbose=0)
    work_dir.mkdir()
    (work_dir / "recipe.json").write_text("{}")  # the other run's, written after this run's first check
    with pytest.raises(ValueError, match="already holds a training run"):
        Trainer(options).run()
    assert sorted(p.name for p in work_dir.iterdir()) == ["recipe.json"]  # lock released, nothing written


def test_the_lock_is_released_when_the_run_fails(tmp_path, nano_recipe, tiny_coco, monkeypatch):
    from gflv2_keras.training.options import resolve_run
    from gflv2_keras.training.trainer import Trainer

    def broken(self):
        assert (work_dir / LOCK_NAME).is_file()
        raise RuntimeError("data stage failed")

    work_dir = tmp_path / "work"
    monkeypatch.setattr(Trainer, "build_data", broken)
    options = resolve_run(_recipe(nano_recipe), str(work_dir), data_root=tiny_coco, tensorboard=False, verbose=0)
    with pytest.raises(RuntimeError, match="data stage failed"):
        Trainer(options).run()
    assert not work_dir.exists()  # the run created it for its lock and wrote nothing: removed


RECIPE_FILE = """
from gflv2_keras.recipes import SYNTHETIC_DATA, coco_recipe

RECIPE = coco_recipe("gflv2_test_r18_nano", name="concurrent_cli", epochs=1, lr_steps=[], batch_per_replica=2,
                     scale=[96, 64], warmup_iters=1, checkpoint_every_steps=1, keep_checkpoints=5,
                     eval_every_epochs=0, **SYNTHETIC_DATA)
"""


@pytest.mark.slow
def test_two_gflv2_train_at_once_exactly_one_runs(tmp_path):
    from gflv2_keras.data.synthetic import make_synthetic_coco

    root = make_synthetic_coco(str(tmp_path / "data"), num_train=4, num_val=1, seed=2)["root"]
    recipe = tmp_path / "concurrent_cli.py"
    recipe.write_text(RECIPE_FILE)
    work_dir = tmp_path / "work"
    command = [sys.executable, "-m", "gflv2_keras.cli", "train", "--recipe", str(recipe), "--data-root", root,
               "--work-dir", str(work_dir), "--steps-per-epoch", "2", "--no-eval"]  # fmt: skip
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    runs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for _ in range(2)]  # fmt: skip
    outputs = [run.communicate(timeout=600) for run in runs]
    codes = [run.returncode for run in runs]
    assert sorted(codes) == [0, 2], (codes, [err[-2000:] for _, err in outputs])
    _, refused_err = outputs[codes.index(2)]
    lines = refused_err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gflv2 train: error: "), lines
    assert "in use by another gflv2 run" in lines[0] or "already holds a training run" in lines[0]
    # The work dir is the winner's alone: one log header, one run's checkpoints, no lock left.
    with open(work_dir / "log.csv") as f:
        rows = list(csv.reader(f))
    assert sum(row[:1] == ["epoch"] for row in rows) == 1 and len(rows) == 2
    assert not (work_dir / LOCK_NAME).exists()
    from gflv2_keras.training.checkpoint import list_checkpoints, read_checkpoint

    checkpoints = list_checkpoints(str(work_dir / "checkpoints"))
    assert [os.path.basename(p) for p in checkpoints] == ["ckpt-000000001.npz", "ckpt-000000002.npz"]
    assert len({read_checkpoint(p)[0]["run_id"] for p in checkpoints}) == 1
    assert json.loads((work_dir / "recipe.json").read_text())["name"] == "concurrent_cli"
