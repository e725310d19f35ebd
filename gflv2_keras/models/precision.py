"""Precision names of the command line (no TensorFlow import: used while building the CLI)."""

# ``--precision`` names of the command line -> Keras dtype policies of ``from_preset(dtype=...)``.
PRECISIONS = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}

