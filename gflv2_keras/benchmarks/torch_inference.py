"""The PyTorch twin's forward pass in PyTorch's fast CPU modes, for the inference benchmarks.

The network is the independent PyTorch GFLv2 of the tests (``tests/torch_reference/gflv2_torch.py``,
source checkout only; ``torch_training.missing_torch_reference`` says what is missing). It takes
normalised NCHW float32 canvases and returns the per-level ``(cls_score, bbox_pred)``: the network
alone, no preprocessing, decoding or NMS. Modes:

* ``network_call(model, x)``: eager float32, or ``bf16=True`` under ``torch.autocast`` bfloat16
  (with ``channels_last`` model and input: PyTorch's best CPU mode on AVX512-BF16 / AMX);
* ``pt2e_int8(model, x)``: static int8 through PT2E (``torch.export``, torchao's
  ``X86InductorQuantizer``: u8 activations, per-channel s8 weights), lowered to oneDNN's int8
  convolutions (weights prepacked) and compiled by Inductor. torchao is imported only there.

PyTorch is imported only by these functions.
"""

import sys

import numpy as np

from gflv2_keras.benchmarks.torch_training import TESTS, missing_torch_reference

TORCHAO_HINT = "pip install 'gflv2-keras[bench]' (or torchao)"


def reference_config(preset):
    """The PyTorch twin's constructor arguments for ``preset`` (name or folder)."""
    from gflv2_keras.models.preset_io import preset_config

    flat = preset_config(preset)[0]  # the flat form the twin is built from
    return {key: flat[key] for key in ("backbone", "num_classes", "fpn_channels", "head")}


def reference_network(config, threads=None, seed=0):
    """The PyTorch twin of ``config`` (random weights from ``seed``, float32, eval mode).

    ``threads``: ``torch.set_num_threads`` (process-wide; default unchanged).

    Raises:
        ValueError: PyTorch or the source checkout's ``tests/torch_reference`` is missing (says which).
    """
    problem = missing_torch_reference()
    if problem:
        raise ValueError(problem)
    if TESTS not in sys.path:
        sys.path.insert(0, TESTS)
    import torch
    from torch_reference import gflv2_torch

    if threads:
        torch.set_num_threads(threads)
    return gflv2_torch.build_reference(config, seed=seed, dtype=torch.float32)


def normal_inputs(batch, height, width, channels_last=True, seed=0):
    """float32 NCHW ``[batch, 3, height, width]`` N(0, 1) canvas (a normalised image's range)."""
    import torch

    x = torch.from_numpy(np.random.default_rng(seed).normal(size=(batch, 3, height, width)).astype(np.float32))
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def network_call(model, inputs, bf16=False):
    """A callable running ``model(inputs)`` (bfloat16 autocast with ``bf16``); it returns one float32
    NumPy score map to block on."""
    import torch

    def call():
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = model(inputs)
        return out[0][0].float().numpy()

    return call


def pt2e_int8(model, inputs, calibration=None):
    """``model`` quantized to static int8 with PT2E + ``X86InductorQuantizer``, compiled by Inductor.

    torchao's recipe for x86: ``torch.export`` (strict: the quantizer's conv + ReLU patterns need
    one source partition per call), ``prepare_pt2e`` / calibration / ``convert_pt2e``, then
    ``lower_pt2e_quantized_to_x86`` (Inductor's int8 fusion passes on the real weights: oneDNN
    ``qconv_pointwise`` with the ReLU or residual add fused, weights prepacked) and ``torch.compile``
    of the rest (GroupNorm, the head's elementwise ops). ``torch.compile(..., freezing)`` of the
    converted model directly fails with torch 2.13 / torchao 0.18 (no fake kernel for
    ``onednn.qconv_prepack``: the int8 weights are not frozen), hence the explicit lowering.

    Args:
        model: float32 eval-mode module (``channels_last`` for oneDNN's preferred layout).
        inputs: the example input; the compiled model is specialised to its shape.
        calibration: inputs whose activation ranges are observed (default ``[inputs]``).

    Returns:
        A callable like ``network_call``'s. The Inductor compilation runs here (one call), so a
        missing compiler or an unsupported pattern fails here, not in the timed rounds.

    Raises:
        ImportError: torchao is not installed (the message says how to install it).
    """
    import torch

    try:
        from torchao.quantization.pt2e.lowering import lower_pt2e_quantized_to_x86
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer,
            get_default_x86_inductor_quantization_config,
        )
    except ImportError as error:
        raise ImportError(f"PyTorch int8 (PT2E) needs torchao ({error}): {TORCHAO_HINT}") from None
    quantizer = X86InductorQuantizer()
    quantizer.set_global(get_default_x86_inductor_quantization_config())
    with torch.no_grad():
        prepared = prepare_pt2e(torch.export.export(model, (inputs,), strict=True).module(), quantizer)
        for batch in calibration if calibration is not None else [inputs]:
            prepared(batch)
        lowered = lower_pt2e_quantized_to_x86(convert_pt2e(prepared), (inputs,))
        compiled = torch.compile(lowered)
        compiled(inputs)

    def call():
        with torch.no_grad():
            out = compiled(inputs)
        return out[0][0].float().numpy()

    return call
