"""Writing files and folders so that a user's files are never lost.

``atomic_write`` replaces one file so that it is always either its old or its complete new
content (temporary file + fsync + ``os.replace``). ``publish_directory`` writes a folder next to its target and renames it into place: a reader
sees the old folder or the complete new one, never a half-written mix; an existing target is
only replaced when the caller passes ``overwrite=True`` (the CLI's ``--overwrite``); an
interrupted or failed write leaves the target as it was and removes its staging folder.
"""

import os
import shutil
import uuid
from pathlib import Path

# Marks the temporary name of a file being written (``NAME.tmp-PID``).
TMP_MARK = ".tmp-"


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
    staging = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        write(staging)
        refuse_existing(target, overwrite, what)
        if target.exists():
            retired = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
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
