"""Checks of the images users pass to ``predict``/``detect``: clear errors that say what is expected."""

import numpy as np


def is_array(x):
    """A NumPy array or an eager tensor (not a dataset, generator or dict)."""
    return isinstance(x, np.ndarray) or (hasattr(x, "shape") and hasattr(x, "dtype") and hasattr(x, "numpy"))


def pixel_problem(pixels, rank):
    """Why ``pixels`` (a NumPy array) is not uint8 RGB of ``rank`` (3: one image, 4: a batch), or None."""
    expected = "[H, W, 3]" if rank == 3 else "[B, H, W, 3]"
    if rank == 4 and pixels.ndim == 3 and pixels.shape[-1] == 3:
        return f"one image without its batch axis (shape {pixels.shape}): pass image[None] or use detect(image)"
    if rank == 3 and pixels.ndim == 4:
        return f"a batch of shape {pixels.shape}, expected one image {expected}: use predict(images)"
    if pixels.ndim != rank or pixels.shape[-1] != 3:
        channels = f" ({pixels.shape[-1]} channels: convert to RGB)" if pixels.ndim == rank else ""
        return f"expected RGB images of shape {expected}, got shape {pixels.shape}{channels}"
    if pixels.dtype != np.uint8:
        hint = " (convert with np.clip(x, 0, 255).astype('uint8'))"
        if np.issubdtype(pixels.dtype, np.floating) and pixels.size and float(np.nanmax(pixels)) <= 1.0:
            hint = " (these look like [0, 1] floats: use (x * 255).round().astype('uint8'))"
        return f"expected uint8 pixels 0-255, got {pixels.dtype}{hint}"
    return None


def validate_pixels(pixels, rank, name):
    """Check ``pixels`` is uint8 RGB of ``rank`` (3: one ``[H, W, 3]`` image, 4: a ``[B, H, W, 3]`` batch)
    with every axis but the channels >= 1; returns it as a NumPy array, ``ValueError`` naming ``name`` otherwise."""
    pixels = np.asarray(pixels)
    problem = pixel_problem(pixels, rank)
    if not problem and rank == 4 and pixels.shape[0] == 0:
        problem = f"empty batch (shape {pixels.shape}); pass at least one image"
    if not problem and min(pixels.shape[-3:-1]) < 1:
        problem = f"empty image{'s' if rank == 4 else ''} of shape {pixels.shape}"
    if problem:
        raise ValueError(f"{name}: {problem}")
    return pixels


def validate_image(image, name="image"):
    """Check one image is uint8 RGB ``[H, W, 3]``; raise a ``ValueError`` naming it otherwise."""
    return validate_pixels(image, 3, name)


def validate_batch(images, name="predict"):
    """Check a batch is uint8 RGB ``[B, H, W, 3]`` with ``B, H, W >= 1``; ``ValueError`` otherwise."""
    return validate_pixels(images, 4, name)
