"""Temporaries of killed writers (``NAME.tmp-PID``, ``.NAME.tmp-PID-XXXXXXXX``) are removed by the next
run in the folder; live writers' temporaries and user files are never touched."""

import os
import subprocess
import sys
import textwrap

import pytest

from gflv2_keras.utils.files import STAGING_FOLDER, TMP_FILE, process_gone, publish_directory, remove_stale_temporaries
from gflv2_keras.utils.locks import lock_folder


@pytest.fixture(scope="module")
def dead_pid():
    """A process id that existed a moment ago and no longer does."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert process_gone(child.pid)
    return child.pid


@pytest.fixture
def live_pid():
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    yield child.pid
    child.communicate(b"")


def _write(path, text="x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _layout(root, dead, live):
    """Temporaries of a dead and a live writer, and user files that look a little like them."""
    stale = {
        _write(root / f"photo.json.tmp-{dead}"),
        _write(root / f".export.tmp-{dead}-0123abcd" / "model.onnx").parent,
        _write(root / f".replaced.old-{dead}-89abcdef" / "old.txt").parent,  # its target exists: garbage
    }
    _write(root / "replaced" / "new.txt")
    restored = _write(root / f".interrupted.old-{dead}-00ff00ff" / "saved.txt").parent  # its target is gone
    kept = {
        _write(root / f"photo2.json.tmp-{os.getpid()}"),  # this process is writing it
        _write(root / f"photo3.json.tmp-{live}"),  # a live process is writing it
        _write(root / f".export2.tmp-{live}-0123abcd" / "x"),
        _write(root / "notes.tmp-abc"),  # not a pid
        _write(root / "photo.jpg"),
        _write(root / ".legacy.tmp-0123abcd" / "x"),  # the earlier naming, without a pid: owner unknown
        _write(root / f"folder.tmp-{dead}" / "user.txt"),  # a folder named like a temporary file
        _write(root / f".file.tmp-{dead}-0123abcd"),  # a file named like a staging folder
    }
    os.symlink(root / "photo.jpg", root / f"link.tmp-{dead}")  # links are never removed nor followed
    kept.add(root / f"link.tmp-{dead}")
    nested = _write(root / "checkpoints" / f"ckpt-000000004.npz.tmp-{dead}")
    return stale, restored, kept, nested


def test_only_dead_writers_temporaries_are_removed(tmp_path, dead_pid, live_pid):
    stale, restored, kept, nested = _layout(tmp_path, dead_pid, live_pid)
    done = remove_stale_temporaries(tmp_path)
    assert {p for p, action in done if action == "removed"} == stale
    assert [(p, action) for p, action in done if action == "restored"] == [(restored, "restored")]
    assert not any(p.exists() for p in stale) and not restored.exists()
    assert (tmp_path / "interrupted" / "saved.txt").read_text() == "x"  # the previous content is back
    assert all(os.path.lexists(p) for p in kept)
    assert (tmp_path / "replaced" / "new.txt").is_file()
    assert nested.exists()  # not recursive by default
    assert remove_stale_temporaries(tmp_path, recursive=True) == [(nested, "removed")]
    assert not nested.exists() and (tmp_path / "checkpoints").is_dir()


def test_the_next_run_that_locks_the_folder_sweeps_it_and_says_so(tmp_path, dead_pid, live_pid, capsys):
    stale, restored, kept, nested = _layout(tmp_path, dead_pid, live_pid)
    with lock_folder(tmp_path, "--work-dir", recursive=True) as lock:
        assert len(lock.swept) == len(stale) + 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"removed {len(stale) + 2} temporary file(s) of killed runs" in err[0]
    assert not nested.exists() and all(os.path.lexists(p) for p in kept)


def test_a_writer_killed_mid_write_leaves_what_the_next_run_removes(tmp_path):
    """A real ``kill -9`` inside ``atomic_write`` and inside ``publish_directory``."""
    script = textwrap.dedent(
        """
        import os, signal, sys
        from pathlib import Path
        from gflv2_keras.utils.files import atomic_write, publish_directory
        folder = Path(sys.argv[1])
        def die(f):
            f.write(b"half")
            os.kill(os.getpid(), signal.SIGKILL)
        if sys.argv[2] == "file":
            atomic_write(folder / "detections.json", die)
        else:
            publish_directory(folder / "export", lambda staging: die(open(staging / "model.onnx", "wb")))
        """
    )
    for kind in ("file", "folder"):
        killed = subprocess.run([sys.executable, "-c", script, str(tmp_path), kind])
        assert killed.returncode == -9
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and any(TMP_FILE.match(n) for n in left) and any(STAGING_FOLDER.match(n) for n in left)
    with lock_folder(tmp_path):
        pass
    assert list(tmp_path.iterdir()) == []


def test_staging_folders_carry_the_writers_pid(tmp_path):
    seen = []
    publish_directory(tmp_path / "out", lambda staging: seen.append(staging.name))
    match = STAGING_FOLDER.match(seen[0])
    assert match and match["name"] == "out" and match["kind"] == "tmp" and int(match["pid"]) == os.getpid()
    publish_directory(tmp_path / "out", lambda staging: None, overwrite=True)  # the retired folder is removed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
