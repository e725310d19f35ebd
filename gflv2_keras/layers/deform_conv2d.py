"""Deformable convolution equal to mmcv ``DeformConv2dPack`` (DCNv1) and
``ModulatedDeformConv2dPack`` (DCNv2), NHWC.

Two implementations compute the same function:

* ``"portable"``: ``keras.ops`` only (gather-based bilinear im2col plus a matmul). It is
  differentiable, compiles under XLA (``jit_compile=True``), runs on every Keras backend
  (TensorFlow, JAX, PyTorch) and device, and is what exported SavedModels must contain.
* ``"custom_op"``: the TensorFlow C++ CPU op ``GflDeformConv2d`` from
  ``gflv2_keras.ops.deform_conv`` (built on first use, about a minute). TensorFlow backend
  only. Faster on CPU, but it has no XLA kernel, and a SavedModel containing it only loads in a
  process that loaded the ``.so`` (stock TF Serving cannot serve it).

``"auto"`` uses the custom op when the backend is TensorFlow, the op is already built and
loadable, no GPU is visible, the dtype is float32/float64 and no :func:`force_portable` context
is open; otherwise the portable path. On any other backend the op is never loaded or built.

Whether a graph is being compiled by XLA cannot be told through TensorFlow's public API, so the
code that compiles makes the choice: export code and every ``tf.function(jit_compile=True)``
that may reach a ``DeformConv2D`` traces inside :func:`force_portable`, which makes every layer
use the portable path while it is active (``tf.function(portable_tracing(fn), jit_compile=True)``
does that). A custom op traced into an XLA graph fails when the function is compiled.
"""

import contextlib
import functools
import threading

import keras
import numpy as np
from keras import ops

IMPLEMENTATIONS = ("portable", "custom_op", "auto")

_force_lock = threading.Lock()
_force_depth = 0


@contextlib.contextmanager
def force_portable():
    """Forces the portable implementation in every ``DeformConv2D`` while active.

    The flag is process-wide (not thread-local) and nestable: tracing done in any thread
    while the context is open gets a graph without the custom op, which is what a
    SavedModel export or a ``jit_compile=True`` function needs.

    Example::

        with force_portable():
            model.export("saved_model_dir")
    """
    global _force_depth
    with _force_lock:
        _force_depth += 1
    try:
        yield
    finally:
        with _force_lock:
            _force_depth -= 1


def portable_tracing(fn):
    """``fn`` running inside :func:`force_portable`, for ``tf.function(portable_tracing(fn), jit_compile=True)``.

    A ``tf.function`` runs its Python body only while tracing, so the graph it compiles holds
    the portable path of every ``DeformConv2D`` it reaches, while calls outside it are unaffected.
    """

    @functools.wraps(fn)
    def traced(*args, **kwargs):
        with force_portable():
            return fn(*args, **kwargs)

    return traced


def portable_forced():
    """True while a :func:`force_portable` context is open."""
    return _force_depth > 0


def _pair(value, name):
    if isinstance(value, (int, np.integer)):
        return (int(value), int(value))
    value = tuple(int(v) for v in value)
    if len(value) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return value


def _gpu_visible():
    import tensorflow as tf

    return bool(tf.config.list_logical_devices("GPU"))


def _custom_op_module(implementation, dtype):
    """The loaded op module to use, or None for the portable path (see module docstring)."""
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
    if implementation == "portable" or portable_forced():
        return None
    explicit = implementation == "custom_op"
    if keras.backend.backend() != "tensorflow":
        if explicit:
            raise ValueError(
                f"implementation='custom_op' needs the TensorFlow backend, not {keras.backend.backend()!r}")
        return None
    dtype = keras.backend.standardize_dtype(dtype)
    if dtype not in ("float32", "float64"):
        if explicit:
            raise TypeError(f"the GflDeformConv2d custom op supports float32/float64, got {dtype}")
        return None
    if not explicit and _gpu_visible():
        return None  # the op is CPU-only: on a GPU machine the portable path stays on the GPU
    from gflv2_keras.ops.deform_conv.loader import load_deform_conv_op, unavailable_reason

    module = load_deform_conv_op(build_if_missing=explicit)
    if module is None and explicit:
        raise RuntimeError(f"implementation='custom_op' requested but the op is unavailable: {unavailable_reason()}")
    return module


def split_offset_mask(raw, deform_groups, taps, modulated):
    """Splits the offset-conv output into mmcv's ``(offset, mask)``.

    DCNv1: the ``2*G*K`` channels are the offsets and the mask is None. DCNv2: the ``3*G*K``
    channels are chunked as ``o1, o2, m`` (``G*K`` each); ``offset = concat(o1, o2)``, still
    read interleaved (channel ``2k`` = dy, ``2k+1`` = dx), and ``mask = sigmoid(m)``.
    """
    if not modulated:
        return raw, None
    n = deform_groups * taps
    return raw[..., : 2 * n], ops.sigmoid(raw[..., 2 * n :])


def deform_conv2d(inputs, offset, kernel, mask=None, strides=1, padding=0, dilation_rate=1, groups=1,
                  implementation="portable"):
    """Deformable convolution with given offsets (and mask): torchvision/mmcv ``deform_conv2d``, NHWC.

    Args:
        inputs: ``(B, H, W, C)``.
        offset: ``(B, Ho, Wo, G*K*2)`` with ``K = kh*kw`` and ``G`` deform groups (inferred from
            the channel count). Channel ``(g*K + k)*2`` is dy and ``+1`` is dx for tap
            ``k = i*kw + j`` of deform group ``g``; deform group ``g`` covers input channels
            ``[g*C/G, (g+1)*C/G)``.
        kernel: ``(kh, kw, C/groups, F)``; output channel block ``q`` (of ``F/groups``) reads
            input channel block ``q`` (of ``C/groups``), as in PyTorch.
        mask: None (DCNv1) or ``(B, Ho, Wo, G*K)`` modulation scalars (DCNv2, already sigmoided).
        strides, padding, dilation_rate: ints or (h, w) pairs; ``padding`` is PyTorch's
            explicit symmetric zero padding, so ``Ho = (H + 2*pad - dil*(kh-1) - 1) // stride + 1``.
        groups: conv groups.
        implementation: "portable", "custom_op" or "auto" (see the module docstring).

    Returns:
        ``(B, Ho, Wo, F)``. Output (ho, wo) samples tap (i, j) at
        ``y = ho*stride - pad + i*dil + dy``, ``x = wo*stride - pad + j*dil + dx`` with
        bilinear interpolation: 0 if ``y <= -1``, ``y >= H``, ``x <= -1`` or ``x >= W``, and
        each corner outside the image contributes 0.
    """
    strides, padding = _pair(strides, "strides"), _pair(padding, "padding")
    dilation_rate = _pair(dilation_rate, "dilation_rate")
    kh, kw, cin_per_group, filters = (int(d) for d in kernel.shape)
    taps = kh * kw
    channels = inputs.shape[-1]
    if channels is None:
        raise ValueError("deform_conv2d: the channel dimension of inputs must be known")
    if cin_per_group * groups != channels or filters % groups:
        raise ValueError(
            f"deform_conv2d: kernel shape {tuple(kernel.shape)} does not fit {channels} input channels with "
            f"groups={groups} (need kernel.shape[2] * groups == channels and filters % groups == 0)"
        )
    offset_channels = offset.shape[-1]
    if offset_channels is None or offset_channels % (2 * taps):
        raise ValueError(
            f"deform_conv2d: offset has {offset_channels} channels, not a multiple of 2*kh*kw = {2 * taps}")
    deform_groups = offset_channels // (2 * taps)
    if channels % deform_groups:
        raise ValueError(f"deform_conv2d: {channels} input channels not divisible by deform_groups={deform_groups}")
    if mask is not None and mask.shape[-1] != deform_groups * taps:
        raise ValueError(f"deform_conv2d: mask has {mask.shape[-1]} channels, "
                         f"expected deform_groups*kh*kw = {deform_groups * taps}")

    module = _custom_op_module(implementation, inputs.dtype)
    if module is not None:
        dtype = inputs.dtype
        return module.gfl_deform_conv2d(
            inputs, ops.cast(offset, dtype),
            ops.zeros((0,), dtype) if mask is None else ops.cast(mask, dtype),
            ops.cast(kernel, dtype),
            strides=list(strides), padding=list(padding), dilations=list(dilation_rate),
            groups=groups, deform_groups=deform_groups, modulated=mask is not None,
        )
    return _deform_conv2d_portable(inputs, offset, kernel, mask, strides, padding, dilation_rate, groups, deform_groups)


def _bilinear_corners(y, x, height, width):
    """The 4 bilinear corners of positions ``(y, x)`` as ``[(pixel, weight)]``.

    ``pixel = row*width + col``. Following mmcv, the weight is 0 (and the pixel a harmless 0)
    for corners outside the image and for every corner of a position with ``y <= -1``,
    ``y >= H``, ``x <= -1`` or ``x >= W``.
    """
    inside = (y > -1) & (y < ops.cast(height, y.dtype)) & (x > -1) & (x < ops.cast(width, x.dtype))
    # Zeroing outside positions keeps the int cast finite and their gradient 0.
    y = ops.where(inside, y, 0)
    x = ops.where(inside, x, 0)
    y_floor, x_floor = ops.floor(y), ops.floor(x)
    ly, lx = y - y_floor, x - x_floor
    y0, x0 = ops.cast(y_floor, "int32"), ops.cast(x_floor, "int32")
    corners = []
    for row, weight_y in ((y0, 1 - ly), (y0 + 1, ly)):
        for col, weight_x in ((x0, 1 - lx), (x0 + 1, lx)):
            valid = inside & (row >= 0) & (row < height) & (col >= 0) & (col < width)
            corners.append((ops.where(valid, row * width + col, 0), ops.where(valid, weight_y * weight_x, 0)))
    return corners


def _deform_conv2d_portable(inputs, offset, kernel, mask, strides, padding, dilation_rate, groups, deform_groups):
    kh, kw, cin_per_group, filters = (int(d) for d in kernel.shape)
    taps, channels = kh * kw, int(inputs.shape[-1])
    batch, height, width = ops.shape(inputs)[:3]
    out_h, out_w = ops.shape(offset)[1:3]
    dtype = keras.backend.standardize_dtype(inputs.dtype)
    # Positions need more precision than float16 gives at realistic map sizes.
    coord_dtype = "float64" if dtype == "float64" else "float32"

    # (B, Ho, Wo, G, K, 2) -> (B, Ho, Wo, K, G, 2): taps outermost so that the sampled
    # columns come out as (K, G, C/G) = (K, C) per pixel, the row order of the kernel.
    offset = ops.reshape(ops.cast(offset, coord_dtype), (batch, out_h, out_w, deform_groups, taps, 2))
    offset = ops.transpose(offset, (0, 1, 2, 4, 3, 5))
    tap_i, tap_j = np.divmod(np.arange(taps), kw)
    (stride_h, stride_w), (pad_h, pad_w), (dil_h, dil_w) = strides, padding, dilation_rate
    grid_y = ops.reshape(ops.cast(ops.arange(out_h) * stride_h - pad_h, coord_dtype), (1, -1, 1, 1, 1))
    grid_x = ops.reshape(ops.cast(ops.arange(out_w) * stride_w - pad_w, coord_dtype), (1, 1, -1, 1, 1))
    tap_y = ops.convert_to_tensor((tap_i * dil_h).reshape(1, 1, 1, taps, 1), dtype=coord_dtype)
    tap_x = ops.convert_to_tensor((tap_j * dil_w).reshape(1, 1, 1, taps, 1), dtype=coord_dtype)
    y = grid_y + tap_y + offset[..., 0]
    x = grid_x + tap_x + offset[..., 1]

    if mask is not None:
        mask = ops.reshape(ops.cast(mask, dtype), (batch, out_h, out_w, deform_groups, taps))
        mask = ops.transpose(mask, (0, 1, 2, 4, 3))

    # Rows of `table` are (image, pixel, deform group): one gather per corner reads C/G channels.
    table = ops.reshape(inputs, (-1, channels // deform_groups))
    image_base = ops.reshape(ops.arange(batch) * (height * width), (-1, 1, 1, 1, 1))
    group = ops.reshape(ops.arange(deform_groups), (1, 1, 1, 1, -1))
    columns = None
    for pixel, weight in _bilinear_corners(y, x, height, width):
        weight = ops.cast(weight, dtype)
        if mask is not None:
            weight = weight * mask
        term = ops.take(table, (image_base + pixel) * deform_groups + group, axis=0) * weight[..., None]
        columns = term if columns is None else columns + term  # (B, Ho, Wo, K, G, C/G)

    kernel = ops.cast(kernel, dtype)
    if groups == 1:
        out = ops.matmul(ops.reshape(columns, (-1, taps * channels)), ops.reshape(kernel, (taps * channels, filters)))
    else:
        columns = ops.reshape(columns, (-1, taps, groups, cin_per_group))
        kernel = ops.reshape(kernel, (taps, cin_per_group, groups, filters // groups))
        out = ops.einsum("pkgc,kcgf->pgf", columns, kernel)
    return ops.reshape(out, (batch, out_h, out_w, filters))


@keras.saving.register_keras_serializable(package="gflv2_keras")
class DeformConv2D(keras.layers.Layer):
    """Deformable 2-D convolution, equal to mmcv ``DeformConv2dPack`` / ``ModulatedDeformConv2dPack``.

    An ordinary (ungrouped) convolution ``offset_kernel`` with the same stride, padding and
    dilation predicts per-pixel offsets (and for DCNv2 mask logits) from the input; the main
    ``kernel`` is then applied to the input bilinearly sampled at the shifted taps. The offset
    conv is zero-initialised, so a fresh layer is a plain convolution (times 0.5 for DCNv2,
    whose mask starts at sigmoid(0)).

    Args:
        filters: output channels ``F``.
        kernel_size: int or (kh, kw).
        strides: int or (h, w).
        padding: int or (h, w): explicit symmetric zero padding as in PyTorch (not TF 'same').
        dilation_rate: int or (h, w).
        groups: conv groups (ResNeXt); contiguous channel blocks as in PyTorch.
        deform_groups: offset groups ``G``; group ``g`` moves input channels ``[g*C/G, (g+1)*C/G)``.
        modulated: False for DCNv1, True for DCNv2 (mask).
        use_bias: add a bias to the output (mmcv DCNv1 has none).
        implementation: "portable", "custom_op" (TensorFlow backend only) or "auto" (see the
            module docstring). Graphs compiled with ``jit_compile=True`` and exported
            SavedModels must use "portable" or be traced inside :func:`force_portable`.
        kernel_initializer, bias_initializer, kernel_regularizer, bias_regularizer: for the
            main kernel and bias.

    Weights:
        ``kernel`` ``(kh, kw, C/groups, F)``; ``bias`` ``(F,)`` if ``use_bias``;
        ``offset_kernel`` ``(kh, kw, C, G*2*kh*kw)`` (DCNv1) or ``(kh, kw, C, G*3*kh*kw)``
        (DCNv2); ``offset_bias`` of the same last size. From PyTorch: ``kernel =
        weight.permute(2, 3, 1, 0)``, ``offset_kernel = conv_offset.weight.permute(2, 3, 1, 0)``.

    Offset conv channel layout (mmcv): per deform group ``g`` and tap ``k = i*kw + j``,
    channel ``(g*K + k)*2`` is dy and ``+1`` is dx. DCNv2 chunks its ``3*G*K`` channels into
    ``o1, o2, m``, uses ``concat(o1, o2)`` as offsets with that same interleaved layout and
    ``sigmoid(m)`` as the mask.

    Shapes:
        input ``(B, H, W, C)`` -> output ``(B, Ho, Wo, F)``,
        ``Ho = (H + 2*pad - dil*(kh-1) - 1) // stride + 1`` (likewise ``Wo``).

    Example:
        >>> layer = DeformConv2D(64, kernel_size=3, strides=2, padding=1)
        >>> y = layer(keras.random.normal((2, 32, 48, 32)))
        >>> tuple(y.shape)
        (2, 16, 24, 64)
    """

    def __init__(self, filters, kernel_size=3, strides=1, padding=1, dilation_rate=1, groups=1, deform_groups=1,
                 modulated=False, use_bias=False, implementation="portable", kernel_initializer="he_normal",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None, **kwargs):
        super().__init__(**kwargs)
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {IMPLEMENTATIONS}, got {implementation!r}")
        self.filters = int(filters)
        self.kernel_size = _pair(kernel_size, "kernel_size")
        self.strides = _pair(strides, "strides")
        self.padding = _pair(padding, "padding")
        self.dilation_rate = _pair(dilation_rate, "dilation_rate")
        self.groups = int(groups)
        self.deform_groups = int(deform_groups)
        self.modulated = bool(modulated)
        self.use_bias = bool(use_bias)
        self.implementation = implementation
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        if self.filters % self.groups:
            raise ValueError(f"filters ({self.filters}) must be divisible by groups ({self.groups})")
        self.input_spec = keras.layers.InputSpec(ndim=4)

    @property
    def taps(self):
        return self.kernel_size[0] * self.kernel_size[1]

    @property
    def offset_channels(self):
        return self.deform_groups * (3 if self.modulated else 2) * self.taps

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"{self.name}: the channel dimension of the input must be known")
        if channels % self.groups or channels % self.deform_groups:
            raise ValueError(
                f"{self.name}: input channels ({channels}) must be divisible by groups ({self.groups}) "
                f"and deform_groups ({self.deform_groups})"
            )
        kh, kw = self.kernel_size
        self.kernel = self.add_weight(name="kernel", shape=(kh, kw, channels // self.groups, self.filters),
                                      initializer=self.kernel_initializer, regularizer=self.kernel_regularizer)
        if self.use_bias:
            self.bias = self.add_weight(name="bias", shape=(self.filters,), initializer=self.bias_initializer,
                                        regularizer=self.bias_regularizer)
        else:
            self.bias = None
        self.offset_kernel = self.add_weight(name="offset_kernel", shape=(kh, kw, channels, self.offset_channels),
                                             initializer="zeros")
        self.offset_bias = self.add_weight(name="offset_bias", shape=(self.offset_channels,), initializer="zeros")
        self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: channels})

    def call(self, inputs):
        pad_h, pad_w = self.padding
        padded = inputs
        if pad_h or pad_w:
            padded = ops.pad(inputs, [[0, 0], [pad_h, pad_h], [pad_w, pad_w], [0, 0]])
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            # TF's convolution rejects stride > 1 together with dilation > 1: subsample instead.
            raw = ops.conv(padded, self.offset_kernel, strides=1, padding="valid", dilation_rate=self.dilation_rate)
            raw = raw[:, :: self.strides[0], :: self.strides[1], :]
        else:
            raw = ops.conv(padded, self.offset_kernel, strides=self.strides, padding="valid",
                           dilation_rate=self.dilation_rate)
        raw = raw + self.offset_bias
        offset, mask = split_offset_mask(raw, self.deform_groups, self.taps, self.modulated)
        out = deform_conv2d(inputs, offset, self.kernel, mask, strides=self.strides, padding=self.padding,
                            dilation_rate=self.dilation_rate, groups=self.groups,
                            implementation=self.implementation)
        if self.use_bias:
            out = out + self.bias
        return out

    def compute_output_shape(self, input_shape):
        batch, height, width, _ = input_shape

        def out_size(size, k, s, p, d):
            return None if size is None else (size + 2 * p - d * (k - 1) - 1) // s + 1

        sizes = [out_size(n, *args) for n, args in zip((height, width), zip(self.kernel_size, self.strides,
                                                                             self.padding, self.dilation_rate))]
        return (batch, *sizes, self.filters)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "dilation_rate": self.dilation_rate,
            "groups": self.groups,
            "deform_groups": self.deform_groups,
            "modulated": self.modulated,
            "use_bias": self.use_bias,
            "implementation": self.implementation,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
            "bias_initializer": keras.initializers.serialize(self.bias_initializer),
            "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
            "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
        }
