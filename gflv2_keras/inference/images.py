"""Reading user images from disk into uint8 RGB arrays, with clear, per-file errors."""

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class ImageReadError(Exception):
    """An image file that cannot be used; the message names the file and the reason."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass
class LoadedImage:
    """A decoded image: ``pixels`` uint8 RGB ``[H, W, 3]`` and notes on conversions applied."""

    path: str
    pixels: np.ndarray
    notes: list = field(default_factory=list)


def read_image(path):
    """Decode an image file to uint8 RGB ``[H, W, 3]``.

    Grayscale, palette, RGBA (alpha dropped over black), CMYK and 16/32-bit images are
    converted, each with a note saying so; 16-bit data is scaled to 8 bits (``>> 8``).

    Raises:
        ImageReadError: the file is missing, unreadable or not a decodable image.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found")
    try:
        with Image.open(path) as img:
            img.load()
            return _to_rgb(path, img)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageReadError(path, f"not a readable image ({error})") from None


def _to_rgb(path, img):
    notes = []
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        data = np.asarray(img, dtype=np.float64)
        shift = 65535.0 if mode.startswith("I;16") or data.max() > 255 else 255.0
        data = np.clip(data / shift * 255.0 + 0.5, 0, 255).astype(np.uint8)
        notes.append(f"{mode} image converted to 8-bit")
        pixels = np.repeat(data[..., None], 3, axis=-1)
        notes.append("grayscale image converted to RGB")
        return LoadedImage(str(path), pixels, notes)
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        notes.append(f"{mode} image: alpha channel dropped")
    elif mode in ("L", "1"):
        notes.append("grayscale image converted to RGB")
    elif mode != "RGB":
        notes.append(f"{mode} image converted to RGB")
    pixels = np.asarray(img.convert("RGB"), dtype=np.uint8)
    if pixels.ndim != 3 or min(pixels.shape[:2]) < 1:
        raise ImageReadError(path, f"unexpected decoded shape {pixels.shape}")
    return LoadedImage(str(path), pixels, notes)


def collect_image_paths(inputs):
    """Expand files and folders into image paths (folders: sorted, by suffix).

    Returns:
        ``(paths, problems)``: the image paths and messages for inputs that gave none
        (an empty folder, a missing path).
    """
    paths, problems = [], []
    for item in inputs:
        item = Path(item)
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
            if not found:
                problems.append(f"{item}: folder has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths.extend(found)
        elif item.exists():
            paths.append(item)
        else:
            problems.append(f"{item}: file not found")
    return paths, problems
