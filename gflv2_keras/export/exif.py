"""EXIF orientation of encoded JPEG bytes inside a TensorFlow graph (the SavedModel's bytes signatures).

TensorFlow where it is the point: a served model gets encoded images and runs without this
package, so the orientation is read with graph ops (``tf.io.decode_raw``, gathers, a
``tf.while_loop``) and applied with transposes and reversals after ``tf.io.decode_image``. The
displayed frame is the one of the library's reader (``data.image_io``: ``read_header`` and
``orient``): the same EXIF ``Orientation`` tag (0x0112, values 1-8), the same rotations.

What is read (JPEG only; PNG, BMP and GIF bytes get orientation 1):

* the markers after SOI (``FF D8``), segment by segment (``FF``, marker, big-endian length that
  counts itself), up to the first APP1 (``FF E1``) segment that starts with ``Exif\\0\\0``; the
  scan stops at SOS / EOI, at a byte that is no marker, or after ``MAX_SEGMENTS`` segments;
* in it, the TIFF header (``II`` little-endian or ``MM`` big-endian, the number 42, the offset
  of IFD0 from the header's start) and IFD0's 12-byte entries inside the segment;
* the first entry tagged 0x0112 (as Pillow) of type SHORT or LONG: its first value (Pillow
  reads the tag as one value), in the entry or, for more than 4 bytes of values, at the offset it
  holds (all of them inside the segment).

A value outside 1-8, a missing tag and any malformed or truncated structure give orientation 1
(the stored frame): reading never raises. Not read, unlike Pillow in the library's reader: an
orientation in a PNG ``eXIf`` chunk or in XMP metadata only.
"""

import tensorflow as tf

ORIENTATION_TAG = 0x0112
MAX_SEGMENTS = 64  # a JPEG header holds a handful of segments before its EXIF block
_EXIF_ID = (0x45, 0x78, 0x69, 0x66, 0x00, 0x00)  # b"Exif\0\0"
_SHORT, _LONG = 3, 4  # TIFF field types


class _Bytes:
    """Bounds-safe reads of one encoded image's bytes (int64 positions; reads past the end give 0)."""

    def __init__(self, encoded):
        data = tf.cast(tf.io.decode_raw(encoded, tf.uint8), tf.int64)
        self.size = tf.size(data, out_type=tf.int64)
        self.data = tf.concat([data, tf.zeros([1], tf.int64)], 0)  # index ``size``: the 0 every bad read gets

    def at(self, i):
        i = tf.convert_to_tensor(i, tf.int64)
        inside = (i >= 0) & (i < self.size)
        return tf.gather(self.data, tf.where(inside, i, self.size))

    def u16(self, i, little):
        a, b = self.at(i), self.at(i + 1)
        return tf.where(little, a + 256 * b, 256 * a + b)

    def u32(self, i, little):
        b = [self.at(i + k) for k in range(4)]
        return tf.where(little, b[0] + 256 * (b[1] + 256 * (b[2] + 256 * b[3])),
                        b[3] + 256 * (b[2] + 256 * (b[1] + 256 * b[0])))  # fmt: skip


def _exif_segment(raw):
    """``(tiff_start, segment_end)`` of the first ``Exif\\0\\0`` APP1 segment, ``(-1, -1)`` if none."""

    def scanning(step, pos, start, end):
        return (step < MAX_SEGMENTS) & (pos >= 0) & (start < 0)

    def next_segment(step, pos, start, end):
        marker = raw.at(pos + 1)
        is_marker = (raw.at(pos) == 0xFF) & (pos + 2 <= raw.size)
        fill = marker == 0xFF  # padding before a marker
        standalone = (marker == 0x01) | ((marker >= 0xD0) & (marker <= 0xD7))  # TEM, RSTn: no length
        stop = ~is_marker | (marker == 0xDA) | (marker == 0xD9)  # not a marker, SOS, EOI
        length = raw.u16(pos + 2, little=False)  # JPEG lengths are big-endian
        segment_end = pos + 2 + length
        bad_length = (length < 2) | (segment_end > raw.size)
        exif = (marker == 0xE1) & (length >= 2 + 6 + 8) & ~bad_length
        for k, value in enumerate(_EXIF_ID):
            exif &= raw.at(pos + 4 + k) == value
        found = ~stop & ~fill & ~standalone & exif
        next_pos = tf.where(fill, pos + 1, tf.where(standalone, pos + 2, segment_end))
        next_pos = tf.where(stop | (~fill & ~standalone & bad_length), tf.constant(-1, tf.int64), next_pos)
        start = tf.where(found, pos + 10, start)
        end = tf.where(found, segment_end, end)
        return step + 1, next_pos, start, end

    is_jpeg = (raw.at(0) == 0xFF) & (raw.at(1) == 0xD8)
    first = tf.where(is_jpeg, tf.constant(2, tf.int64), tf.constant(-1, tf.int64))
    minus_one = tf.constant(-1, tf.int64)
    _, _, start, end = tf.while_loop(scanning, next_segment, (tf.constant(0, tf.int64), first, minus_one, minus_one))
    return start, end


def _orientation_in_tiff(raw, start, end):
    """The IFD0 orientation of the TIFF block ``[start, end)`` of ``raw``; 1 when absent or malformed."""
    little = (raw.at(start) == 0x49) & (raw.at(start + 1) == 0x49)  # "II"
    big = (raw.at(start) == 0x4D) & (raw.at(start + 1) == 0x4D)  # "MM"
    valid = (start >= 0) & (little | big) & (raw.u16(start + 2, little) == 42) & (start + 8 <= end)
    ifd = start + raw.u32(start + 4, little)
    valid &= ifd + 2 <= end
    complete = tf.maximum((end - ifd - 2) // 12, 0)  # the entries inside the segment
    count = tf.where(valid, tf.minimum(raw.u16(ifd, little), complete), tf.constant(0, tf.int64))
    entry = ifd + 2 + 12 * tf.range(count, dtype=tf.int64)
    kind, values = raw.u16(entry + 2, little), raw.u32(entry + 4, little)
    size = tf.where(kind == _SHORT, tf.constant(2, tf.int64), tf.constant(4, tf.int64)) * values
    # Up to 4 bytes of values sit in the entry, more at an offset from the TIFF header.
    field = tf.where(size <= 4, entry + 8, start + raw.u32(entry + 8, little))
    value = tf.where(kind == _SHORT, raw.u16(field, little), raw.u32(field, little))  # the first value
    match = (raw.u16(entry, little) == ORIENTATION_TAG) & ((kind == _SHORT) | (kind == _LONG))
    match &= (values >= 1) & (field + size <= end)
    index = tf.range(count, dtype=tf.int64)
    first = tf.reduce_min(tf.concat([tf.where(match, index, tf.fill([count], count)), [count]], 0))
    found = tf.gather(tf.concat([value, tf.constant([1], tf.int64)], 0), first)  # index ``count``: none, 1
    return tf.where((found >= 1) & (found <= 8), found, tf.constant(1, tf.int64))


def jpeg_orientation(encoded):
    """The EXIF orientation of encoded image bytes, int32 scalar 1-8 (module docstring).

    Args:
        encoded: ``tf.string`` scalar, the bytes of one encoded image (any format).

    Returns:
        int32 scalar: the tag's value for a JPEG with a readable one, else 1.
    """
    raw = _Bytes(encoded)
    start, end = _exif_segment(raw)
    return tf.cast(_orientation_in_tiff(raw, start, end), tf.int32)


def orient_image(image, orientation):
    """``image`` ``[H, W, C]`` in the stored frame → the displayed frame of EXIF ``orientation``.

    The graph form of ``data.image_io.orient``: 5-8 transpose first (``[W, H, C]``); then 2, 3,
    6, 7 reverse the columns and 3, 4, 7, 8 the rows. 1 and other values leave it as it is.
    """
    o = tf.convert_to_tensor(orientation, tf.int32)
    image = tf.cond(o >= 5, lambda: tf.transpose(image, [1, 0, 2]), lambda: image)
    columns = tf.reduce_any(tf.equal(o, [2, 3, 6, 7]))
    image = tf.cond(columns, lambda: tf.reverse(image, [1]), lambda: image)
    rows = tf.reduce_any(tf.equal(o, [3, 4, 7, 8]))
    return tf.cond(rows, lambda: tf.reverse(image, [0]), lambda: image)


def decode_displayed(encoded):
    """Encoded JPEG / PNG / BMP / GIF bytes → uint8 RGB ``[H, W, 3]`` in the displayed frame.

    JPEG with the accurate integer DCT (the library reader's pixels exactly), other formats with
    ``tf.io.decode_image`` (GIF: first frame; an undecodable image is an ``InvalidArgumentError``
    of the graph), then the JPEG's EXIF orientation (``jpeg_orientation``, ``orient_image``).
    """
    image = tf.cond(
        tf.io.is_jpeg(encoded),
        # The accurate integer DCT: the pixels of Pillow's decode, the library's reader (data/image_io.py).
        lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False),
    )
    return orient_image(image, jpeg_orientation(encoded))
