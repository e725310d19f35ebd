"""One size convention (``--image-size H W``, old spellings kept) and checked values in every command."""

import argparse

import pytest

from gflv2_keras.cli import build_parser
from gflv2_keras.utils.arguments import MAX_IMAGE_SIDE, MIN_IMAGE_SIDE, check_image_size, name_list, seed_value


def _parse(*argv):
    return build_parser(argv[0]).parse_args(list(argv))


@pytest.mark.parametrize("height, width", [(MIN_IMAGE_SIDE, MAX_IMAGE_SIDE), (800, 1333), (96, 128)])
def test_sizes_inside_the_bounds_are_kept_in_h_w_order(height, width):
    assert check_image_size(str(height), str(width)) == (height, width)


@pytest.mark.parametrize("height, width, message", [
    (MIN_IMAGE_SIDE - 1, 64, "H = 31 px is outside 32..8192 px"),
    (64, MAX_IMAGE_SIDE + 1, "W = 8193 px is outside"),
    (0, 64, "H = 0 px"),
    (-5, 64, "H = -5 px"),
    ("1.5", 64, "H = '1.5' is not a whole number"),
])  # fmt: skip
def test_sizes_outside_the_bounds_are_refused(height, width, message):
    with pytest.raises(ValueError, match=message):
        check_image_size(height, width)


def test_a_canvas_must_be_a_multiple_of_32_and_the_message_names_the_nearest():
    assert check_image_size(800, 1344, multiple_of=32) == (800, 1344)
    with pytest.raises(ValueError, match=r"W = 1333 px is not a multiple of 32 .*nearest: 1312 or 1344"):
        check_image_size(800, 1333, multiple_of=32)
    with pytest.raises(ValueError, match=r"H = 40 px .*nearest: 32 or 64$"):
        check_image_size(40, 64, multiple_of=32)


def test_new_and_old_spellings_give_the_same_attribute():
    for flag in ("--image-size", "--input-size"):
        args = _parse("export", "--preset", "p", "--output", "o", "--format", "onnx", flag, "320", "480")
        assert args.input_size == (320, 480)  # the attribute export's body reads
    for flag in ("--image-size", "--size"):
        assert _parse("benchmark", flag, "600", "800").size == (600, 800)
    assert _parse("benchmark").size == (800, 1216) and _parse("benchmark").train_size == (512, 512)
    args = _parse("train", "--preset", "p", "--data", "d", "--image-size", "1333", "800", "--seed", "7")
    assert args.image_size == (1333, 800) and args.seed == 7


def test_the_training_scale_is_order_free_as_the_help_says():
    """``--image-size 800 1333`` and ``1333 800`` resize every image and pick the canvases identically."""
    from gflv2_keras.data.canvas import training_canvases
    from gflv2_keras.models.preprocessing import rescale_size

    for height, width in ((600, 900), (900, 600), (480, 480), (200, 1400)):
        a = [int(v) for v in rescale_size(height, width, (800, 1333))]
        b = [int(v) for v in rescale_size(height, width, (1333, 800))]
        assert a == b, (height, width)
    assert training_canvases([800, 1333]) == training_canvases([1333, 800])


def test_benchmark_lists_are_parsed_and_checked_before_running():
    args = _parse("benchmark", "--precision", "float32", "--batches", "1,2,4", "--train-modes", "xla",
                  "--backends", "jax,torch", "--runtime", "tf,litert")  # fmt: skip
    assert args.precisions == ["float32"] and args.batches == [1, 2, 4] and args.train_modes == ["xla"]
    assert args.backends == ["jax", "torch"] and args.runtime == "tf,litert"
    # --runtime alone races every runtime; a runtime-precision name is one row; int8 is a --runtime precision
    assert _parse("benchmark", "--runtime").runtime == "tf,onnxruntime,openvino,litert,torch"
    args = _parse("benchmark", "--runtime", "openvino-int8,torch", "--precision", "float32,int8")
    assert args.runtime == "openvino-int8,torch" and args.precisions == ["float32", "int8"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown float64"):
        name_list("float32", "bfloat16")("float32,float64")
    with pytest.raises(argparse.ArgumentTypeError, match="at least one"):
        name_list()(",")


def test_seeds_are_the_range_every_generator_takes():
    assert seed_value("0") == 0 and seed_value(str(2**32 - 1)) == 2**32 - 1
    for bad in ("-1", str(2**32), "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            seed_value(bad)
