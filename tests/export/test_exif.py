"""The SavedModel's bytes signatures show an image in its displayed frame, as the library's reader does:
EXIF orientation read in the graph (``export.exif``), checked against Pillow's reading of the same
bytes (``data.image_io.read_header``) and NumPy's rotations (``data.image_io.orient``)."""

import io
import struct
import warnings

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from gflv2_keras.data.image_io import orient, read_header, read_image
from gflv2_keras.export.exif import decode_displayed, jpeg_orientation

from exif_images import known_image, write_oriented
from serving_support import assert_matches_detect, decode

DECODE = tf.function(decode_displayed, input_signature=[tf.TensorSpec([], tf.string)])
ORIENTATION = tf.function(jpeg_orientation, input_signature=[tf.TensorSpec([], tf.string)])


def _oriented_jpeg(tmp_path, orientation, size=(48, 80)):
    """``(bytes, path)`` of a JPEG whose EXIF ``orientation`` shows ``known_image(*size)``."""
    path = tmp_path / f"photo_{orientation}.jpg"
    write_oriented(path, known_image(*size), orientation, quality=95)
    return path.read_bytes(), path


def _pillow_orientation(tmp_path, data):
    """What the library's reader makes of ``data`` (Pillow's EXIF parser)."""
    path = tmp_path / "probe.jpg"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow warns about corrupt EXIF blocks
        return read_header(path).orientation


@pytest.mark.parametrize("orientation", range(1, 9))
def test_decode_gives_the_frame_of_the_library_reader(tmp_path, orientation):
    data, path = _oriented_jpeg(tmp_path, orientation)
    assert int(ORIENTATION(data)) == orientation == read_header(path).orientation
    pixels = DECODE(data).numpy()
    # Pillow's stored frame, turned by NumPy: exactly.
    np.testing.assert_array_equal(pixels, orient(decode(data), orientation))
    # The library's reader: the same frame and the same pixels.
    library = read_image(path).pixels
    assert pixels.shape == library.shape == (48, 80, 3)
    np.testing.assert_array_equal(pixels, library)


def test_png_bytes_keep_their_stored_frame(tmp_path):
    path = tmp_path / "turned.png"
    write_oriented(path, known_image(), 6)  # a PNG eXIf chunk: not read in the graph
    data = path.read_bytes()
    assert int(ORIENTATION(data)) == 1
    np.testing.assert_array_equal(DECODE(data).numpy(), decode(data))


# ----------------------------------------------------------------------------- hand-made EXIF blocks
def _segment(marker, payload):
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


def _tiff(value, order="<", kind=3, count=1, entries=1, ifd_offset=8, magic=42, mark=None, data_offset=None):
    """A TIFF block whose IFD0 holds the orientation entry (``entries`` announced, one written).

    ``count`` values: ``value`` then 1s; more than 4 bytes of them follow the IFD, at ``data_offset``
    (default: right after it) from the header.
    """
    mark = mark or (b"II" if order == "<" else b"MM")
    values = struct.pack(order + ("H" if kind == 3 else "I") * count, *([value] + [1] * count)[:count])
    ifd_end = 8 + 2 + 12 + 4
    inline = len(values) <= 4
    field = values.ljust(4, b"\0") if inline else struct.pack(order + "I", data_offset or ifd_end)
    entry = struct.pack(order + "HHI", 0x0112, kind, count) + field
    head = mark + struct.pack(order + "HI", magic, ifd_offset) + struct.pack(order + "H", entries) + entry + b"\0" * 4
    return head + (b"" if inline else values)


def _two_entries(first, second):
    """A little-endian TIFF block whose IFD0 holds two orientation entries."""
    entries = [struct.pack("<HHIH", 0x0112, 3, 1, value) + b"\0\0" for value in (first, second)]
    return b"II" + struct.pack("<HIH", 42, 8, 2) + b"".join(entries) + b"\0" * 4


def _jpeg_with(*segments, prefix=b""):
    """A plain JPEG (Pillow's, JFIF APP0) with ``segments`` inserted after its SOI."""
    buffer = io.BytesIO()
    Image.fromarray(known_image()).save(buffer, "JPEG", quality=90)
    plain = buffer.getvalue()
    return plain[:2] + prefix + b"".join(segments) + plain[2:]


def _exif(tiff):
    return _segment(0xE1, b"Exif\0\0" + tiff)


XMP = _segment(0xE1, b"http://ns.adobe.com/xap/1.0/\0<x:xmpmeta/>")

READABLE = {
    "little-endian short": (_jpeg_with(_exif(_tiff(6))), 6),
    "big-endian short": (_jpeg_with(_exif(_tiff(8, order=">"))), 8),
    "big-endian long": (_jpeg_with(_exif(_tiff(3, order=">", kind=4))), 3),
    "after an XMP APP1": (_jpeg_with(XMP, _exif(_tiff(5))), 5),
    "IFD0 announcing more entries than it holds": (_jpeg_with(_exif(_tiff(7, entries=40))), 7),
    "value 9": (_jpeg_with(_exif(_tiff(9))), 1),
    "value 0": (_jpeg_with(_exif(_tiff(0))), 1),
    "two values, the first read": (_jpeg_with(_exif(_tiff(6, count=2))), 6),
    "three values at an offset": (_jpeg_with(_exif(_tiff(8, count=3))), 8),
    "long values at an offset": (_jpeg_with(_exif(_tiff(2, order=">", kind=4, count=2))), 2),
    "values past the segment": (_jpeg_with(_exif(_tiff(8, count=3, data_offset=200))), 1),
    "no values": (_jpeg_with(_exif(_tiff(6, count=0))), 1),
    "two orientation entries, the first read": (_jpeg_with(_exif(_two_entries(3, 6))), 3),
    "byte order XX": (_jpeg_with(_exif(_tiff(6, mark=b"XX"))), 1),
    "not 42": (_jpeg_with(_exif(_tiff(6, magic=43))), 1),
    "IFD0 past the segment": (_jpeg_with(_exif(_tiff(6, ifd_offset=4000))), 1),
    "IFD0 at an odd place": (_jpeg_with(_exif(_tiff(6, ifd_offset=2))), 1),
    "no EXIF": (_jpeg_with(), 1),
}


@pytest.mark.parametrize("case", sorted(READABLE))
def test_hand_made_exif_blocks_read_as_pillow_reads_them(tmp_path, case):
    data, expected = READABLE[case]
    assert int(ORIENTATION(data)) == expected == _pillow_orientation(tmp_path, data)
    assert DECODE(data).shape[:2] == ((80, 48) if expected >= 5 else (48, 80))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xd8",
        b"\xff\xd8\xff\xe1\x00",  # a length cut in half
        _jpeg_with(_exif(_tiff(6)))[:30],  # the EXIF segment longer than the file
        _jpeg_with(_segment(0xE1, b"Exif\0\0II")),  # a TIFF header cut short
        _jpeg_with(_exif(_tiff(6)), prefix=b"\x00"),  # a byte that is no marker before it
        _jpeg_with(_segment(0xE0, b""), _exif(_tiff(6)))[:4] + b"\x00\x01" + b"\0" * 20,  # length 1
        np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes(),
    ],
    ids=["empty", "soi", "cut-length", "cut-segment", "cut-tiff", "no-marker", "length-1", "noise"],
)
def test_malformed_bytes_are_orientation_1_never_an_error(data):
    assert int(ORIENTATION(data)) == 1


def test_fill_bytes_before_a_marker_are_skipped(tmp_path):
    data = _jpeg_with(_exif(_tiff(6)), prefix=b"\xff\xff")
    assert int(ORIENTATION(data)) == 6 == _pillow_orientation(tmp_path, data)


# ----------------------------------------------------------------------------- the served model
def test_the_bytes_signature_detects_in_the_displayed_frame(exported, loaded, tmp_path):
    """One request with a JPEG of each orientation: each image's detections are ``detect``'s on its displayed frame."""
    photos = [_oriented_jpeg(tmp_path, orientation, size=(56, 88))[0] for orientation in range(1, 9)]
    served = loaded.signatures["serving_default"](image_bytes=tf.constant(photos))
    served = {key: value.numpy() for key, value in served.items()}
    for index, (orientation, data) in enumerate(zip(range(1, 9), photos)):
        displayed = orient(decode(data), orientation)
        assert displayed.shape[:2] == (56, 88)  # the known picture, whatever the stored frame
        assert_matches_detect(served, index, exported.detector.detect(displayed))
