"""Writing files and folders so that a user's files are never lost.

``atomic_write`` replaces one file so that it is always either its old or its complete new
content (temporary file + fsync + ``os.replace``). ``publish_directory`` writes a folder next to its target and renames it into place: a reader
sees the old folder or the complete new one, never a half-written mix; an existing target is
only replaced when the caller passes ``overwrite=True`` (the CLI's ``--overwrite``); an
interrupted or failed write leaves the target as it was and removes its staging folder.

A process killed outright (``kill -9``, power loss) cannot clean up: it leaves ``NAME.tmp-PID``
files and ``.NAME.tmp-PID-XXXXXXXX`` staging folders (``.NAME.old-PID-XXXXXXXX``: a replaced
folder not yet deleted). Each name carries the writer's process id, so
``remove_stale_temporaries`` (run by the next run that locks the folder, ``utils.locks``) removes
exactly those of processes that no longer exist on this machine, and nothing else.
"""

import os
import re
import shutil
import uuid
from pathlib import Path

# Marks the temporary name of a file being written (``NAME.tmp-PID``).
TMP_MARK = ".tmp-"
# The temporaries this module writes: a file being written, a folder being staged, a replaced
# folder being retired (``publish_directory``). ``pid``: the writing process.
TMP_FILE = re.compile(r"^(?P<name>.+)\.tmp-(?P<pid>\d{1,10})$")
STAGING_FOLDER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d{1,10})-[0-9a-f]{8}$")


def atomic_write(path, write):
    """Calls ``write(file)`` on a temporary file next to ``path``, then moves it onto ``path``.

    The temporary file is flushed and fsync-ed before ``os.replace``, and the folder after it,
    so ``path`` is always either its previous content or the complete new content. If
    ``write`` raises (or the process is interrupted), the temporary file is removed and
    ``path`` is untouched.
    """
    directory = os.path.dirname(os.path.abspath(path))
    tmp = f"{path}{TMP_MARK}{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_path(tmp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory):
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not supported on this platform / file system
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def refuse_existing(target, overwrite, what="output"):
    """``FileExistsError`` naming ``target`` when it exists and ``overwrite`` is false."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise FileExistsError(
            f"{target} already exists; refusing to replace the {what} (pass --overwrite, or overwrite=True, "
            "to replace it, or choose another folder)"
        )


def publish_directory(target, write, overwrite=False, what="output"):
    """Create folder ``target`` atomically with ``write(staging_folder)``.

    Args:
        target: the folder to create (its parent is created if needed).
        write: callable filling the (empty, existing) staging folder; it may raise to abort.
        overwrite: replace an existing ``target`` (otherwise ``FileExistsError``, checked
            before and again after writing).
        what: what the folder is, for the error message ("preset folder", "model version").

    Returns:
        ``target`` as a ``Path``.
    """
    target = Path(target)
    refuse_existing(target, overwrite, what)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / _staging_name(target.name, "tmp")
    staging.mkdir()
    try:
        write(staging)
        refuse_existing(target, overwrite, what)
        if target.exists():
            retired = target.parent / _staging_name(target.name, "old")
            os.rename(target, retired)
            try:
                os.rename(staging, target)
            except OSError:
                os.rename(retired, target)
                raise
            remove_path(retired)
        else:
            os.rename(staging, target)
    except BaseException:
        remove_path(staging)
        raise
    return target


def remove_path(path):
    """Remove a file or a folder tree if it exists (errors ignored: best-effort clean-up)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _staging_name(name, kind):
    """``.NAME.tmp-PID-XXXXXXXX`` (a folder being written) or ``.NAME.old-PID-XXXXXXXX`` (one being replaced)."""
    return f".{name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def process_gone(pid):
    """Whether no process ``pid`` runs on this machine (a zombie counts as gone).

    ``False`` when it cannot be told (no permission to signal it: another user's live process).
    """
    pid = int(pid)
    if pid <= 0 or pid >= 2**31 or pid == os.getpid():
        return False  # not a process id, or this process
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: it exists, owned by someone else
        return False
    return process_state(pid)[0] == "Z"


def process_state(pid):
    """``(state letter, start time in clock ticks since boot)`` of ``pid`` from ``/proc`` (Linux), or
    ``(None, None)`` where it cannot be read."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            fields = f.read().decode(errors="replace").rsplit(")", 1)[1].split()
        return fields[0], fields[19]  # fields 3 and 22 of proc(5): state, starttime
    except (OSError, IndexError):
        return None, None


def remove_stale_temporaries(folder, recursive=False):
    """Remove the temporaries this module's writers left in ``folder`` when they were killed.

    Only names of this module's pattern whose process is gone (``process_gone``) are touched:
    ``NAME.tmp-PID`` files (``atomic_write``), ``.NAME.tmp-PID-XXXXXXXX`` staging folders and
    ``.NAME.old-PID-XXXXXXXX`` retired folders (``publish_directory``). A retired folder whose
    ``NAME`` no longer exists (the writer was killed between the two renames of a replacement) is
    renamed back to ``NAME`` rather than deleted: it is the previous, complete content. Symbolic
    links are neither removed nor followed.

    Args:
        folder: the folder to sweep (nothing happens if it is not a folder).
        recursive: also sweep its sub-folders (not the staging folders themselves).

    Returns:
        list of ``(path, action)``, ``action`` ``"removed"`` or ``"restored"``.
    """
    done = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return done
    for entry in entries:
        path = Path(entry.path)
        try:
            is_file = entry.is_file(follow_symlinks=False)
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            continue
        file_match = TMP_FILE.match(entry.name) if is_file else None
        folder_match = STAGING_FOLDER.match(entry.name) if is_dir else None
        match = file_match or folder_match
        if match and process_gone(match["pid"]):
            try:
                if folder_match and folder_match["kind"] == "old" and not (path.parent / match["name"]).exists():
                    os.rename(path, path.parent / match["name"])
                    done.append((path, "restored"))
                else:
                    remove_path(path)
                    done.append((path, "removed"))
            except OSError:
                pass  # best effort: another process may have removed it meanwhile
        elif is_dir and recursive and not folder_match:
            done += remove_stale_temporaries(path, recursive=True)
    return done
