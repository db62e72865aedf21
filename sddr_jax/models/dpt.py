"""The DPT depth head of Depth Anything V2 (reassemble, RefineNet fusion, output convolutions) in Flax linen.

Not part of the SDDR spec: the head of the JAX-native base predictor (docs/method.md §1). It follows the original
`DPTHead` of Depth Anything V2 (`use_bn=False`, `use_clstoken=False`), which Hugging Face's
`DepthAnythingNeck` + `DepthAnythingDepthEstimationHead` compute identically. Parameter names follow the
original repository without its `scratch.` level: `projects_i`, `resize_layers_{0,1,3}`, `layer{k}_rn`,
`refinenet{k}/{out_conv,resConfUnit1,resConfUnit2}/{conv1,conv2}`, `output_conv1`, `output_conv2_0`,
`output_conv2_2`.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def linear_align_corners_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices i0, i1 and weight t of PyTorch's linear resize with align_corners=True along one axis.

    Source x = dst * (in - 1) / (out - 1) (0 when out == 1); value = (1 - t) * v[i0] + t * v[i1].
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"resize sizes must be positive, got {in_size} -> {out_size}")
    scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    x = np.arange(out_size, dtype=np.float64) * scale
    i0 = np.minimum(np.floor(x).astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    return i0, i1, x - i0


def resize_bilinear_align_corners(x: Array, out_hw: Sequence[int]) -> Array:
    """PyTorch `interpolate(x, size=out_hw, mode="bilinear", align_corners=True)` for NHWC arrays."""
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    for axis, out_size in ((1, out_h), (2, out_w)):
        in_size = x.shape[axis]
        if in_size == out_size:
            continue
        i0, i1, t = linear_align_corners_taps(in_size, out_size)
        shape = [1] * x.ndim
        shape[axis] = out_size
        t = jnp.asarray(t, jnp.float32).reshape(shape).astype(x.dtype)
        x = jnp.take(x, i0, axis=axis) * (1 - t) + jnp.take(x, i1, axis=axis) * t
    return x


class ConvTransposeStride(nn.Module):
    """Transposed convolution with kernel size == stride and no padding (DPT's x4 / x2 reassemble upsampling).

    Each input pixel writes its own k x k block, so it is one einsum: y[b, k*i + a, k*j + c, o] =
    sum_ch x[b, i, j, ch] * kernel[a, c, ch, o] + bias[o]. A PyTorch weight (in, out, k, k) maps to `kernel`
    by transposing to (k, k, in, out), with no flip.
    """

    features: int
    stride: int
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        k = self.stride
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        dtype = self.dtype or x.dtype
        b, h, w, _ = x.shape
        y = jnp.einsum("bhwc,klco->bhkwlo", x.astype(dtype), kernel.astype(dtype))
        return y.reshape(b, h * k, w * k, self.features) + bias.astype(dtype)


def _conv3x3(features: int, name: str, dtype, use_bias: bool = True, stride: int = 1) -> nn.Conv:
    return nn.Conv(features, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)), use_bias=use_bias, dtype=dtype, name=name)


class ResidualConvUnit(nn.Module):
    """Pre-activation residual unit: x + conv2(relu(conv1(relu(x))))."""

    features: int
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = _conv3x3(self.features, "conv1", self.dtype)(nn.relu(x))
        h = _conv3x3(self.features, "conv2", self.dtype)(nn.relu(h))
        return h + x


class FeatureFusionBlock(nn.Module):
    """RefineNet fusion: (x [+ rcu1(skip)]) -> rcu2 -> bilinear (align_corners) to `size` or x2 -> 1x1 conv."""

    features: int
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: Array, skip: Array | None = None, size: tuple[int, int] | None = None) -> Array:
        if skip is not None:
            x = x + ResidualConvUnit(self.features, self.dtype, name="resConfUnit1")(skip)
        x = ResidualConvUnit(self.features, self.dtype, name="resConfUnit2")(x)
        size = size if size is not None else (2 * x.shape[1], 2 * x.shape[2])
        x = resize_bilinear_align_corners(x, size)
        return nn.Conv(self.features, (1, 1), dtype=self.dtype, name="out_conv")(x)


class DPTHead(nn.Module):
    """Maps the 4 tapped ViT token maps (B, gh, gw, dim) to relative depth (B, 14*gh, 14*gw, 1), ReLU'd.

    `out_channels` are the reassemble widths (ViT-S 48/96/192/384, ViT-B 96/192/384/768, ViT-L
    256/512/1024/1024); `features` the fusion width (64 / 128 / 256).
    """

    features: int = 64
    out_channels: Sequence[int] = (48, 96, 192, 384)
    head_features_2: int = 32
    patch_size: int = 14
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, tokens: Sequence[Array]) -> Array:
        if len(tokens) != 4 or len(self.out_channels) != 4:
            raise ValueError(f"DPTHead: expected 4 feature maps and 4 out_channels, got {len(tokens)} and {len(self.out_channels)}")
        gh, gw = tokens[0].shape[1], tokens[0].shape[2]
        dt = self.dtype
        layers = []
        for i, (x, ch) in enumerate(zip(tokens, self.out_channels)):
            x = nn.Conv(ch, (1, 1), dtype=dt, name=f"projects_{i}")(x)
            if i == 0:
                x = ConvTransposeStride(ch, 4, dtype=dt, name="resize_layers_0")(x)
            elif i == 1:
                x = ConvTransposeStride(ch, 2, dtype=dt, name="resize_layers_1")(x)
            elif i == 3:
                x = _conv3x3(ch, "resize_layers_3", dt, stride=2)(x)
            layers.append(x)
        rn = [_conv3x3(self.features, f"layer{k + 1}_rn", dt, use_bias=False)(x) for k, x in enumerate(layers)]
        hw = [(r.shape[1], r.shape[2]) for r in rn]
        path = FeatureFusionBlock(self.features, dt, name="refinenet4")(rn[3], size=hw[2])
        path = FeatureFusionBlock(self.features, dt, name="refinenet3")(path, rn[2], size=hw[1])
        path = FeatureFusionBlock(self.features, dt, name="refinenet2")(path, rn[1], size=hw[0])
        path = FeatureFusionBlock(self.features, dt, name="refinenet1")(path, rn[0])
        out = _conv3x3(self.features // 2, "output_conv1", dt)(path)
        out = resize_bilinear_align_corners(out, (gh * self.patch_size, gw * self.patch_size))
        out = nn.relu(_conv3x3(self.head_features_2, "output_conv2_0", dt)(out))
        out = nn.Conv(1, (1, 1), dtype=dt, name="output_conv2_2")(out)
        return nn.relu(out)
