"""The images ``gflv2 predict`` is given: files and folders expanded into image paths, with clear, per-input problems.

Decoding is the library's one image reader (``gflv2_keras.data.image_io``: uint8 RGB
``[H, W, 3]`` in the displayed frame, EXIF orientation applied), re-exported here.
"""

import errno
import os
from pathlib import Path

from gflv2_keras.data.image_io import (  # noqa: F401  (the reader, re-exported for the CLI and its users)
    IMAGE_SUFFIXES,
    MAX_IMAGE_PIXELS_ENV,
    ImageReadError,
    LoadedImage,
    max_image_pixels,
    read_image,
    resize_problem,
    set_max_image_pixels,
)


def collect_image_paths(inputs):
    """Expand files and folders into image paths (folders: sorted, by suffix, not recursive).

    Returns:
        ``(paths, problems)``: the image paths and one message per input that gave none (an
        empty folder, a missing path, a symbolic link loop or a broken link, given or met in a
        folder: named, never silently left out).
    """
    paths, problems = [], []
    for item in inputs:
        item = Path(item)
        problem = link_problem(item)
        if problem:
            problems.append(problem)
        elif item.is_dir():
            entries = [entry for entry in sorted(item.iterdir()) if entry.suffix.lower() in IMAGE_SUFFIXES]
            found, unusable = [], []
            for entry in entries:
                problem = link_problem(entry)
                if problem:
                    unusable.append(problem)
                elif entry.is_file():
                    found.append(entry)
            if not found and not unusable:
                problems.append(f"{item}: folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            problems.extend(unusable)
            paths.extend(found)
        elif item.exists():
            paths.append(item)
        else:
            problems.append(f"{item}: file not found")
    return paths, problems


def link_problem(path):
    """Why ``path`` cannot be followed (a symbolic link loop, a broken link), or ``None``."""
    path = Path(path)
    try:
        os.stat(path)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return f"{path}: symbolic link loop (the link leads back to itself), skipped"
        if path.is_symlink():
            return f"{path}: broken symbolic link (to {os.readlink(path)}, which does not exist), skipped"
    return None
