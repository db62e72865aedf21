"""Numeric primitives that must match PyTorch exactly (docs/method.md §2).

Every rule that decides parity with the official PyTorch refiner lives here once: the resize kernels
(PyTorch bicubic x2 with align_corners=True, PyTorch legacy nearest, PyTorch bilinear with
align_corners=False), replicate-padded convolution, the GroupNorm / LayerNorm epsilons and the exact GELU.

Layout: NHWC. The resizes act on axes (-3, -2) of `(..., H, W, C)` arrays; their index and weight tables
are computed on the host in float32 with the same expressions as ATen, so they are bit-compatible with
PyTorch's choice of source pixels. Output sizes are static (Python ints), so the functions jit.
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any, Callable, Sequence

import cv2
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sddr_jax.errors import UserError

Array = jax.Array
Dtype = Any

# Epsilons (docs/method.md §2.2). Flax's defaults are 1e-6 everywhere, so every norm states its own.
GN_EPS = 1e-5
LN_EPS_BLOCK = 1e-6  # MiT transformer-block and stage-output LayerNorms
LN_EPS_PATCH = 1e-5  # MiT patch-embedding and spatial-reduction LayerNorms, cross-attention LayerNorms
LEAKY_SLOPE = 0.01
CUBIC_A = -0.75  # PyTorch's bicubic constant (jax.image uses -0.5)
_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------------------
# activations and norms


def gelu_exact(x: Array) -> Array:
    """GELU in its exact erf form, x * Phi(x) (PyTorch's nn.GELU default; not the tanh approximation)."""
    return jax.nn.gelu(x, approximate=False)


def leaky_relu(x: Array) -> Array:
    """LeakyReLU with PyTorch's default negative slope 0.01 (used throughout the CNN parts)."""
    return jax.nn.leaky_relu(x, negative_slope=LEAKY_SLOPE)


def group_norm(num_groups: int, *, dtype: Dtype | None = None, name: str | None = None) -> nn.GroupNorm:
    """PyTorch-equivalent GroupNorm: eps 1e-5, biased two-pass variance, affine, contiguous channel groups."""
    return nn.GroupNorm(
        num_groups=num_groups, epsilon=GN_EPS, use_fast_variance=False, dtype=dtype, name=name
    )


def layer_norm(epsilon: float, *, dtype: Dtype | None = None, name: str | None = None) -> nn.LayerNorm:
    """PyTorch-equivalent LayerNorm over the last axis with an explicit epsilon and two-pass variance."""
    return nn.LayerNorm(epsilon=epsilon, use_fast_variance=False, dtype=dtype, name=name)


# ----------------------------------------------------------------------------------------------------
# padding and convolution


def edge_pad(x: Array, pad: int) -> Array:
    """Replicate ('edge') padding of `pad` pixels on both spatial axes (-3, -2) of an NHWC array."""
    if pad == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[-3] = (pad, pad)
    widths[-2] = (pad, pad)
    return jnp.pad(x, widths, mode="edge")


class ConvReplicate(nn.Module):
    """Stride-1 k x k convolution with replicate padding (k-1)/2 (PyTorch `padding_mode='replicate'`).

    Implemented as edge padding followed by a VALID convolution. Parameters are named like `nn.Conv`'s
    (`kernel` HWIO, `bias`), so the converter maps OIHW weights the same way for both.
    """

    features: int
    kernel_size: int = 3
    use_bias: bool = True
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32
    kernel_init: Callable = nn.initializers.normal(0.01)
    bias_init: Callable = nn.initializers.zeros

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        k = self.kernel_size
        if k % 2 != 1:
            raise ValueError(f"ConvReplicate: kernel_size must be odd, got {k}")
        kernel = self.param("kernel", self.kernel_init, (k, k, x.shape[-1], self.features), self.param_dtype)
        bias = None
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        return conv_replicate(x, kernel, bias, form="conv" if train else None)


class TapConv(nn.Module):
    """A k x k convolution whose kernel has one input channel per output channel, computed as k*k (strided)
    slices of the zero-padded input times the kernel's taps: the depthwise conv (input with C channels,
    = `nn.Conv(C, ..., feature_group_count=C)`) or a conv of a one-channel input (= `nn.Conv(C, ...)`).
    Same "kernel" (k, k, 1, C) and "bias" (C,) parameters and init draws as that `nn.Conv`. XLA:CPU runs these
    convolutions slowly: 21.6 ms against 0.4 ms for the MiT depthwise conv on (2, 64, 64, 128), 8.3 ms against
    1.3 ms for the first stem conv at S = 1024 (docs/benchmarks.md "Where the CPU time goes"); the refiner
    uses this form for inference only, a training step keeps `nn.Conv` (its backward compiles faster)."""

    features: int
    kernel_size: int = 3
    stride: int = 1
    padding: int = 1
    dtype: Dtype | None = None
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k, s, p = self.kernel_size, self.stride, self.padding
        if x.shape[-1] not in (1, self.features):
            raise ValueError(f"TapConv: input channels must be 1 or {self.features}, got {x.shape[-1]}")
        kernel = self.param("kernel", self.kernel_init, (k, k, 1, self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        n, h, w, c = x.shape
        ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        out = None
        for i in range(k):
            for j in range(k):
                tap = jax.lax.slice(padded, (0, i, j, 0), (n, i + s * (ho - 1) + 1, j + s * (wo - 1) + 1, c),
                                    (1, s, s, 1))
                term = tap * kernel[i, j, 0]
                out = term if out is None else out + term
        return out + bias


CONV_FORMS = ("conv", "matmul", "planar")


_EMBEDDED = contextvars.ContextVar("sddr_jax_embedded_forms", default=False)


@contextlib.contextmanager
def embedded_forms():
    """Within this context `conv_form` picks the forms for a network whose output is read again inside the
    same compiled program (the coarse-to-fine passes, the label pass): no planar form for inputs of more
    than one channel.

    The planar form is a chain of k*k*C_in multiply-adds per output pixel that XLA:CPU fuses into each
    consumer of its output, recomputing it per read: nearest upsampling of window crops, the 9 reads of a
    Sobel filter. For the refiner's 5 x 5, 8 -> 1 output conv that costs more than the form saves (the label
    pass of configs/synthetic.py:acceptance: 368 -> 257 ms per batch; docs/benchmarks.md). A program that
    only returns the output (the one-stage refiner) keeps the planar form. Trace-time setting, like
    `jax.default_matmul_precision`.
    """
    token = _EMBEDDED.set(True)
    try:
        yield
    finally:
        _EMBEDDED.reset(token)


def conv_form(cin: int, cout: int) -> str:
    """The fastest form of `conv_replicate` for this layer on the current backend (inference).

    On CPU: "matmul" from 32 input channels, "planar" for narrower inputs to one output channel (one input
    channel only within `embedded_forms`), else "conv". XLA:CPU's convolution is slow on the refiner
    decoder's narrow layers (e.g. 38 ms against 1.3 ms for 32 -> 1 channels at 256 x 256, 41 ms against
    14 ms for 32 -> 16, 46 ms against 26 ms for the 5 x 5, 8 -> 1 output conv at 1024 x 1024;
    docs/benchmarks.md "Where the CPU time goes"); other backends keep it.
    """
    if jax.default_backend() != "cpu":
        return "conv"
    if cin >= 32:
        return "matmul"
    if cout == 1 and (cin == 1 or not _EMBEDDED.get()):
        return "planar"
    return "conv"


def conv_replicate(x: Array, kernel: Array, bias: Array | None = None, *, form: str | None = None) -> Array:
    """Functional replicate-padded stride-1 convolution: x NHWC, kernel HWIO with odd square size.

    `form` (default: `conv_form`, chosen per layer and backend) computes the same sums in another order
    (~1e-6 relative):
    - "conv": `lax.conv_general_dilated` (what a training step uses: its backward compiles faster);
    - "matmul": one matmul of the padded input with the kernel laid out as (C_in, k*k*C_out), then the sum of
      the k*k shifted output blocks;
    - "planar": the input moved to channel planes, then per input channel the sum of its k*k shifted planes
      times their taps, summed over the channels (multiply-adds that XLA:CPU vectorises along the rows).
    """
    k = kernel.shape[0]
    form = conv_form(kernel.shape[2], kernel.shape[3]) if form is None else form
    if form not in CONV_FORMS:
        raise ValueError(f"conv_replicate form: expected one of {CONV_FORMS}, got {form!r}")
    lead = x.shape[:-3]
    x = x.reshape((-1,) + x.shape[-3:])
    padded = edge_pad(x, (k - 1) // 2)
    if form == "matmul":
        y = _conv_as_matmul(padded, kernel, x.shape[1], x.shape[2])
    elif form == "planar":
        y = _conv_planar(padded, kernel, x.shape[1], x.shape[2])
    else:
        y = jax.lax.conv_general_dilated(padded, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y = y.reshape(lead + y.shape[1:])
    return y if bias is None else y + bias


def _conv_planar(padded: Array, kernel: Array, h: int, w: int) -> Array:
    """VALID k x k convolution of `padded` (N, h+k-1, w+k-1, C_in) with HWIO `kernel`, on channel planes:
    per output and input channel the k*k shifted planes times their taps (one partial sum per input channel,
    then their sum; this grouping ran faster than one long sum)."""
    k, _, cin, cout = kernel.shape
    planes = jnp.moveaxis(padded, -1, 1)  # (N, C_in, H', W')
    outs = []
    for o in range(cout):
        partial = []
        for c in range(cin):
            acc = None
            for i in range(k):
                for j in range(k):
                    term = kernel[i, j, c, o] * planes[:, c, i:i + h, j:j + w]
                    acc = term if acc is None else acc + term
            partial.append(acc)
        outs.append(sum(partial[1:], partial[0]))
    return jnp.stack(outs, axis=-1)


def _conv_as_matmul(padded: Array, kernel: Array, h: int, w: int) -> Array:
    """VALID k x k convolution of `padded` (N, h+k-1, w+k-1, C_in) with HWIO `kernel`: every tap's output
    channels from one matmul, then summed over the taps at their offsets."""
    k, _, cin, cout = kernel.shape
    z = jnp.einsum("nhwc,cd->nhwd", padded, kernel.transpose(2, 0, 1, 3).reshape(cin, k * k * cout))
    y = None
    for i in range(k):
        for j in range(k):
            t = (i * k + j) * cout
            tap = z[:, i:i + h, j:j + w, t:t + cout]
            y = tap if y is None else y + tap
    return y


# ----------------------------------------------------------------------------------------------------
# resizing: host-side index / weight tables (float32, ATen expressions)


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of every output sample under PyTorch's legacy 'nearest' (== OpenCV INTER_NEAREST).

    src = min(floor(dst * (in / out)), in - 1) with the ratio and the product in float32 (ATen
    `nearest_idx`), including its exact shortcuts for equal sizes and for exact x2 upsampling.
    """
    _check_sizes(in_size, out_size)
    if out_size == in_size:
        return np.arange(out_size, dtype=np.int32)
    if out_size == 2 * in_size:
        return (np.arange(out_size) >> 1).astype(np.int32)
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(src, in_size - 1).astype(np.int32)


def bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch bilinear (align_corners=False, no antialias) taps: (i0, i1, w0, w1), each of length out.

    src = max((dst + 0.5) * in/out - 0.5, 0) in float32, i0 = floor(src), i1 = min(i0 + 1, in - 1),
    w1 = src - i0, w0 = 1 - w1 (ATen `compute_indices_weights_linear`).
    """
    _check_sizes(in_size, out_size)
    scale = np.float32(in_size) / np.float32(out_size)
    dst = np.arange(out_size, dtype=np.float32)
    src = scale * (dst + np.float32(0.5)) - np.float32(0.5)
    src = np.where(src < 0, np.float32(0), src).astype(np.float32)
    i0 = src.astype(np.int64)  # truncation == floor for src >= 0
    i1 = np.where(i0 < in_size - 1, i0 + 1, i0)
    w1 = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    w0 = (np.float32(1) - w1).astype(np.float32)
    return i0.astype(np.int32), i1.astype(np.int32), w0, w1


def _cubic_near(v, a):
    """Keys' cubic convolution kernel for |v| <= 1 (ATen's `cubic_convolution1`)."""
    return ((a + 2) * v - (a + 3)) * v * v + 1


def _cubic_far(v, a):
    """Keys' cubic convolution kernel for 1 < |v| < 2 (ATen's `cubic_convolution2`)."""
    return ((a * v - 5 * a) * v + 8 * a) * v - 4 * a


def bicubic_ac_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch bicubic (align_corners=True, A = -0.75) taps: indices (out, 4) and weights (out, 4).

    x = dst * ((in-1)/(out-1)) in float32, x0 = floor(x), t = x - x0; taps x0-1..x0+2 clamped to
    [0, in-1]; weights from ATen's `get_cubic_upsample_coefficients` (docs/method.md §2.4).
    """
    _check_sizes(in_size, out_size)
    a = np.float32(CUBIC_A)
    if out_size > 1:
        scale = np.float32(in_size - 1) / np.float32(out_size - 1)
    else:
        scale = np.float32(0)
    x = np.arange(out_size, dtype=np.float32) * scale
    x0 = np.floor(x)
    t = (x - x0).astype(np.float32)
    one = np.float32(1)
    w = np.stack([_cubic_far(t + one, a), _cubic_near(t, a), _cubic_near(one - t, a),
                  _cubic_far((one - t) + one, a)], axis=1)
    idx = x0.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :]
    idx = np.clip(idx, 0, in_size - 1)
    return idx.astype(np.int32), w.astype(np.float32)


def bicubic_ac_matrix(in_size: int, out_size: int) -> np.ndarray:
    """The (out, in) matrix of PyTorch bicubic align_corners=True resampling along one axis.

    Clamped taps are accumulated into the border columns, so `M @ x` equals the 4-tap sum.
    """
    idx, w = bicubic_ac_taps(in_size, out_size)
    m = np.zeros((out_size, in_size), np.float32)
    np.add.at(m, (np.repeat(np.arange(out_size), 4), idx.reshape(-1)), w.reshape(-1))
    return m


def _check_sizes(in_size: int, out_size: int) -> None:
    if int(in_size) < 1 or int(out_size) < 1:
        raise ValueError(f"resize: sizes must be >= 1, got input {in_size} and output {out_size}")


# ----------------------------------------------------------------------------------------------------
# resizing: array functions on axes (-3, -2) of (..., H, W, C)


def _check_nhwc(x: Array, name: str) -> None:
    if x.ndim < 3:
        raise ValueError(f"{name}: expected an array (..., H, W, C), got shape {tuple(x.shape)}")


def _out_hw(out_hw: Sequence[int], name: str) -> tuple[int, int]:
    try:
        oh, ow = (int(v) for v in out_hw)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: out_hw must be a pair of ints (height, width), got {out_hw!r}") from None
    if oh < 1 or ow < 1:
        raise ValueError(f"{name}: out_hw must be positive, got {(oh, ow)}")
    return oh, ow


def resize_nearest(x: Array, out_hw: Sequence[int]) -> Array:
    """PyTorch legacy nearest resize (== OpenCV INTER_NEAREST) of axes (-3, -2) of `(..., H, W, C)`.

    `out_hw` = (height, width) must be static. Pure gather: bit-exact for any dtype.
    """
    _check_nhwc(x, "resize_nearest")
    oh, ow = _out_hw(out_hw, "resize_nearest")
    h, w = x.shape[-3], x.shape[-2]
    if (oh, ow) != (h, w):
        x = jnp.take(x, jnp.asarray(nearest_indices(h, oh)), axis=x.ndim - 3)
        x = jnp.take(x, jnp.asarray(nearest_indices(w, ow)), axis=x.ndim - 2)
    return x


def _lerp_axis(x: Array, in_size: int, out_size: int, axis: int) -> Array:
    if in_size == out_size:
        return x
    i0, i1, w0, w1 = bilinear_taps(in_size, out_size)
    shape = [1] * x.ndim
    shape[axis] = out_size
    w0 = jnp.asarray(w0, x.dtype).reshape(shape)
    w1 = jnp.asarray(w1, x.dtype).reshape(shape)
    return w0 * jnp.take(x, jnp.asarray(i0), axis=axis) + w1 * jnp.take(x, jnp.asarray(i1), axis=axis)


def resize_bilinear(x: Array, out_hw: Sequence[int]) -> Array:
    """PyTorch bilinear resize (align_corners=False, no antialias) of axes (-3, -2) of `(..., H, W, C)`.

    Separable: width first, then height (ATen's order). `out_hw` = (height, width) must be static.
    Works for down- and upsampling; like PyTorch it never antialiases.
    """
    _check_nhwc(x, "resize_bilinear")
    oh, ow = _out_hw(out_hw, "resize_bilinear")
    h, w = x.shape[-3], x.shape[-2]
    x = _lerp_axis(x, w, ow, x.ndim - 2)
    return _lerp_axis(x, h, oh, x.ndim - 3)


def _cubic_axis(x: Array, in_size: int, out_size: int, axis: int) -> Array:
    idx, w = bicubic_ac_taps(in_size, out_size)
    shape = [1] * x.ndim
    shape[axis] = out_size
    out = None
    for k in range(4):
        term = jnp.asarray(w[:, k], x.dtype).reshape(shape) * jnp.take(x, jnp.asarray(idx[:, k]), axis=axis)
        out = term if out is None else out + term
    return out


def x2_phase_taps(n: int, idx: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(taps the x2 slice form reads, taps `bicubic_ac_taps` gives), for (2n, 4) `idx`/`w`, with every tap of
    weight 0 set to -1 in both (such a tap adds 0 * x whichever input it reads: at t = 0 the first output
    reads x0-1..x0+2 where the slice form reads x0-2..x0+1, with weights 0, 1, 0, 0)."""
    m = np.arange(n)[:, None]
    slices = np.empty_like(idx)
    slices[0::2] = np.clip(m - 2 + np.arange(4), 0, n - 1)
    slices[1::2] = np.clip(m - 1 + np.arange(4), 0, n - 1)
    zero = w == 0
    return np.where(zero, -1, slices), np.where(zero, -1, idx)


def _cubic_axis_x2(x: Array, in_size: int, out_size: int, axis: int) -> Array:
    """`_cubic_axis` for out_size = 2 * in_size without gathers. With align_corners=True the even outputs
    2m read the inputs m-2..m+1 and the odd outputs 2m+1 the inputs m-1..m+2 (clamped; exact arithmetic
    gives floor(x) = m-1 and m), so each phase is four weighted static slices of the edge-padded input,
    interleaved. Same taps, weights and order of sums as the gathers, so the same numbers; XLA:CPU runs it
    ~3x faster. Falls back to the gathers if float32 rounding ever moved a tap."""
    n = int(in_size)
    idx, w = bicubic_ac_taps(n, out_size)
    if out_size != 2 * n or not np.array_equal(*x2_phase_taps(n, idx, w)):
        return _cubic_axis(x, in_size, out_size, axis)
    widths = [(0, 0)] * x.ndim
    widths[axis] = (2, 2)
    padded = jnp.pad(x, widths, mode="edge")
    shape = [1] * x.ndim
    shape[axis] = n
    phases = []
    for phase, first in ((0, 0), (1, 1)):
        out = None
        for k in range(4):
            tap = jax.lax.slice_in_dim(padded, first + k, first + k + n, axis=axis)
            term = jnp.asarray(w[phase::2, k], x.dtype).reshape(shape) * tap
            out = term if out is None else out + term
        phases.append(out)
    y = jnp.stack(phases, axis=axis + 1)
    return y.reshape(x.shape[:axis] + (out_size,) + x.shape[axis + 1:])


def _cubic_axis_matrix(x: Array, in_size: int, out_size: int, axis: int) -> Array:
    m = jnp.asarray(bicubic_ac_matrix(in_size, out_size), x.dtype)
    y = jnp.tensordot(m, jnp.moveaxis(x, axis, 0), axes=(1, 0), precision=jax.lax.Precision.HIGHEST)
    return jnp.moveaxis(y, 0, axis)


def upsample_bicubic_ac_x2(x: Array, method: str = "taps") -> Array:
    """x2 upsampling of axes (-3, -2) of NHWC `x` with PyTorch bicubic, align_corners=True (docs/method.md §2.4).

    method "taps": four weighted taps per axis, as static slices of the edge-padded input (`_cubic_axis_x2`);
    "gather": the same taps gathered by index (the former default; equal numbers); method "matrix": the same
    resampling as two matmuls with the (2n, n) matrices of `bicubic_ac_matrix` at HIGHEST precision.
    Both give PyTorch's result to float32 rounding; "taps" is the default because the matrix form
    costs O(n) multiply-adds per output sample (~100 GFLOP for the last decoder layer at S=2048).
    """
    _check_nhwc(x, "upsample_bicubic_ac_x2")
    h, w = x.shape[-3], x.shape[-2]
    if method == "taps":
        fn = _cubic_axis_x2
    elif method == "gather":
        fn = _cubic_axis
    elif method == "matrix":
        fn = _cubic_axis_matrix
    else:
        raise ValueError(f"upsample_bicubic_ac_x2: method must be 'taps', 'gather' or 'matrix', got {method!r}")
    x = fn(x, w, 2 * w, x.ndim - 2)  # width first, then height, like ATen
    return fn(x, h, 2 * h, x.ndim - 3)


# Keys' cubic (A = CUBIC_A) at t = 1/2: w(3/2) = -3/32 for the outer taps, w(1/2) = 19/32 for the inner ones.
_MID_OUTER = _cubic_far(1.5, CUBIC_A)
_MID_INNER = _cubic_near(0.5, CUBIC_A)


def _cubic_axis_stride_x2(x: Array, axis: int) -> Array:
    n = x.shape[axis]
    widths = [(0, 0)] * x.ndim
    widths[axis] = (1, 2)
    padded = jnp.pad(x, widths, mode="edge")

    def tap(k):  # input m - 1 + k for every m (clamped), k = 0..3
        return jax.lax.slice_in_dim(padded, k, k + n, axis=axis)

    outer, inner = jnp.asarray(_MID_OUTER, x.dtype), jnp.asarray(_MID_INNER, x.dtype)
    odd = outer * tap(0) + inner * tap(1) + inner * tap(2) + outer * tap(3)
    y = jnp.stack([x, odd], axis=axis + 1)
    return y.reshape(x.shape[:axis] + (2 * n,) + x.shape[axis + 1:])


def upsample_bicubic_stride_x2(x: Array) -> Array:
    """x2 bicubic upsampling of axes (-3, -2) of NHWC `x` on the grid of the stride-2 convolutions.

    A stride-2 convolution with kernel 3 and padding 1 centres its output m on input pixel 2m, so the
    inverse grid puts output 2i at input i: even outputs copy the input, odd outputs are Keys' cubic
    (A = -0.75, as PyTorch) half-way between two inputs, taps i-1..i+2 clamped to the edge. Unlike
    align_corners=True (output i at input i(n-1)/(2n-1), the official decoder's rule), the map from output to
    input position has no scale error, so a network built from it is translation-equivariant away from the
    borders (docs/method.md §3.6, "Upsampling grid").
    """
    _check_nhwc(x, "upsample_bicubic_stride_x2")
    x = _cubic_axis_stride_x2(x, x.ndim - 2)  # width first, then height, like upsample_bicubic_ac_x2
    return _cubic_axis_stride_x2(x, x.ndim - 3)


UPSAMPLE_MODES = ("align_corners", "stride_aligned")


def upsample_x2(x: Array, mode: str = "align_corners", *, method: str = "taps") -> Array:
    """The decoder's x2 upsampling: mode "align_corners" (the official refiner, `upsample_bicubic_ac_x2` with
    `method`) or "stride_aligned" (`upsample_bicubic_stride_x2`)."""
    if mode == "align_corners":
        return upsample_bicubic_ac_x2(x, method=method)
    if mode == "stride_aligned":
        return upsample_bicubic_stride_x2(x)
    raise ValueError(f"upsample_x2: mode must be one of {UPSAMPLE_MODES}, got {mode!r}")


__all__ = [
    "TapConv",
    "GN_EPS",
    "LN_EPS_BLOCK",
    "LN_EPS_PATCH",
    "LEAKY_SLOPE",
    "CUBIC_A",
    "gelu_exact",
    "leaky_relu",
    "group_norm",
    "layer_norm",
    "edge_pad",
    "ConvReplicate",
    "conv_replicate",
    "nearest_indices",
    "bilinear_taps",
    "bicubic_ac_taps",
    "bicubic_ac_matrix",
    "resize_nearest",
    "resize_bilinear",
    "upsample_bicubic_ac_x2",
    "upsample_bicubic_stride_x2",
    "upsample_x2",
    "UPSAMPLE_MODES",
]


# ----------------------------------------------------------------------------------------------------
# OpenCV resizes in matrix form (in-graph R_cv_linear / R_cv_cubic)

_CV_FLAGS = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}


@functools.lru_cache(maxsize=512)
def cv_resize_matrix(in_size: int, out_size: int, interpolation: str = "cubic") -> np.ndarray:
    """The (out, in) matrix of OpenCV's 1-D resampling rule (`cv2.resize` along one axis).

    OpenCV's float resize is linear and separable, so resizing the identity along one axis yields the
    exact matrix (half-pixel centres, replicated borders, A = -0.75 for cubic) without re-deriving the
    rule; applying it on both axes reproduces `cv2.resize` up to float32 rounding.
    """
    if interpolation not in _CV_FLAGS:
        raise UserError(
            f"cv_resize_matrix: interpolation must be one of {sorted(_CV_FLAGS)}, got {interpolation!r}"
        )
    in_size, out_size = int(in_size), int(out_size)
    if in_size < 1 or out_size < 1:
        raise UserError(f"cv_resize_matrix: sizes must be >= 1, got {in_size} -> {out_size}")
    eye = np.eye(in_size, dtype=np.float32)
    m = cv2.resize(eye, (in_size, out_size), interpolation=_CV_FLAGS[interpolation])
    m = np.ascontiguousarray(m.reshape(out_size, in_size), np.float32)
    m.setflags(write=False)
    return m


@functools.lru_cache(maxsize=512)
def cv_nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source indices of OpenCV INTER_NEAREST along one axis (read off `cv2.resize` of an index ramp).

    OpenCV computes floor(dst * in/out) in double precision, PyTorch in float32 (`ops.nearest_indices`):
    they agree for the power-of-two refiner sizes but can differ by one pixel for other size pairs.
    """
    in_size, out_size = int(in_size), int(out_size)
    if in_size < 1 or out_size < 1:
        raise UserError(f"cv_nearest_indices: sizes must be >= 1, got {in_size} -> {out_size}")
    ramp = np.arange(in_size, dtype=np.float32)[None, :]  # exact integers up to 2^24
    idx = cv2.resize(ramp, (out_size, 1), interpolation=cv2.INTER_NEAREST)[0].astype(np.int32)
    idx.setflags(write=False)
    return idx


def resize_cv(x: Array, out_hw: Sequence[int], interpolation: str = "cubic", method: str = "taps") -> Array:
    """OpenCV-rule resize (R_cv_linear / R_cv_cubic / INTER_NEAREST, docs/method.md §2.4) of axes (-3, -2) of NHWC.

    linear / cubic, width then height as OpenCV, with the rows of `cv_resize_matrix`: method "taps" applies
    each row's few non-zero weights as gathers (default, cheap), "matrix" as matmuls at HIGHEST precision.
    nearest: two gathers (exact). `out_hw` = (height, width) must be static. Jittable and vmappable.
    """
    if x.ndim < 3:
        raise UserError(f"resize_cv: expected an array (..., H, W, C), got shape {tuple(x.shape)}")
    oh, ow = (int(v) for v in out_hw)
    h, w = x.shape[-3], x.shape[-2]
    if interpolation == "nearest":
        if ow != w:
            x = jnp.take(x, jnp.asarray(cv_nearest_indices(w, ow)), axis=x.ndim - 2)
        if oh != h:
            x = jnp.take(x, jnp.asarray(cv_nearest_indices(h, oh)), axis=x.ndim - 3)
        return x
    if method not in ("taps", "matrix"):
        raise UserError(f"resize_cv: method must be 'taps' or 'matrix', got {method!r}")
    for axis, n_in, n_out in ((x.ndim - 2, w, ow), (x.ndim - 3, h, oh)):
        if n_in == n_out:
            continue
        if method == "matrix":
            m = jnp.asarray(cv_resize_matrix(n_in, n_out, interpolation), x.dtype)
            y = jnp.tensordot(m, jnp.moveaxis(x, axis, 0), axes=(1, 0), precision=_HIGHEST)
            x = jnp.moveaxis(y, 0, axis)
        else:
            idx, wts = _cv_taps(n_in, n_out, interpolation)
            shape = [1] * x.ndim
            shape[axis] = n_out
            terms = [
                jnp.asarray(wts[:, k], x.dtype).reshape(shape)
                * jnp.take(x, jnp.asarray(idx[:, k]), axis=axis)
                for k in range(idx.shape[1])
            ]
            x = functools.reduce(lambda a, b: a + b, terms)
    return x


@functools.lru_cache(maxsize=512)
def _cv_taps(in_size: int, out_size: int, interpolation: str) -> tuple[np.ndarray, np.ndarray]:
    # The few non-zeros of each row of the resampling matrix as (index, weight) taps: O(taps) per output
    # sample instead of O(in) for the matmul (the windows are resized from S = 1024).
    m = cv_resize_matrix(in_size, out_size, interpolation)
    k = max(1, int((m != 0).sum(axis=1).max()))
    idx = np.zeros((out_size, k), np.int32)
    wts = np.zeros((out_size, k), np.float32)
    for i in range(out_size):
        nz = np.flatnonzero(m[i])
        idx[i, : nz.size] = nz
        wts[i, : nz.size] = m[i, nz]
    return idx, wts


# ----------------------------------------------------------------------------------------------------
# host-side resizes of the official demo


def resize_nearest_host(x: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """R_nearest_torch on the host for (..., H, W, C) numpy arrays (== OpenCV INTER_NEAREST; exact gather)."""
    h, w = x.shape[-3], x.shape[-2]
    x = np.take(x, nearest_indices(h, out_hw[0]), axis=x.ndim - 3)
    return np.take(x, nearest_indices(w, out_hw[1]), axis=x.ndim - 2)


def resize_linear_host(x: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    """R_cv_linear: OpenCV INTER_LINEAR of every map of a (B, H, W, 1) float32 array to out_hw = (H', W')."""
    oh, ow = int(out_hw[0]), int(out_hw[1])
    out = np.empty((x.shape[0], oh, ow, 1), np.float32)
    for i in range(x.shape[0]):
        out[i, :, :, 0] = cv2.resize(np.ascontiguousarray(x[i, :, :, 0], np.float32), (ow, oh),
                                     interpolation=cv2.INTER_LINEAR)
    return out


# ----------------------------------------------------------------------------------------------------
# quantiles by selection


def _order_keys(x: Array) -> Array:
    """float32 -> uint32 keys in the same order (negative floats: all bits flipped; others: sign bit set)."""
    b = jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jnp.where(b >> 31 == 1, ~b, b | jnp.uint32(0x80000000))


def _select_keys(keys: Array, k: int) -> Array:
    """The k-th smallest (0-based) of each row of `keys` (N, n) uint32: the largest t with #{keys < t} <= k,
    built bit by bit from the top (32 counting passes, no sort)."""
    def body(i, prefix):
        cand = prefix | jnp.left_shift(jnp.uint32(1), (31 - i).astype(jnp.uint32))
        below = jnp.sum(keys < cand[:, None], axis=-1, dtype=jnp.int32)
        return jnp.where(below <= k, cand, prefix)
    return jax.lax.fori_loop(0, 32, body, jnp.zeros(keys.shape[:1], jnp.uint32))


def _from_order_keys(k: Array) -> Array:
    b = jnp.where(k >> 31 == 1, k & jnp.uint32(0x7FFFFFFF), ~k)
    return jax.lax.bitcast_convert_type(b, jnp.float32)


def _quantile_keys(rows: Array, q: float) -> tuple[Array, Array, Array, np.float32, np.float32]:
    """(keys, key of the lower and of the upper order statistic, their weights) of each row of `rows` (N, n),
    with the position q (n - 1), its floor/ceil and the weights in float32, as jnp.quantile computes them."""
    n = rows.shape[-1]
    pos = np.float32(q) * np.float32(n - 1)
    lo_i, hi_i = int(min(max(np.floor(pos), 0), n - 1)), int(min(max(np.ceil(pos), 0), n - 1))
    hi_w = np.float32(pos - np.floor(pos))
    lo_w = np.float32(1) - hi_w
    keys = _order_keys(rows)
    lo_k = _select_keys(keys, lo_i)
    if hi_i == lo_i:
        return keys, lo_k, lo_k, lo_w, hi_w
    # the next order statistic: lo_k again if it repeats, else the smallest key above it
    at_most = jnp.sum(keys <= lo_k[:, None], axis=-1, dtype=jnp.int32)
    above = jnp.min(jnp.where(keys > lo_k[:, None], keys, jnp.uint32(0xFFFFFFFF)), axis=-1)
    return keys, lo_k, jnp.where(at_most > hi_i, lo_k, above), lo_w, hi_w


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _quantile_rows(rows: Array, q: float) -> Array:
    _, lo_k, hi_k, lo_w, hi_w = _quantile_keys(rows, q)
    out = _from_order_keys(lo_k) * lo_w + _from_order_keys(hi_k) * hi_w
    return jnp.where(jnp.any(jnp.isnan(rows), axis=-1), jnp.float32(jnp.nan), out)


@_quantile_rows.defjvp
def _quantile_rows_jvp(q, primals, tangents):
    # The tangent of an element holding each order statistic, as through jnp.quantile's sort (where several
    # elements hold the value, all of it to one of them).
    (rows,), (dot,) = primals, tangents
    keys, lo_k, hi_k, lo_w, hi_w = _quantile_keys(rows, q)

    def at(key: Array) -> Array:
        return jnp.take_along_axis(dot, jnp.argmax(keys == key[:, None], axis=-1)[:, None], axis=-1)[:, 0]

    return _quantile_rows(rows, q), at(lo_k) * lo_w + at(hi_k) * hi_w


def quantile(x: Array, q: float, axis: int = -1, keepdims: bool = False) -> Array:
    """`jnp.quantile(x, q, axis, method="linear")` for float32 `x` and a static `q`, the same numbers, without
    sorting: the two order statistics it interpolates are found by counting (`_select_keys`).

    XLA:CPU sorts slowly (two sorts of 4 x 65,536 label maps took 93 ms of a 0.54 s label pass); selection
    reads the data 33 times and takes a few ms. A row holding a NaN gives NaN, like `jnp.quantile`; gradients
    reach the elements holding the two order statistics, as through its sort.
    """
    q = float(q)
    if not 0.0 <= q <= 1.0:
        raise UserError(f"quantile q: expected a number in [0, 1], got {q}")
    x = jnp.asarray(x)
    if x.dtype != jnp.float32:
        raise UserError(f"quantile x: expected float32, got {x.dtype}")
    axis = axis % x.ndim
    moved = jnp.moveaxis(x, axis, -1)
    out = _quantile_rows(moved.reshape(-1, moved.shape[-1]), q).reshape(moved.shape[:-1])
    return jnp.expand_dims(out, axis) if keepdims else out


# ----------------------------------------------------------------------------------------------------
# normalisation and least-squares alignment


def _xp(x: Any):
    """numpy for host arrays (the input pipeline), jax.numpy otherwise (inside jit)."""
    return np if isinstance(x, (np.ndarray, np.generic)) else jnp


def minmax_normalize(x: Array, axis: Sequence[int] = (-3, -2, -1)) -> Array:
    """(x - min) / (max - min) over `axis` (default: each map of a (B, H, W, C) batch); numpy in, numpy out,
    otherwise jax.numpy (jittable).

    A constant map (max == min) maps to zeros instead of NaN (the official code divides by zero there).
    """
    xp = _xp(x)
    lo = xp.min(x, axis=tuple(axis), keepdims=True)
    hi = xp.max(x, axis=tuple(axis), keepdims=True)
    rng = hi - lo
    return (x - lo) / xp.where(rng > 0, rng, xp.ones_like(rng))


def fill_invalid(x: Array, valid: Array | None = None, axis: Sequence[int] = (-3, -2, -1),
                 default: float = 0.0) -> Array:
    """x with its invalid pixels (not `valid`, or not finite) set to the mean of the valid ones over `axis`
    (`default` where a map has none). numpy in, numpy out; otherwise jax.numpy (jittable)."""
    xp = _xp(x)
    ok = xp.isfinite(x) if valid is None else (xp.asarray(valid).astype(bool) & xp.isfinite(x))
    axis = tuple(axis)
    count = xp.sum(ok, axis=axis, keepdims=True)
    mean = xp.sum(xp.where(ok, x, 0.0), axis=axis, keepdims=True) / xp.maximum(count, 1)
    fill = xp.where(count > 0, mean, default)
    return xp.where(ok, x, fill).astype(x.dtype)


def align_scale_shift(pred: Array, target: Array, mask: Array | None = None, *,
                      axes: Sequence[int] = (-3, -2, -1), min_var: float = 0.0,
                      degenerate: str = "zero") -> tuple[Array, Array]:
    """Least-squares (scale, shift) minimising sum_m (a * pred + b - target)^2 over `axes` (default the
    last three: each map of a (B, H, W, C) batch; the remaining leading axes are batch axes).

    The official `compute_scale_and_shift` (MiDaS), solved in centred form (same minimiser, better conditioned
    in float32 than the normal equations). Pixels outside `mask` (nonzero = inside) never enter, even when
    they are not finite; `mask` may broadcast the maps (one map fitted on several regions). Where the masked prediction has variance <= `min_var`, the scale is 0 and the shift
    is 0 (`degenerate="zero"`, the official code) or the masked mean of the target (`"mean"`, the
    least-squares constant: np.polyfit's answer). Returns two arrays of the leading shape.
    """
    if pred.shape != target.shape:
        raise UserError(
            f"align_scale_shift: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ"
        )
    if degenerate not in ("zero", "mean"):
        raise UserError(f"align_scale_shift: degenerate must be 'zero' or 'mean', got {degenerate!r}")
    axes = tuple(axes)
    if mask is None:
        m = jnp.ones(pred.shape, bool)
    else:  # the mask may also broadcast the maps (e.g. one map against several regions)
        mask = jnp.asarray(mask) != 0
        shape = jnp.broadcast_shapes(pred.shape, mask.shape)
        pred, target, m = (jnp.broadcast_to(a, shape) for a in (pred, target, mask))
    n = jnp.sum(m.astype(pred.dtype), axis=axes)
    safe_n = jnp.maximum(n, 1.0)
    mp = jnp.sum(jnp.where(m, pred, 0.0), axis=axes) / safe_n
    mt = jnp.sum(jnp.where(m, target, 0.0), axis=axes) / safe_n
    dp = jnp.where(m, pred - jnp.expand_dims(mp, axes), 0.0)
    dt = jnp.where(m, target - jnp.expand_dims(mt, axes), 0.0)
    var = jnp.sum(dp * dp, axis=axes)
    cov = jnp.sum(dp * dt, axis=axes)
    ok = (var > min_var) & (n > 0)
    scale = jnp.where(ok, cov / jnp.where(ok, var, 1.0), 0.0)
    shift = mt - scale * mp
    if degenerate == "zero":
        shift = jnp.where(ok, shift, 0.0)
    return scale, shift


def apply_scale_shift(x: Array, scale: Array, shift: Array) -> Array:
    """a * x + b with (a, b) of the leading shape of x (..., H, W, C)."""
    return scale[..., None, None, None] * x + shift[..., None, None, None]
