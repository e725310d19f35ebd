"""Matmul floors per precision, from every installed library that has a fast kernel for it.

A floor is the rate of one ``size x size x size`` matmul (``2 size^3`` operations) in the CPU's
best kernels of a precision: what a convolution network of that precision could reach at most,
as a rate of its FLOPs. Each library is asked for what it runs fastest, and the fastest library
per precision is the floor (``fastest``):

=========  =================================  ==============================================
precision  library                            how
=========  =================================  ==============================================
float32    OpenVINO (oneDNN), PyTorch,        ``MatMul`` with ``INFERENCE_PRECISION_HINT`` f32;
           TensorFlow                         ``torch.matmul``; ``tf.linalg.matmul``
bfloat16   OpenVINO, PyTorch, TensorFlow      the same float32 ``MatMul`` with the hint bf16;
                                              ``torch.matmul`` / ``tf.linalg.matmul`` of bf16
int8       OpenVINO, PyTorch                  ``FakeQuantize`` on both operands, which the
                                              plugin runs as a u8 x s8 GEMM (VNNI / AMX);
                                              ``torch.ao.nn.quantized.Linear`` (u8 x s8, the
                                              ``x86`` quantized engine: fbgemm / oneDNN)
=========  =================================  ==============================================

``floor_calls`` returns the calls, to be timed in the same interleaved rounds as what they are
the floor of (the load of a shared machine then hits both alike); ``floor_rates`` turns their
times into rates. A library that is not installed is left out.
"""

import warnings

import numpy as np

MATMUL_SIZE = 2048
FLOOR_PRECISIONS = ("float32", "bfloat16", "int8")


def floor_calls(precisions=FLOOR_PRECISIONS, threads=None, size=MATMUL_SIZE):
    """``{(precision, library): call}``: one ``size^3`` matmul per call (``call()`` returns ``None``).

    ``precisions``: the floors wanted (of ``FLOOR_PRECISIONS``); ``threads``: intra-op threads of
    OpenVINO and PyTorch (TensorFlow keeps its process setting).
    """
    unknown = [p for p in precisions if p not in FLOOR_PRECISIONS]
    if unknown:
        raise ValueError(f"no matmul floor for {', '.join(unknown)}; valid: {', '.join(FLOOR_PRECISIONS)}")
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size)).astype(np.float32) for _ in range(2))
    calls = {}
    for library, make in (("openvino", _openvino_calls), ("torch", _torch_calls), ("tensorflow", _tensorflow_calls)):
        try:
            found = make(precisions, threads, a, b)
        except ImportError:
            continue
        calls.update({(precision, library): call for precision, call in found.items()})
    return calls


def floor_rates(seconds, size=MATMUL_SIZE):
    """``{precision: {library: operations per second}}`` from ``{(precision, library): seconds}``."""
    rates = {}
    for (precision, library), value in seconds.items():
        rates.setdefault(precision, {})[library] = 2.0 * size**3 / value
    return rates


def fastest(rates):
    """``{precision: (library, rate)}``: the fastest library of each precision of ``floor_rates``."""
    return {precision: max(by_library.items(), key=lambda item: item[1]) for precision, by_library in rates.items()}


def _no_result(fn):
    """``fn`` returning ``None``: every call here is synchronous, so there is nothing to block on."""

    def call():
        fn()

    return call


def _openvino_calls(precisions, threads, a, b):
    import openvino as ov
    import openvino.opset13 as opset

    size = a.shape[0]
    weights = opset.constant(b)
    calls = {}
    for precision in precisions:
        x = opset.parameter([size, size], np.float32, name="a")
        if precision == "int8":
            low, high = opset.constant(np.float32(-4.0)), opset.constant(np.float32(4.0))
            product = opset.matmul(opset.fake_quantize(x, low, high, low, high, 256),
                                   opset.fake_quantize(weights, low, high, low, high, 255), False, False)  # fmt: skip
        else:
            product = opset.matmul(x, weights, False, False)
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bfloat16" else "f32"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        request = ov.Core().compile_model(ov.Model([product], [x]), "CPU", config).create_infer_request()
        calls[precision] = _no_result(lambda request=request: request.infer({0: a}))
    return calls


def _torch_calls(precisions, threads, a, b):
    import torch

    if threads:
        torch.set_num_threads(threads)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    calls = {}
    if "float32" in precisions:
        calls["float32"] = _no_result(lambda: torch.matmul(ta, tb))
    if "bfloat16" in precisions:
        ha, hb = ta.bfloat16(), tb.bfloat16()
        calls["bfloat16"] = _no_result(lambda: torch.matmul(ha, hb))
    if "int8" in precisions:
        try:
            calls["int8"] = _torch_int8_call(torch, ta, tb)
        except (AttributeError, RuntimeError):  # quantized tensors gone from this PyTorch: no int8 floor from it
            pass
    return calls


def _torch_int8_call(torch, a, b):
    """``a @ b.T`` as a static-int8 ``torch.ao.nn.quantized.Linear`` (u8 activations, s8 weights)."""
    size = a.shape[0]
    with warnings.catch_warnings():  # torch 2.13 announces the quantized tensor types' removal on each creation
        warnings.simplefilter("ignore", UserWarning)
        layer = torch.ao.nn.quantized.Linear(size, size, bias_=False)
        layer.set_weight_bias(torch.quantize_per_tensor(b, 4.0 / 127, 0, torch.qint8), None)
        qa = torch.quantize_per_tensor(a, 8.0 / 255, 128, torch.quint8)
    layer.scale, layer.zero_point = float(size) / 16, 128  # output range: only its rate matters
    return _no_result(lambda: layer(qa))


def _tensorflow_calls(precisions, threads, a, b):
    import tensorflow as tf

    matmul = tf.function(lambda x, y: tf.linalg.matmul(x, y)[0, 0])  # one value fetched: the product is done
    calls = {}
    for precision in ("float32", "bfloat16"):
        if precision in precisions:
            x, y = (tf.cast(tf.constant(v), precision) for v in (a, b))
            calls[precision] = _no_result(lambda x=x, y=y: matmul(x, y).numpy())
    return calls
