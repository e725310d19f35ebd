"""Writing output folders so that a user's files are never lost.

``publish_directory`` writes a folder next to its target and renames it into place: a reader
sees the old folder or the complete new one, never a half-written mix; an existing target is
only replaced when the caller passes ``overwrite=True`` (the CLI's ``--overwrite``); an
interrupted or failed write leaves the target as it was and removes its staging folder.
"""

import os
import shutil
import uuid
from pathlib import Path


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
