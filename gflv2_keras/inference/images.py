"""Reading user images from disk into uint8 RGB arrays, with clear, per-file errors."""

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# Largest image (width x height) that is decoded; larger ones are refused as possible
# decompression bombs (a small file that decodes to gigabytes). Pillow's own default;
# settable per process with ``set_max_image_pixels`` (CLI: ``--max-image-pixels``) or the
# environment variable ``GFLV2_MAX_IMAGE_PIXELS``.
MAX_IMAGE_PIXELS_ENV = "GFLV2_MAX_IMAGE_PIXELS"
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


def set_max_image_pixels(pixels):
    """Set the largest image (width x height) ``read_image`` decodes, for this process."""
    from PIL import Image

    pixels = int(pixels)
    if pixels < 1:
        raise ValueError(f"the image pixel limit must be a positive number, got {pixels}")
    Image.MAX_IMAGE_PIXELS = pixels


def max_image_pixels():
    """The current limit (``GFLV2_MAX_IMAGE_PIXELS`` if set, else Pillow's ``MAX_IMAGE_PIXELS``)."""
    from PIL import Image

    if os.environ.get(MAX_IMAGE_PIXELS_ENV):
        try:
            set_max_image_pixels(os.environ[MAX_IMAGE_PIXELS_ENV])
        except ValueError:
            raise ValueError(
                f"{MAX_IMAGE_PIXELS_ENV}={os.environ[MAX_IMAGE_PIXELS_ENV]!r} is not a positive whole number"
            ) from None
    return Image.MAX_IMAGE_PIXELS


def read_image(path):
    """Decode an image file to uint8 RGB ``[H, W, 3]``.

    Grayscale, palette, RGBA (alpha dropped over black), CMYK and 16/32-bit images are
    converted, each with a note saying so; 16-bit data is scaled to 8 bits (``>> 8``).
    Images of more than ``max_image_pixels()`` pixels are refused before decoding.

    Raises:
        ImageReadError: the file is missing, unreadable, too large or not a decodable image.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "file not found")
    limit = max_image_pixels()
    try:
        with warnings.catch_warnings():
            # Pillow warns above the limit and raises above twice it; both are refusals here.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()
                return _to_rgb(path, img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageReadError(
            path,
            f"image larger than the limit of {limit:,} pixels (a guard against decompression bombs; "
            f"raise it with --max-image-pixels or {MAX_IMAGE_PIXELS_ENV})",
        ) from None
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
