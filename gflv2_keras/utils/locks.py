"""One gflv2 run at a time per output folder: a lock file, taken over when its run is gone.

A run that writes into a folder (``gflv2 train``'s work dir, ``gflv2 predict --output``, the
folders of ``gflv2 evaluate``'s outputs) first creates ``FOLDER/.gflv2.lock``; an export or a
``gflv2 convert`` preset folder, which appears whole by a rename (``utils.files.publish_directory``),
locks ``PARENT/.NAME.lock`` beside its target. The file is created with ``O_CREAT | O_EXCL`` (exactly one creator wins) and holds
the holder's process id, host, process start time, start date and command line (JSON). A second
run refuses in one line naming the holder (``FolderInUseError``, an ``OSError``: the CLI prints
``gflv2 CMD: error: ...`` and exits with 2).

A lock whose process no longer exists on this machine (killed: ``kill -9``, a crash, a power
loss; or its process id now belongs to another process, which the start time tells) is stale:
the next run takes it over, saying so in one line. Only one of several runs finding the same
stale lock takes it (under a short-lived ``.takeover`` guard file). A lock of another host is
never taken over (its process cannot be checked from here): the message says which file to
delete if that run is gone. Having the lock, the run removes the temporaries that killed runs
left in the folder (``utils.files.remove_stale_temporaries``) and says what it removed.

The lock is released when the run ends, also on an exception: ``with lock_folder(...)``, or a
function decorated with ``@releases_locks`` that calls ``hold_folder`` / ``hold_beside``
(released when it returns or raises); ``atexit`` releases what is still held at interpreter exit.
Within one process a lock is re-entrant (a nested hold of the same file is counted, not refused).
A folder the lock created is removed again on release if it is still empty.
"""

import atexit
import functools
import json
import os
import socket
import sys
import time
import uuid
from pathlib import Path

from gflv2_keras.utils.files import process_gone, process_state, remove_stale_temporaries

LOCK_NAME = ".gflv2.lock"
GUARD_SUFFIX = ".takeover"
# A lock file being written by its creator is unreadable for microseconds; one still unreadable
# after this long was left by a process killed between creating and writing it.
UNREADABLE_STALE_SECONDS = 10.0
# A takeover guard older than this was left by a process killed during the takeover.
GUARD_STALE_SECONDS = 10.0
ACQUIRE_PATIENCE_SECONDS = 3.0
COMMAND_CHARS = 160

_held = {}  # absolute lock path -> FolderLock held by this process
_scopes = []  # lists of the locks taken by the running @releases_locks functions


class FolderInUseError(OSError):
    """Another run holds the folder's lock; the message names it (one line)."""


class FolderLock:
    """The lock file ``lock_path`` guarding ``folder`` (see the module docstring).

    Args:
        lock_path: the lock file (``FOLDER/.gflv2.lock``, or ``PARENT/.NAME.lock`` beside a target).
        folder: the folder swept for stale temporaries once the lock is held (created if missing).
        option: how the user named the folder, for the refusal (``"--work-dir"``, ``"--output"``).
        recursive: sweep the sub-folders of ``folder`` too.
        command: what the lock file says the holder is running (default: this command line).
    """

    def __init__(self, lock_path, folder, option="--output", recursive=False, command=None):
        self.path = Path(os.path.abspath(lock_path))
        self.folder = Path(os.path.abspath(folder))
        self.option = option
        self.recursive = recursive
        self.command = command or (" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else "python")
        self.record = None
        self.created_folder = None
        self.taken_over = None
        self.swept = []
        self._depth = 0
        self._outer = None  # the lock object this process already held for the same file

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()

    @property
    def held(self):
        return self._depth > 0

    def acquire(self):
        """Create the lock file (or take over a stale one) and sweep the folder; returns ``self``.

        Raises:
            FolderInUseError: a live run (or one on another host) holds the lock.
        """
        if self._depth:
            self._depth += 1
            return self
        key = str(self.path)
        if key in _held:  # this process holds it already (nested use): count the hold there
            self._outer = _held[key].acquire()
            self._depth = 1
            return self
        self.created_folder = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._create()
        self._depth = 1
        _held[key] = self
        atexit.register(self.release)
        if self.taken_over is not None:
            gone = _describe(self.taken_over)
            print(f"[lock] {self.folder}: took over the lock of a run that no longer exists ({gone})", file=sys.stderr)
        self.swept = remove_stale_temporaries(self.folder, recursive=self.recursive)
        if self.swept:
            names = ", ".join(f"{os.path.relpath(p, self.folder)}" + (" (restored)" if a == "restored" else "")
                              for p, a in self.swept[:3])  # fmt: skip
            more = f" and {len(self.swept) - 3} more" if len(self.swept) > 3 else ""
            print(f"[lock] {self.folder}: removed {len(self.swept)} temporary file(s) of killed runs: {names}{more}",
                  file=sys.stderr)  # fmt: skip
        return self

    def release(self):
        """Drop one hold; the last one removes the lock file (if still ours) and an empty folder it created."""
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth:
            return
        if self._outer is not None:
            outer, self._outer = self._outer, None
            outer.release()
            return
        _held.pop(str(self.path), None)
        atexit.unregister(self.release)
        found = _read(self.path)
        if isinstance(found, dict) and found.get("token") == self.record["token"]:
            try:
                os.unlink(self.path)
            except OSError:
                pass
        if self.created_folder:
            try:
                self.folder.rmdir()  # only if empty
            except OSError:
                pass

    def _create(self):
        deadline = time.monotonic() + ACQUIRE_PATIENCE_SECONDS
        while True:
            record = _new_record(self.command)
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                found = _read(self.path)
                if found is _VANISHED:
                    continue
                if found is None:  # being written, or its writer was killed before writing it
                    if _age(self.path) > UNREADABLE_STALE_SECONDS:
                        self._take_over(found)
                    elif time.monotonic() > deadline:
                        raise FolderInUseError(self._refusal(None)) from None
                    else:
                        time.sleep(0.05)
                    continue
                if not _is_stale(found):
                    raise FolderInUseError(self._refusal(found)) from None
                if not self._take_over(found) and time.monotonic() > deadline:
                    raise FolderInUseError(self._refusal(found)) from None
                continue
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(record))
                f.flush()
                os.fsync(f.fileno())
            self.record = record
            return

    def _take_over(self, stale):
        """Remove the stale lock ``stale`` (a record, or None: unreadable) if it is still in place; under a guard."""
        guard = Path(f"{self.path}{GUARD_SUFFIX}")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            if _age(guard) > GUARD_STALE_SECONDS:
                _unlink(guard)
            else:
                time.sleep(0.05)
            return False
        try:
            again = _read(self.path)
            if again == stale or (stale is None and again is None):
                _unlink(self.path)
                self.taken_over = stale if stale is not None else {"unreadable": str(self.path)}
                return True
            return False
        finally:
            os.close(fd)
            _unlink(guard)

    def _refusal(self, holder):
        if holder is None:
            return (f"{self.folder} is locked by another gflv2 run ({self.path} is being written or unreadable); "
                    f"retry, or delete it if no run is using the folder")  # fmt: skip
        message = (f"{self.folder} is in use by another gflv2 run ({_describe(holder)}); wait for it to end "
                   f"or choose another {self.option}")  # fmt: skip
        if holder.get("host") != socket.gethostname():
            message += f" (if that run is gone, delete {self.path})"
        return message


def lock_folder(folder, option="--output", recursive=False, command=None):
    """A ``FolderLock`` on ``FOLDER/.gflv2.lock`` (not yet acquired: ``with lock_folder(...):``)."""
    return FolderLock(Path(folder) / LOCK_NAME, folder, option, recursive, command)


def lock_beside(target, option="--output", command=None):
    """A ``FolderLock`` on ``PARENT/.NAME.lock`` for ``target``, a file or folder published by a rename.

    The parent folder is swept (not recursively): the staging folders of ``target`` live there.
    """
    target = Path(os.path.abspath(target))
    return FolderLock(target.parent / f".{target.name}.lock", target.parent, option, False, command)


def releases_locks(function):
    """Decorator: the locks ``hold_folder`` / ``hold_beside`` take while ``function`` runs are
    released when it returns or raises."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        _scopes.append([])
        try:
            return function(*args, **kwargs)
        finally:
            for lock in reversed(_scopes.pop()):
                lock.release()

    return wrapper


def hold_folder(folder, option="--output", recursive=False):
    """Acquire ``lock_folder(folder)`` until the enclosing ``@releases_locks`` function ends
    (or interpreter exit when there is none); returns the lock."""
    return _hold(lock_folder(folder, option, recursive))


def hold_beside(target, option="--output"):
    """Acquire ``lock_beside(target)`` like ``hold_folder``; returns the lock."""
    return _hold(lock_beside(target, option))


def _hold(lock):
    lock = lock.acquire()
    if _scopes:
        _scopes[-1].append(lock)
    return lock


_VANISHED = object()


def _read(path):
    """The lock file's record; ``None`` if unreadable (empty, partial, not JSON), ``_VANISHED`` if gone."""
    try:
        with open(path, "rb") as f:
            data = f.read(65536)
    except FileNotFoundError:
        return _VANISHED
    except OSError:
        return None
    try:
        record = json.loads(data.decode())
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return record if isinstance(record, dict) and "pid" in record and "token" in record else None


def _new_record(command):
    pid = os.getpid()
    return {
        "pid": pid,
        "host": socket.gethostname(),
        "process_start": process_state(pid)[1],
        "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "command": command,
        "token": uuid.uuid4().hex,
    }


def _is_stale(record):
    """Whether the holder of ``record`` is gone: its host is this one and its process is not running there."""
    if record.get("host") != socket.gethostname():
        return False
    try:
        pid = int(record["pid"])
    except (TypeError, ValueError):
        return False
    if pid == os.getpid():
        return False  # this very process (a hold not released): never stale
    if process_gone(pid):
        return True
    started = record.get("process_start")
    return started is not None and process_state(pid)[1] not in (None, started)  # the pid was reused


def _describe(record):
    if "unreadable" in record:
        return f"unreadable lock file {record['unreadable']}"
    command = str(record.get("command", "?"))
    if len(command) > COMMAND_CHARS:
        command = command[: COMMAND_CHARS - 3] + "..."
    return f"pid {record.get('pid')} on {record.get('host')}, started {record.get('started')}: {command}"


def _age(path):
    try:
        return time.time() - os.stat(path).st_mtime
    except OSError:
        return 0.0


def _unlink(path):
    try:
        os.unlink(path)
    except OSError:
        pass
