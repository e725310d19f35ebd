"""The rows of ``gflv2 benchmark --runtime`` and how ``--runtime`` / ``--precision`` select them.

Plain Python (no NumPy, TensorFlow or runtime import): the command line checks names with it
before anything heavy loads. ``runtime_benchmark`` builds and times the rows.
"""

RUNTIMES = ("tf", "onnxruntime", "openvino", "litert", "torch")
PRECISIONS = ("float32", "bfloat16", "int8", "int8-dynamic")
DEFAULT_PRECISIONS = ("float32", "bfloat16", "int8")
# (runtime, precision) -> the export (format, --weights) the row runs; None: tf / torch build their own.
ROWS = {
    ("tf", "float32"): None,
    ("tf", "bfloat16"): None,
    ("onnxruntime", "float32"): ("onnx", "fp32"),
    ("onnxruntime", "int8"): ("onnx", "int8"),
    ("onnxruntime", "int8-dynamic"): ("onnx", "int8-dynamic"),
    ("openvino", "float32"): ("openvino", "fp32"),
    ("openvino", "bfloat16"): ("openvino", "fp32"),  # the float32 IR, computed in bf16
    ("openvino", "int8"): ("openvino", "int8"),
    ("litert", "float32"): ("litert", "fp32"),
    ("litert", "int8-dynamic"): ("litert", "int8-dynamic"),
    ("torch", "float32"): None,
    ("torch", "bfloat16"): None,
    ("torch", "int8"): None,
}
# One row by name: "openvino-int8", "tf-bfloat16", ... (the int8 names of earlier releases included).
ROW_NAMES = {f"{runtime}-{precision}": (runtime, precision) for runtime, precision in ROWS}
NAMES = RUNTIMES + tuple(ROW_NAMES)


def select_rows(names, precisions=DEFAULT_PRECISIONS):
    """The ``ROWS`` keys of ``--runtime`` ``names`` and ``--precision`` ``precisions``, in ``ROWS`` order.

    A runtime name takes its rows of ``precisions``; a row name (``openvino-int8``) takes that row.
    """
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise ValueError(f"unknown --runtime {', '.join(unknown)}; valid: runtimes {', '.join(RUNTIMES)} (rows of "
                         f"--precision) or one row runtime-precision: {', '.join(ROW_NAMES)}")  # fmt: skip
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise ValueError(f"--precision {', '.join(bad)} has no --runtime rows; valid: {', '.join(PRECISIONS)}")
    chosen = {ROW_NAMES[n] for n in names if n in ROW_NAMES}
    chosen |= {key for key in ROWS if key[0] in names and key[1] in precisions}
    if not chosen:
        raise ValueError(f"no row for --runtime {','.join(names)} in --precision {','.join(precisions)}; rows: "
                         + ", ".join(ROW_NAMES))  # fmt: skip
    return [key for key in ROWS if key in chosen]
