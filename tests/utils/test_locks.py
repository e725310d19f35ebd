"""``utils.locks``: one run per folder across processes; stale locks taken over; released after a failure."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from gflv2_keras.utils import locks
from gflv2_keras.utils.files import process_state
from gflv2_keras.utils.locks import FolderInUseError, hold_folder, lock_beside, lock_folder, releases_locks

# A holder process: takes the lock of argv[1], says "held" (or "refused: ..."), then waits for a
# line on stdin (or is killed) before exiting normally.
HOLDER = textwrap.dedent(
    """
    import sys
    from gflv2_keras.utils.locks import FolderInUseError, lock_folder
    try:
        lock = lock_folder(sys.argv[1], "--work-dir", command="holder of " + sys.argv[1]).acquire()
    except FolderInUseError as error:
        print("refused:", error, flush=True)
        sys.exit(2)
    print("held", flush=True)
    sys.stdin.readline()
    lock.release()
    """
)


def _start_holder(folder):
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip


def _dead_pid():
    """A process id that existed a moment ago and no longer does."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _lock_file(folder):
    return folder / locks.LOCK_NAME


def test_a_second_process_is_refused_in_one_line_naming_the_holder(tmp_path):
    holder = _start_holder(tmp_path)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(FolderInUseError) as refused:
            lock_folder(tmp_path, "--work-dir").acquire()
        message = str(refused.value)
        assert "\n" not in message
        assert f"pid {holder.pid} on {socket.gethostname()}" in message and f"holder of {tmp_path}" in message
        assert str(tmp_path) in message and "--work-dir" in message
        record = json.loads(_lock_file(tmp_path).read_text())
        assert record["pid"] == holder.pid  # the refusal left the holder's lock alone
    finally:
        holder.communicate("\n", timeout=30)
    assert holder.returncode == 0
    assert not _lock_file(tmp_path).exists()  # released on exit
    with lock_folder(tmp_path):  # free again
        assert json.loads(_lock_file(tmp_path).read_text())["pid"] == os.getpid()


def test_the_refusal_is_one_cli_line_with_exit_code_2(tmp_path, capsys):
    from gflv2_keras.utils.cli import run_command

    # A holder on another machine sharing the folder (its process cannot be checked from here).
    record = {"pid": 1, "host": "elsewhere", "started": "then", "command": "gflv2 train", "token": "x"}
    _lock_file(tmp_path).write_text(json.dumps(record))
    code = run_command("presets", lambda: hold_folder(tmp_path, "--output"))  # a command without TensorFlow
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert err[0].startswith("gflv2 presets: error: ") and "pid 1 on elsewhere" in err[0]
    assert f"delete {_lock_file(tmp_path)}" in err[0]  # another host: it cannot be checked from here


def test_a_killed_holders_lock_is_taken_over_with_one_line(tmp_path, capsys):
    holder = _start_holder(tmp_path)
    assert holder.stdout.readline().strip() == "held"
    holder.kill()  # kill -9: no clean-up
    holder.wait()
    assert json.loads(_lock_file(tmp_path).read_text())["pid"] == holder.pid  # left behind
    with lock_folder(tmp_path) as lock:
        assert lock.taken_over["pid"] == holder.pid
        assert json.loads(_lock_file(tmp_path).read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "took over the lock of a run that no longer exists" in err[0]
    assert f"pid {holder.pid}" in err[0]
    assert not _lock_file(tmp_path).exists()


def test_a_lock_whose_pid_now_belongs_to_another_process_is_stale(tmp_path):
    parent = os.getppid()
    if process_state(parent)[1] is None:
        pytest.skip("needs /proc to tell process start times")
    record = {"pid": parent, "host": socket.gethostname(), "process_start": "1", "started": "long ago",
              "command": "gflv2 train", "token": "old"}  # fmt: skip
    _lock_file(tmp_path).write_text(json.dumps(record))
    with lock_folder(tmp_path) as lock:
        assert lock.taken_over["token"] == "old"
    # The same pid with its real start time is a live holder.
    _lock_file(tmp_path).write_text(json.dumps({**record, "process_start": process_state(parent)[1]}))
    with pytest.raises(FolderInUseError, match=f"pid {parent} "):
        lock_folder(tmp_path).acquire()


def test_an_unreadable_lock_is_waited_for_then_taken_over_once_old(tmp_path, monkeypatch):
    monkeypatch.setattr(locks, "ACQUIRE_PATIENCE_SECONDS", 0.2)
    _lock_file(tmp_path).write_text("")  # a creator between O_EXCL and its write
    with pytest.raises(FolderInUseError, match="being written or unreadable"):
        lock_folder(tmp_path).acquire()
    old = time.time() - 3600
    os.utime(_lock_file(tmp_path), (old, old))  # its creator was killed before writing it
    with lock_folder(tmp_path) as lock:
        assert "unreadable" in lock.taken_over


def test_released_after_a_failure_and_the_folder_it_created_removed(tmp_path):
    work_dir = tmp_path / "run"

    @releases_locks
    def failing():
        hold_folder(work_dir, "--work-dir")
        assert _lock_file(work_dir).is_file()
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        failing()
    assert not work_dir.exists()  # created by the lock, still empty: removed with it
    work_dir.mkdir()
    (work_dir / "kept.txt").write_text("x")
    with pytest.raises(RuntimeError):
        with lock_folder(work_dir):
            raise RuntimeError("boom")
    assert sorted(p.name for p in work_dir.iterdir()) == ["kept.txt"]
    # Another process can take it now.
    holder = _start_holder(work_dir)
    assert holder.stdout.readline().strip() == "held"
    holder.communicate("\n", timeout=30)


def test_reentrant_in_one_process_and_released_by_the_last_hold(tmp_path):
    with lock_folder(tmp_path) as outer:
        with lock_folder(tmp_path):
            assert outer.held
        assert _lock_file(tmp_path).is_file()
    assert not _lock_file(tmp_path).exists()


def test_a_lock_beside_a_published_target(tmp_path):
    target = tmp_path / "exports" / "model_onnx"
    with lock_beside(target):
        assert (tmp_path / "exports" / ".model_onnx.lock").is_file()
        assert not target.exists()
    assert not (tmp_path / "exports").exists()  # created for the lock, left empty: removed with it


@pytest.mark.parametrize("stale", [False, True])
def test_of_many_processes_starting_together_exactly_one_gets_the_lock(tmp_path, stale):
    if stale:
        _lock_file(tmp_path).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(),
                                                    "started": "then", "command": "killed", "token": "t"}))  # fmt: skip
    holders = [_start_holder(tmp_path) for _ in range(5)]
    try:
        answers = [h.stdout.readline().strip() for h in holders]
    finally:
        for h in holders:
            h.communicate("\n", timeout=60)
    assert sum(a == "held" for a in answers) == 1, answers
    assert all(a == "held" or a.startswith("refused: ") and "in use by another gflv2 run" in a for a in answers)
    assert not _lock_file(tmp_path).exists()
