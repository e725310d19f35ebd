"""The compiled inference path of ``GFLV2ObjectDetector`` (``detect``, ``predict``, evaluation).

``inference_runner(detector)`` picks it per Keras backend: ``InferenceFunctions`` on TensorFlow
(below), ``PortableInference`` on JAX (one ``jax.jit`` per canvas) and PyTorch (eager, no
autograd). Both run the same ``detect_batch``; only the TensorFlow one adds the fused GroupNorm
kernel and the XLA choice, which are TensorFlow functions.

TensorFlow: one ``tf.function`` per (box format, outputs) for every image size: preprocessing
(resize, normalise, zero padding to /32 computed in the graph), the network, per-level top-k
candidate decoding, NMS and the format conversion all run inside it, so a call is one graph
execution with no host round trip, and a folder of photos of mixed sizes pays one compilation
(``gflv2 benchmark --mixed-sizes``; BENCHMARKS.md). The exception is a network under XLA, which
compiles one program per static shape: then there is one function per network canvas
(``preprocessing.canvas_size``), bounded by ``preprocessing.max_canvases`` (85 for 1333 x 800).
The canvas is always the official per-image one: no size buckets, whose extra padding would
change the head's GroupNorm statistics.

Inside that function the network (backbone, FPN, head) runs

* with every frozen BatchNorm folded into its convolution (``folded_norms``; exact up to
  rounding, weights untouched),
* with each GroupNorm + ReLU of the head as one small XLA kernel (``fused_group_norms``: the
  oneDNN graph runs GroupNorm as five separate passes; fused it is 2x faster and, with its
  float32 two-level reduction, closer to a float64 reference), and
* under XLA (a nested ``jit_compile=True`` function) where XLA is faster: ``XLA_DEFAULTS``,
  chosen by measurement (``BENCHMARKS.md``, Inference at the hardware limit). NMS has no XLA kernel and stays in the
  plain graph; decoding is float32 whatever the precision.
"""

import contextlib
import functools

import keras
from keras import ops

# (device kind, compute dtype) -> network under XLA. Measured with ``gflv2 benchmark``
# (BENCHMARKS.md): on the AVX-512/AMX CPUs XLA does not use the bf16 dot units and is slower in
# bfloat16; in float32 the oneDNN graph and XLA are within noise, and the oneDNN graph keeps the
# DCN custom op, so the plain graph is the CPU default. On GPUs XLA fuses GroupNorm, the head
# and the integral, so it is on.
XLA_DEFAULTS = {
    ("cpu", "float32"): False,
    ("cpu", "bfloat16"): False,
    ("cpu", "float16"): False,
    ("gpu", "float32"): True,
    ("gpu", "bfloat16"): True,
    ("gpu", "float16"): True,
}


def device_kind():
    """``"gpu"`` when TensorFlow sees a GPU, else ``"cpu"``."""
    import tensorflow as tf

    return "gpu" if tf.config.list_logical_devices("GPU") else "cpu"


def validate_jit(jit):
    """``jit`` if it is a valid ``inference_jit`` setting (``"auto"``, True, False), else ``ValueError``."""
    if jit != "auto" and not isinstance(jit, bool):
        raise ValueError(f"inference_jit must be 'auto', True or False, got {jit!r}")
    return jit


def resolve_jit(jit, compute_dtype):
    """``True``/``False`` for the ``jit`` setting ``"auto"`` | ``True`` | ``False``."""
    if validate_jit(jit) == "auto":
        return XLA_DEFAULTS.get((device_kind(), str(compute_dtype)), False)
    return jit


@contextlib.contextmanager
def folded_norms(detector):
    """Fold the detector's frozen BatchNorms into their convolutions for the duration.

    Meant around graph tracing: the traced graph keeps the folded form, the model returns to
    its previous state afterwards (already folded pairs, from ``fuse_for_inference``, stay).
    """
    pairs = [
        (conv, norm)
        for conv, norm in foldable_pairs(detector)
        if conv.folded_norm is None
    ]
    try:
        for conv, norm in pairs:
            conv.fold_norm(norm)
        yield len(pairs)
    finally:
        for conv, _ in pairs:
            conv.fold_norm(None)


@contextlib.contextmanager
def fused_group_norms(detector):
    """Run the head's GroupNorm + ReLU pairs through ``group_norm_relu`` for the duration.

    Meant around the tracing of in-process inference (``InferenceFunctions``); exports keep the
    portable layers (an XLA kernel would not convert to ONNX, LiteRT or OpenVINO).
    """
    head = detector.head
    previous = getattr(head, "norm_relu", None)
    object.__setattr__(head, "norm_relu", group_norm_relu)
    try:
        yield
    finally:
        object.__setattr__(head, "norm_relu", previous)


def group_norm_relu(norm, x):
    """``relu(norm(x))`` for a ``keras.layers.GroupNormalization`` ``norm`` on NHWC ``x``, fused.

    Statistics and the affine are float32 whatever ``x``'s dtype; the result has ``x``'s dtype.
    """
    if not (norm.built and norm.center and norm.scale) or norm.axis not in (-1, 3):
        return ops.relu(norm(x))
    import tensorflow as tf

    gamma, beta = (tf.convert_to_tensor(v) for v in (norm.gamma, norm.beta))  # read here: tensors trace
    return _xla_group_norm_relu(x, gamma, beta, groups=norm.groups, epsilon=norm.epsilon)


def _xla_group_norm_relu(x, gamma, beta, groups, epsilon):
    return _xla_kernel()(x, gamma, beta, groups=groups, epsilon=epsilon)


@functools.lru_cache(maxsize=1)
def _xla_kernel():
    import tensorflow as tf

    return tf.function(_group_norm_relu_tf, jit_compile=True)


def _group_norm_relu_tf(x, gamma, beta, groups, epsilon):
    import tensorflow as tf

    shape = tf.shape(x)
    channels = gamma.shape[0]
    grouped = tf.cast(tf.reshape(x, [shape[0], shape[1], shape[2], groups, channels // groups]), tf.float32)
    # Two-level means (within a row, then over rows): float32 sums over ~10^5 values stay accurate.
    mean = tf.reduce_mean(tf.reduce_mean(grouped, axis=[2, 4], keepdims=True), axis=1, keepdims=True)
    centered = grouped - mean
    var = tf.reduce_mean(tf.reduce_mean(tf.square(centered), axis=[2, 4], keepdims=True), axis=1, keepdims=True)
    affine_shape = [1, 1, 1, groups, channels // groups]
    scale = tf.math.rsqrt(var + epsilon) * tf.reshape(tf.cast(gamma, tf.float32), affine_shape)
    out = tf.nn.relu(centered * scale + tf.reshape(tf.cast(beta, tf.float32), affine_shape))
    return tf.cast(tf.reshape(out, shape), x.dtype)


def foldable_pairs(detector):
    """``(PaddedConv2D, BatchNorm)`` pairs of the backbone whose statistics are frozen."""
    from gflv2_keras.layers.norm import BatchNorm
    from gflv2_keras.layers.padded_conv import PaddedConv2D

    pairs = getattr(detector.backbone, "conv_norm_pairs", lambda: [])()
    return [
        (conv, norm)
        for conv, norm in pairs
        if isinstance(conv, PaddedConv2D) and isinstance(norm, BatchNorm) and norm.frozen_stats
    ]


class InferenceFunctions:
    """Cache of the compiled inference functions of one detector, keyed by box format and outputs
    (and by canvas when the network runs under XLA).

    ``traces`` counts Python traces of all of them (the bounded-retracing test reads it).
    """

    def __init__(self, detector):
        self.detector = detector
        self.functions = {}
        self.traces = 0
        self._xla_network = None

    def __call__(self, images, canvas, bounding_box_format, return_box_distributions=False):
        """Run ``detect_batch`` on uint8 ``[B, H, W, 3]`` images whose canvas is ``canvas``."""
        import tensorflow as tf

        if not self.detector.built:
            self.detector.build_for_inference()  # variables exist before tracing (the fused kernels read them)
        # XLA compiles one program per static shape; the oneDNN graph takes any size, so without
        # XLA one function serves every canvas (the size is padded to /32 in the graph).
        static = self.uses_xla()
        key = (tuple(canvas) if static else None, bounding_box_format, bool(return_box_distributions))
        if key not in self.functions:
            self.functions[key] = tf.function(
                self._traced(*key),
                input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)],
            )
        return self.functions[key](images)

    def uses_xla(self):
        """Whether the network runs under XLA (``inference_jit`` for this device and precision)."""
        detector = self.detector
        return resolve_jit(detector.inference_jit, detector.dtype_policy.compute_dtype)

    def _traced(self, canvas, bounding_box_format, return_box_distributions):
        def detect(images):
            self.traces += 1
            return self.detector.detect_batch(
                images,
                bounding_box_format,
                canvas=canvas,
                return_box_distributions=return_box_distributions,
                network=self.network,
            )

        return detect

    def network(self, inputs):
        """The network as in-process inference runs it: the head's GroupNorm + ReLU fused, and
        under XLA where ``inference_jit`` says so (one XLA function per detector, traced only here,
        so exports, which call ``detect_batch`` without it, stay portable)."""
        detector = self.detector
        with fused_group_norms(detector):
            if not self.uses_xla():
                return detector(inputs, training=False)
            if self._xla_network is None:
                import tensorflow as tf

                from gflv2_keras.layers.deform_conv2d import portable_tracing

                self._xla_network = tf.function(portable_tracing(lambda x: detector(x, training=False)),
                                                jit_compile=True)  # fmt: skip
            return self._xla_network(inputs)


class PortableInference:
    """``detect_batch`` on JAX (one ``jax.jit`` per canvas, box format and output set, the
    variables passed in through ``keras.StatelessScope``) or PyTorch (eager, without autograd).

    Same call and cache as ``InferenceFunctions``; ``traces`` counts JAX traces.
    """

    def __init__(self, detector):
        self.detector = detector
        self.functions = {}
        self.traces = 0

    def __call__(self, images, canvas, bounding_box_format, return_box_distributions=False):
        detector = self.detector
        arguments = dict(bounding_box_format=bounding_box_format, canvas=tuple(canvas),
                         return_box_distributions=bool(return_box_distributions))  # fmt: skip
        if keras.config.backend() == "torch":
            import torch

            with torch.no_grad():
                return detector.detect_batch(ops.convert_to_tensor(images), **arguments)
        key = tuple(arguments.values())
        if key not in self.functions:
            import jax

            variables = list(detector.variables)

            def detect(values, batch):
                self.traces += 1
                with keras.StatelessScope(state_mapping=list(zip(variables, values))):
                    return detector.detect_batch(batch, **arguments)

            self.functions[key] = (jax.jit(detect), variables)
        function, variables = self.functions[key]
        return function([v.value for v in variables], images)


def inference_runner(detector):
    """The in-process inference of ``detector`` for the current Keras backend (see the module docstring)."""
    return InferenceFunctions(detector) if keras.config.backend() == "tensorflow" else PortableInference(detector)
