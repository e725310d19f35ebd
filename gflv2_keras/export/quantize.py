"""Static (calibrated) int8 exports: weights AND activations in int8, ranges measured on the user's images.

``gflv2 export --format onnx|openvino --weights int8 --calibration-data PATH`` (``export_portable(...,
weights="int8", calibration=calibration_images(PATH))``). Both start from the float graph every
format traces (``models.detection_graph.detect_batch`` through ``export.graph.inference_function``,
converted to ONNX), so the input stays uint8 RGB ``[batch, H, W, 3]`` and the outputs stay the
float exports' (``detection_boxes`` in pixels of the ``H x W`` input in the export's box
format, scores, classes, ``num_detections``; NMS inside).

What is quantized: the *network* only, i.e. the convolutions of backbone, FPN and head (with
the ReLUs, max-pool and residual additions between them, which the runtimes fuse into the
int8 convolutions). ``network_nodes`` finds them on the graph (ONNX nodes or OpenVINO ops): the
nodes between the first convolution and the last ones, residual and FPN additions being those
of two activations. Everything after the head's last
convolutions stays float32: the sigmoid x quality product, the integral of the side
distributions, the box decoding, top-k and the NMS (quantizing pixel coordinates or the
scores that NMS ranks would move boxes by whole pixels and reorder detections), and so do the
preprocessing (resize, normalisation, padding) and the head's GroupNorms.

Sensitive layers: the head's output convolutions and the DGQP branch can be kept in float32
(``keep_float``, groups of ``SENSITIVE_LAYERS``: fragments of the layer names of ``models.gfl_head``,
matched on node and weight names); by default (``KEEP_FLOAT``) none is, because the measurement
in BENCHMARKS.md ("Calibrated int8") found no AP to win back that way.

* ONNX: ``onnxruntime.quantization.quantize_static``, QDQ format, activations uint8 (asymmetric),
  weights int8 per output channel (U8S8: the VNNI / AVX-512 path of ONNX Runtime's CPU
  kernels), MinMax calibration over the calibration images. ONNX Runtime fuses each
  ``DequantizeLinear -> Conv -> QuantizeLinear`` into an int8 ``QLinearConv`` at load time.
* OpenVINO: ``nncf.quantize`` on the OpenVINO model converted from that ONNX graph (NNCF's
  ``PERFORMANCE`` preset: symmetric int8 weights per channel and activations, with fast bias
  correction), every node outside the network in NNCF's ignored scope. The IR holds
  ``FakeQuantize`` nodes, which the CPU plugin executes as int8 kernels.
"""

from pathlib import Path

from gflv2_keras.export.calibration import export_feeds

# Layer-name fragments of the nodes kept in float32 (tf2onnx names nodes after the TF ops, which
# carry the Keras layer names, ``layers.naming``: ``bbox_head-gfl_cls`` ...). See the module docstring.
SENSITIVE_LAYERS = {
    "head_outputs": ("bbox_head-gfl_cls", "bbox_head-gfl_reg"),
    "dgqp": ("bbox_head-reg_conf",),
}
# The default: none. Measured (BENCHMARKS.md, "Calibrated int8"): on the demo's held-out images
# every layer in int8 costs ONNX Runtime 0.0010 AP, and keeping the head's output convolutions and
# the DGQP branch in float32 moves AP by 0.0005 (ONNX) / 0.0004 (OpenVINO): not worth their time.
KEEP_FLOAT = ()
# Op types quantized inside the network (everything else there stays float), per graph kind.
ONNX_QUANTIZED_OPS = ("Conv", "Relu", "MaxPool", "Add")
OPENVINO_QUANTIZED_OPS = ("Convolution", "GroupConvolution", "MaxPool", "Add")


def float_layer_fragments(keep_float):
    """The node-name fragments of the ``SENSITIVE_LAYERS`` groups named in ``keep_float``."""
    unknown = [g for g in keep_float if g not in SENSITIVE_LAYERS]
    if unknown:
        raise ValueError(f"unknown layer groups {unknown}; valid: {', '.join(SENSITIVE_LAYERS)}")
    return tuple(fragment for group in keep_float for fragment in SENSITIVE_LAYERS[group])


def network_nodes(nodes, convolutions):
    """Names of the nodes between the network's first and last convolutions (see the module docstring).

    Args:
        nodes: ``[(name, op_type, producer_names)]`` of a graph in topological order
            (``producer_names``: the nodes whose outputs it reads; constants and graph inputs
            may be among them).
        convolutions: the op types of convolutions (``{"Conv"}`` in ONNX).

    A node is in the network when it is a convolution, or when a convolution consumes (directly
    or through other nodes) one of its outputs *and* it consumes one of a convolution's: the
    backbone, FPN and head from the first convolution up to the last ones. The preprocessing
    before the first convolution and the decoding, top-k and NMS after the last ones are not.
    """
    inputs_of = {name: producers for name, _, producers in nodes}
    convs = {name for name, op_type, _ in nodes if op_type in convolutions}
    upstream, stack = set(), list(convs)
    while stack:
        name = stack.pop()
        if name in upstream or name not in inputs_of:
            continue
        upstream.add(name)
        stack.extend(inputs_of[name])
    downstream = set(convs)
    for name, _, producers in nodes:  # topological order: producers come first
        if any(p in downstream for p in producers):
            downstream.add(name)
    return upstream & downstream


def select_quantized(nodes, convolutions, quantizable, constants, keep_float=KEEP_FLOAT):
    """``(quantized, kept_float)``: names of the network's nodes to quantize and of those left float.

    ``quantizable`` op types of the network (``network_nodes``) are quantized, except additions
    with a constant operand (a bias, a normalisation's shift: only residual and FPN sums of two
    activations are int8) and the nodes of the ``keep_float`` groups (``SENSITIVE_LAYERS``:
    matched on the node's name or the names of its inputs, since converters rename fused nodes
    but keep the weights' names), which are ``kept_float``. ``constants``: names of the constant
    producers (ONNX initializers and ``Constant`` nodes, OpenVINO ``Constant`` ops).
    """
    fragments = float_layer_fragments(keep_float)
    network = network_nodes(nodes, convolutions)
    quantized, kept = [], []
    for name, op_type, producers in nodes:
        if name not in network or op_type not in quantizable:
            continue
        if op_type == "Add" and any(p in constants for p in producers):
            continue
        names = [name, *producers]
        (kept if any(f in n for f in fragments for n in names) else quantized).append(name)
    return quantized, kept


def onnx_nodes(graph):
    """``(nodes, constants)`` of an ONNX graph for ``select_quantized`` (``Loop``/``If`` bodies not entered)."""
    producer = {output: node.name for node in graph.node for output in node.output}
    constants = {init.name for init in graph.initializer}
    constants |= {node.name for node in graph.node if node.op_type == "Constant"}
    for init in graph.initializer:
        producer.setdefault(init.name, init.name)
    nodes = [(node.name, node.op_type, [producer[i] for i in node.input if i in producer]) for node in graph.node]
    return nodes, constants


def openvino_nodes(model):
    """``(nodes, constants)`` of an ``openvino.Model`` for ``select_quantized`` (by friendly name)."""
    nodes, constants = [], set()
    for op in model.get_ordered_ops():
        name = op.get_friendly_name()
        if op.get_type_name() == "Constant":
            constants.add(name)
        producers = [port.get_source_output().get_node().get_friendly_name() for port in op.inputs()]
        nodes.append((name, op.get_type_name(), producers))
    return nodes, constants


def write_calibrated(fmt, function, folder, calibration, input_size, batch_size=1, keep_float=None):
    """Write the static int8 ``fmt`` (``onnx`` | ``openvino``) model of ``function`` into ``folder``.

    Args:
        function: the export's ``tf.function`` (``export.graph.inference_function``).
        folder: the export's (staging) folder; ``model.onnx`` or ``model.xml``/``.bin`` are written.
        calibration: ``export.calibration.CalibrationImages``.
        input_size: ``(H, W)`` of the export's input; ``batch_size`` its fixed batch.
        keep_float: ``SENSITIVE_LAYERS`` groups left in float32 (``None``: ``KEEP_FLOAT``).

    Returns:
        ``dict`` for ``export.json``'s ``"quantization"``: method, tool, what stays float, the
        calibration images used.
    """
    from gflv2_keras.export.formats import MODEL_FILES, onnx_proto, require

    onnx = require("onnx", fmt)
    require("onnxruntime.quantization" if fmt == "onnx" else "nncf", fmt)
    keep_float = KEEP_FLOAT if keep_float is None else tuple(keep_float)
    float_path = Path(folder) / "float32_for_calibration.onnx"
    onnx.save(onnx_proto(function), str(float_path))
    try:
        quantize = quantize_onnx if fmt == "onnx" else quantize_openvino
        size = input_size if isinstance(input_size, str) else tuple(input_size)
        info = quantize(float_path, Path(folder) / MODEL_FILES[fmt], calibration, size, batch_size, keep_float)
    finally:
        float_path.unlink()
    return {**info, "calibration_images": len(calibration), "calibration_data": calibration.source,
            "calibration_layout": calibration.layout}  # fmt: skip


class _Feeds:
    """Re-iterable export inputs ``{name: array}`` of a calibration set (NNCF iterates more than once)."""

    def __init__(self, calibration, input_size, batch_size):
        self.calibration, self.input_size, self.batch_size = calibration, input_size, batch_size

    def __iter__(self):
        return export_feeds(self.calibration, self.input_size, batch_size=self.batch_size)

    def __len__(self):
        if isinstance(self.input_size, str):  # per-image canvas: one image per batch
            return len(self.calibration)
        return -(-len(self.calibration) // self.batch_size)


def quantize_onnx(float_path, output_path, calibration, input_size, batch_size=1, keep_float=KEEP_FLOAT):
    """Static QDQ int8 ONNX model ``output_path`` from the float ``float_path`` (see the module docstring).

    Returns:
        ``dict`` for ``export.json``'s ``"quantization"``.
    """
    import logging

    import onnx
    import onnxruntime
    from onnxruntime import quantization

    class Reader(quantization.CalibrationDataReader):
        def __init__(self):
            self.feeds = iter(_Feeds(calibration, input_size, batch_size))

        def get_next(self):
            return next(self.feeds, None)

    nodes, constants = onnx_nodes(onnx.load(str(float_path)).graph)
    quantized, kept = select_quantized(nodes, {"Conv"}, ONNX_QUANTIZED_OPS, constants, keep_float)
    root_logger = logging.getLogger()
    previous = root_logger.level
    # The quantizer logs a WARNING per tensor it cannot range (the int64 tensors of the NMS) and
    # suggests its shape pre-processing (the converted graph already has its shapes): not for users.
    root_logger.setLevel(logging.ERROR)
    try:
        quantization.quantize_static(
            str(float_path),
            str(output_path),
            Reader(),
            quant_format=quantization.QuantFormat.QDQ,
            op_types_to_quantize=list(ONNX_QUANTIZED_OPS),  # also: only their tensors are calibrated
            activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8,
            per_channel=True,
            nodes_to_quantize=quantized,
            calibrate_method=quantization.CalibrationMethod.MinMax,
            # The MinMax calibrator's augmented model outputs each tensor's ReduceMin / ReduceMax
            # (scalars), so memory does not grow with the image size.
            extra_options={"CalibTensorRangeSymmetric": False},
            calibration_providers=["CPUExecutionProvider"],
        )
    finally:
        root_logger.setLevel(previous)
    return {
        "method": "static",
        "activations": "uint8 (asymmetric, per tensor)",
        "weights": "int8 (symmetric, per output channel)",
        "tool": f"onnxruntime {onnxruntime.__version__} quantize_static (QDQ, MinMax)",
        "quantized_nodes": len(quantized),
        "float_layers": sorted({f for f in float_layer_fragments(keep_float)}),
        "float_nodes_in_network": len(kept),
    }


def quantize_openvino(float_onnx_path, output_xml, calibration, input_size, batch_size=1, keep_float=KEEP_FLOAT):
    """Static int8 OpenVINO IR ``output_xml`` (+ ``.bin``) from the float ONNX graph, with NNCF.

    Returns:
        ``dict`` for ``export.json``'s ``"quantization"``.
    """
    import logging

    import nncf
    import openvino as ov
    from nncf.common.logging import nncf_logger

    model = ov.convert_model(str(float_onnx_path))
    nodes, constants = openvino_nodes(model)
    quantized_ops, kept = select_quantized(nodes, {"Convolution", "GroupConvolution"}, OPENVINO_QUANTIZED_OPS,
                                           constants, keep_float)  # fmt: skip
    chosen = set(quantized_ops)
    # NNCF quantizes the inputs of the ops it is allowed to: all but the chosen ones are ignored.
    ignored = [name for name, _, _ in nodes if name not in chosen]
    feeds = _Feeds(calibration, input_size, batch_size)
    previous = nncf_logger.level
    nncf.set_log_level(logging.WARNING)  # NNCF lists every op it leaves alone at INFO: hundreds of lines
    try:
        quantized = nncf.quantize(
            model,
            nncf.Dataset(feeds),
            preset=nncf.QuantizationPreset.PERFORMANCE,
            target_device=nncf.TargetDevice.CPU,
            subset_size=len(feeds),
            fast_bias_correction=True,
            ignored_scope=nncf.IgnoredScope(names=ignored, validate=False),
        )
    finally:
        nncf.set_log_level(previous)
    ov.save_model(quantized, str(output_xml), compress_to_fp16=False)
    fake_quantize = sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ordered_ops())
    return {
        "method": "static",
        "activations": "int8 (per tensor)",
        "weights": "int8 (symmetric, per output channel)",
        "tool": f"nncf {nncf.__version__} quantize (PERFORMANCE preset, fast bias correction), openvino "
        f"{ov.__version__}",
        "fake_quantize_nodes": fake_quantize,
        "quantized_nodes": len(quantized_ops),
        "float_layers": sorted(set(float_layer_fragments(keep_float))),
        "float_nodes_in_network": len(kept),
    }
