"""Command-line arguments every ``gflv2`` command spells the same way, checked while parsing.

* Image sizes are ``--image-size H W``: height, then width, in pixels, each side
  ``MIN_IMAGE_SIDE..MAX_IMAGE_SIDE`` (32..8192 px), and a multiple of 32 where the size is a
  network canvas (``gflv2 export``, the training benchmark). Older spellings stay accepted as
  aliases (``--input-size`` of ``gflv2 export``, ``--size`` of ``gflv2 benchmark``) and keep
  their attribute name, so a command's body reads the same ``args`` field as before.
* ``--seed N``: an int in ``0..MAX_SEED`` (what NumPy, Python and ``keras.utils.set_random_seed``
  all accept).
* Counts (``positive_int``, ``non_negative_int``), comma lists of known names (``name_list``) and
  paths that must exist (``existing_path``).

A bad value is reported by argparse as one ``PROG: error: argument --FLAG: ...`` line
(``utils.cli.CommandLineParser``) before the command runs, so before TensorFlow loads: nothing
here may import TensorFlow or Keras.
"""

import argparse
import os

MIN_IMAGE_SIDE = 32  # below it the stride-128 pyramid level has no cell (and 7x7 "trains")
MAX_IMAGE_SIDE = 8192  # above it one image is gigabytes of float32 activations (100000 px hangs)
MAX_SEED = 2**32 - 1


def check_image_size(height, width, multiple_of=1):
    """``(height, width)`` as ints, or ``ValueError`` saying which side is out of the rules above."""
    sides = []
    for name, value in (("H", height), ("W", width)):
        try:
            side = int(str(value), 10)
        except ValueError:
            raise ValueError(f"{name} = {value!r} is not a whole number of pixels") from None
        if not MIN_IMAGE_SIDE <= side <= MAX_IMAGE_SIDE:
            raise ValueError(f"{name} = {side} px is outside {MIN_IMAGE_SIDE}..{MAX_IMAGE_SIDE} px")
        if side % multiple_of:
            below, above = side // multiple_of * multiple_of, -(-side // multiple_of) * multiple_of
            nearest = " or ".join(str(v) for v in (below, above) if MIN_IMAGE_SIDE <= v <= MAX_IMAGE_SIDE)
            raise ValueError(f"{name} = {side} px is not a multiple of {multiple_of} (the network's canvas "
                             f"stride); nearest: {nearest}")  # fmt: skip
        sides.append(side)
    return tuple(sides)


class ImageSizeAction(argparse.Action):
    """``--image-size H W``: two ints checked by ``check_image_size`` (``multiple_of``), stored as ``(H, W)``."""

    def __init__(self, option_strings, dest, multiple_of=1, **kwargs):
        kwargs.setdefault("metavar", ("H", "W"))
        super().__init__(option_strings, dest, nargs=2, **kwargs)
        self.multiple_of = multiple_of

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            setattr(namespace, self.dest, check_image_size(*values, multiple_of=self.multiple_of))
        except ValueError as error:
            raise argparse.ArgumentError(self, str(error)) from None


def add_image_size_argument(parser, *aliases, flag="--image-size", dest=None, help="", multiple_of=1, default=None):
    """Adds ``flag H W`` (with the old spellings ``aliases``) to ``parser``; see the module docstring.

    ``dest`` defaults to the first alias's attribute (so the command body keeps reading it), else
    ``flag``'s. The help text gets the convention, the bounds and the aliases appended.
    """
    names = (flag, *aliases)
    dest = dest or (aliases[0] if aliases else flag).lstrip("-").replace("-", "_")
    rules = f"H W in pixels (height first), each {MIN_IMAGE_SIDE}..{MAX_IMAGE_SIDE}"
    if multiple_of > 1:
        rules += f" and a multiple of {multiple_of}"
    if aliases:
        rules += f"; {', '.join(aliases)} is the old spelling, still accepted"
    help_text = f"{help}; {rules}" if help else rules
    return parser.add_argument(*names, dest=dest, action=ImageSizeAction, multiple_of=multiple_of, default=default,
                               help=help_text)  # fmt: skip


def add_seed_argument(parser, help):
    """``--seed N`` (default None: the recipe's / the command's own seed)."""
    return parser.add_argument("--seed", type=seed_value, metavar="N", help=f"{help} (0..{MAX_SEED})")


def seed_value(text):
    """argparse type of ``--seed``: an int in ``0..MAX_SEED``."""
    value = _integer(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{value} is outside 0..{MAX_SEED}")
    return value


def positive_int(text):
    """argparse type: an int >= 1."""
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be 1 or more")
    return value


def non_negative_int(text):
    """argparse type: an int >= 0."""
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


def name_list(*choices, convert=str):
    """argparse type of a comma list (``"a,b"``): each item ``convert``-ed and, with ``choices``, one of them.

    Returns the list in the given order, empty items dropped; an empty list is refused.
    """

    def parse(text):
        items = [item.strip() for item in str(text).split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError("give at least one value (comma list)")
        unknown = [item for item in items if choices and item not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {', '.join(unknown)}; choose from {', '.join(choices)}")
        try:
            return [convert(item) for item in items]
        except (ValueError, argparse.ArgumentTypeError) as error:
            raise argparse.ArgumentTypeError(f"{text!r}: {error}") from None

    parse.__name__ = "comma list"  # argparse names the type in its own messages
    return parse


def existing_path(text):
    """argparse type: a file or folder that exists (returned as given)."""
    if not os.path.exists(text):
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    return text


def existing_dir(text):
    """argparse type: a folder that exists (returned as given)."""
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is not a folder" if os.path.exists(text)
                                         else f"{text} does not exist")  # fmt: skip
    return text


def _integer(text):
    try:
        return int(str(text), 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
