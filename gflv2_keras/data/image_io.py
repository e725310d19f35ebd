"""The one image reader of the library: an image file → uint8 RGB ``[H, W, 3]``, EXIF orientation applied.

``gflv2 predict``, the tf.data training / test pipeline (``data.pipeline``, through
``decode_image_tf``), the dataset checks (``data.coco.check_image_files``) and evaluation
(``read_record_image``) all decode with ``read_image``, so one file gives the same pixels on
every path (Pillow / libjpeg-turbo with its accurate integer DCT; ``tf.io.decode_image`` uses the
fast DCT, up to several grey levels away).

Frames. A camera stores the pixels as the sensor read them (the *stored* frame) and writes
the EXIF ``Orientation`` tag (0x0112, values 1-8) saying how a viewer must rotate / mirror them
to show the picture upright (the *displayed* frame). Every reader returns the displayed frame,
as every photo viewer shows it: pixels, sizes, boxes (xyxy pixels) and the sizes written in
``gflv2 predict``'s JSON are of the displayed frame. Orientations 5-8 swap width and height.

Annotation files made by tools that ignored EXIF hold boxes in the stored frame. Their image
sizes show it when the orientation swaps the axes: a record whose ``(height, width)`` equals the
stored frame and not the displayed one is read in the stored frame (``frame_orientation``, the
rule is the annotation file's), and ``check_image_files`` names the image in the dataset's
problems. For orientations 2-4 (mirrors and the half turn) the sizes cannot tell, and the
displayed frame is assumed.

Conversions: grayscale, palette, RGBA (alpha channel dropped), CMYK and 16/32-bit images become
uint8 RGB, each with a note; 16-bit data is scaled to 8 bits (``x / 65535 * 255``, rounded).
Images of more than ``max_image_pixels()`` pixels are refused before decoding (decompression
bombs).

``resize_problem`` is the one size check of the keep-ratio resize (predict and the data readers):
an image whose resized side would round to 0 px cannot be run.
"""

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
ORIENTATION_TAG = 0x0112
# Orientations whose displayed frame swaps the stored width and height.
SWAPPED_ORIENTATIONS = (5, 6, 7, 8)
_ORIENTATION_NAMES = {
    1: "upright",
    2: "mirrored left-right",
    3: "rotated 180 degrees",
    4: "mirrored top-bottom",
    5: "transposed",
    6: "rotated 90 degrees clockwise",
    7: "transversed",
    8: "rotated 90 degrees counter-clockwise",
}


class ImageReadError(Exception):
    """An image file that cannot be used; the message names the file and the reason."""

    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass
class ImageHeader:
    """What the header of an image file says, without decoding it.

    Attributes:
        path: the file.
        stored_size: ``(width, height)`` of the pixels as stored.
        orientation: the EXIF orientation (1-8; 1 when absent or invalid).
    """

    path: str
    stored_size: tuple
    orientation: int = 1

    @property
    def displayed_size(self):
        """``(width, height)`` of the displayed frame (the stored one transposed for orientations 5-8)."""
        width, height = self.stored_size
        return (height, width) if self.orientation in SWAPPED_ORIENTATIONS else (width, height)


@dataclass
class LoadedImage:
    """A decoded image.

    Attributes:
        path: the file.
        pixels: uint8 RGB ``[H, W, 3]``, in the frame of ``orientation`` (the displayed frame
            unless an annotation asked for the stored one, see ``frame_orientation``).
        notes: conversions applied (mode changes, a frame chosen by an annotation).
        orientation: the EXIF orientation applied to the stored pixels (1: none).
        stored_size: ``(width, height)`` of the stored pixels.
    """

    path: str
    pixels: np.ndarray
    notes: list = field(default_factory=list)
    orientation: int = 1
    stored_size: tuple = None


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


def read_header(path):
    """The stored size and EXIF orientation of an image file (header only, no decode).

    Raises:
        ImageReadError: the file is missing, unreadable, larger than ``max_image_pixels()`` or
            not an image.
    """
    return _with_image(path, lambda img: ImageHeader(str(path), tuple(img.size), _orientation(img)))


def frame_orientation(header, annotated_size=None):
    """The orientation ``read_image`` applies to the file of ``header`` (see the module docstring).

    Args:
        header: the file's ``ImageHeader``.
        annotated_size: ``(height, width)`` an annotation file gives the image, or ``None``.

    Returns:
        ``header.orientation``, or 1 (the stored frame) when ``annotated_size`` is the stored
        frame of an image whose orientation swaps width and height (a non-square image).
    """
    if annotated_size is not None and header.orientation in SWAPPED_ORIENTATIONS:
        height, width = (int(v) for v in annotated_size)
        if (width, height) == tuple(header.stored_size) and (width, height) != header.displayed_size:
            return 1
    return header.orientation


def describe_orientation(orientation):
    """``"EXIF orientation 6 (rotated 90 degrees clockwise)"``."""
    return f"EXIF orientation {orientation} ({_ORIENTATION_NAMES.get(orientation, 'unknown')})"


def read_image(path, annotated_size=None):
    """Decode an image file to uint8 RGB ``[H, W, 3]`` in its displayed frame (see the module docstring).

    Args:
        path: the image file.
        annotated_size: ``(height, width)`` of the image in an annotation file, or ``None``
            (predict): decides the frame with ``frame_orientation``.

    Returns:
        A ``LoadedImage``.

    Raises:
        ImageReadError: the file is missing, unreadable, too large or not a decodable image.
    """

    def decode(img):
        header = ImageHeader(str(path), tuple(img.size), _orientation(img))
        orientation = frame_orientation(header, annotated_size)
        img.load()
        loaded = _to_rgb(path, img)
        if orientation != header.orientation:
            loaded.notes.append(
                f"{describe_orientation(header.orientation)} not applied: the annotation's size "
                f"{header.stored_size[0]}x{header.stored_size[1]} is the stored frame's"
            )
        loaded.pixels = np.ascontiguousarray(orient(loaded.pixels, orientation))
        loaded.orientation, loaded.stored_size = orientation, header.stored_size
        return loaded

    return _with_image(path, decode)


def read_record_image(record):
    """The uint8 RGB ``[H, W, 3]`` pixels of a dataset record's image, in the record's frame.

    ``record``: a dict with ``file_name``, ``height`` and ``width`` (``data.records``).

    Raises:
        ImageReadError: as ``read_image``.
    """
    return read_image(record["file_name"], (record["height"], record["width"])).pixels


def decode_image_tf(file_name, height, width):
    """``read_record_image`` inside a TensorFlow graph (a ``tf.numpy_function``, e.g. a tf.data map).

    Args:
        file_name: string scalar tensor, the image file.
        height, width: int scalar tensors, the annotation's size (decides the frame).

    Returns:
        uint8 ``[H, W, 3]`` tensor, the same pixels as ``read_image``. An unreadable file
        raises an error of the graph (``tf.data``'s ``ignore_errors`` drops the element).
    """
    import tensorflow as tf

    def decode(name, h, w):
        return read_image(name.decode(), (int(h), int(w))).pixels

    image = tf.numpy_function(decode, [file_name, height, width], tf.uint8, stateful=False)
    image.set_shape([None, None, 3])
    return image


def orient(pixels, orientation):
    """``pixels`` ``[H, W, ...]`` of the stored frame → the displayed frame of EXIF ``orientation``.

    A view (no copy), as Pillow's ``ImageOps.exif_transpose``: 2 mirror left-right, 3 rotate
    180 degrees, 4 mirror top-bottom, 5 transpose, 6 rotate 90 degrees clockwise, 7 transverse,
    8 rotate 90 degrees counter-clockwise; 1 and unknown values leave it as it is.
    """
    if orientation == 2:
        return pixels[:, ::-1]
    if orientation == 3:
        return pixels[::-1, ::-1]
    if orientation == 4:
        return pixels[::-1]
    if orientation == 5:
        return np.swapaxes(pixels, 0, 1)
    if orientation == 6:
        return np.swapaxes(pixels, 0, 1)[:, ::-1]
    if orientation == 7:
        return np.swapaxes(pixels, 0, 1)[::-1, ::-1]
    if orientation == 8:
        return np.swapaxes(pixels, 0, 1)[::-1]
    return pixels


def resize_problem(height, width, scale=None):
    """Why an image cannot go through the keep-ratio resize at ``scale``, or ``None`` when it can.

    The one size check of ``gflv2 predict`` and the data readers: a side that the resize
    (``models.preprocessing.rescale_size``, ``int(side * factor + 0.5)``) rounds to 0 px leaves
    nothing to run the network on (a 3 x 20000 image at 1333 x 800).

    Args:
        height, width: the image size in pixels.
        scale: ``(long_max, short_max)`` of the resize (the preset's ``input_scale``, a
            recipe's ``scale``); ``None`` for the official ``(1333, 800)``. Multi-scale training
            keeps ``long_max`` and draws short sides of hundreds of pixels, so the same check
            holds for it: a side under 1 px comes from the long side's cap.

    Returns:
        ``None``, or one line such as ``"3x20000 image (width x height) would be resized to
        0x1333 px at scale (1333, 800): a side under 1 px"``.
    """
    from gflv2_keras.models.preprocessing import DEFAULT_SCALE, static_rescale_size

    scale = DEFAULT_SCALE if scale is None else scale
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        return f"{width}x{height} image (width x height) has no pixels"
    new_h, new_w = static_rescale_size(height, width, scale)
    if min(new_h, new_w) < 1:
        return (
            f"{width}x{height} image (width x height) would be resized to {new_w}x{new_h} px at scale "
            f"{tuple(int(v) for v in scale)}: a side under 1 px"
        )
    return None


def _orientation(img):
    """The EXIF orientation of an open Pillow image; 1 when absent, unreadable or not 1-8."""
    try:
        value = img.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # a corrupt EXIF block: Pillow raises several types; the pixels are still usable
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _with_image(path, use):
    """``use(img)`` on the opened Pillow image of ``path``, with the reader's errors and size guard."""
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
                return use(img)
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
