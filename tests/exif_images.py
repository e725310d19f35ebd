"""Images with an EXIF orientation whose displayed picture is known (the tests of the library's reader
``data.image_io`` and of the SavedModel's in-graph reader ``export.exif``)."""

import numpy as np
from PIL import Image

# Pillow's transpose that shows the stored pixels of each EXIF orientation upright (the EXIF
# specification; ``PIL.ImageOps.exif_transpose``), and the orientation that undoes it.
SHOW = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
STORE = {1: None, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}


def known_image(height=48, width=80):
    """A displayed picture whose every rotation and mirror differs: smooth, JPEG-friendly, channels distinct."""
    ys, xs = np.mgrid[0:height, 0:width]
    pixels = np.stack([xs * 255 / width, ys * 255 / height, 40 + (xs * ys) * 150 / (height * width)], -1)
    pixels[: height // 4, : width // 5] = (250, 20, 20)  # a red top-left corner
    return pixels.astype(np.uint8)


def write_oriented(path, displayed, orientation, **save):
    """Writes the stored pixels that EXIF ``orientation`` shows as ``displayed``; returns the stored image."""
    image = Image.fromarray(displayed)
    if STORE[orientation]:
        image = image.transpose(SHOW[STORE[orientation]])
    exif = Image.Exif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, **save)
    return image
