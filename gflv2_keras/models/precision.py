"""Precision names of the command line (no TensorFlow import: used while building the CLI)."""

# ``--precision`` names of the command line -> Keras dtype policies of ``from_preset(dtype=...)``.
PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def add_precision_argument(parser):
    """``--precision float32|bfloat16|float16`` (default float32) on an argparse parser."""
    parser.add_argument(
        "--precision",
        choices=sorted(PRECISIONS),
        default="float32",
        help="compute precision of the network (bfloat16 = Keras mixed_bfloat16: fast on CPUs with "
        "AVX512-BF16/AMX and on recent GPUs; decoding and NMS stay float32). Default float32",
    )
