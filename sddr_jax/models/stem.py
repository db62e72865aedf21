"""The stem residual blocks `Down` shared by the low and high branches (docs/method.md §3.2).

PyTorch origin: `Resnet.BasicBlock_ini` with a 1x1 stride-2 shortcut; its "bn1/bn2" are GroupNorms.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from sddr_jax.ops import group_norm, leaky_relu

Dtype = Any

# docs/method.md §3.7: convs outside the backbone start from normal(0, 0.01) with zero bias.
CONV_INIT = nn.initializers.normal(0.01)


class SingleChannelConv(nn.Module):
    """`nn.Conv(C, (k, k), strides=(s, s), padding=p)` of a one-channel input (same "kernel" (k, k, 1, C) and
    "bias" parameters and init draws) as k*k strided slices times the kernel's rows: XLA:CPU's convolution
    takes 8.3 ms for the first stem conv of the two S = 1024 maps, this form 1.3 ms."""

    features: int
    kernel_size: int
    stride: int
    padding: int
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s, p = self.kernel_size, self.stride, self.padding
        kernel = self.param("kernel", CONV_INIT, (k, k, 1, self.features))
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
        n, h, w, _ = x.shape
        ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        padded = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
        out = None
        for i in range(k):
            for j in range(k):
                tap = lax.slice(padded, (0, i, j, 0), (n, i + s * (ho - 1) + 1, j + s * (wo - 1) + 1, 1), (1, s, s, 1))
                term = tap * kernel[i, j, 0]
                out = term if out is None else out + term
        return out + bias


class Down(nn.Module):
    """Strided residual block C_in -> C (spatial / 2) with GroupNorm(C // 8), zero padding.

    a = GN(conv3x3(GN(conv3x3_s2(x)) -> LeakyReLU)); s = GN(conv1x1_s2(x)); out = LeakyReLU(a + s).
    """

    features: int
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        c, groups = self.features, max(self.features // 8, 1)
        conv = lambda k, s, p, name: nn.Conv(  # noqa: E731 - local factory keeps the four convs uniform
            c, (k, k), strides=(s, s), padding=((p, p), (p, p)), dtype=self.dtype,
            kernel_init=CONV_INIT, name=name,
        )
        in_conv = conv  # the convs of the block's input: element-wise for a one-channel map (SingleChannelConv)
        if x.shape[-1] == 1 and not train:  # inference only: a training step's backward compiles faster with nn.Conv
            in_conv = lambda k, s, p, name: SingleChannelConv(c, k, s, p, dtype=self.dtype, name=name)  # noqa: E731
        a = in_conv(3, 2, 1, "conv1")(x)
        a = leaky_relu(group_norm(groups, dtype=self.dtype, name="norm1")(a))
        a = conv(3, 1, 1, "conv2")(a)
        a = group_norm(groups, dtype=self.dtype, name="norm2")(a)
        s = in_conv(1, 2, 0, "shortcut_conv")(x)
        s = group_norm(groups, dtype=self.dtype, name="shortcut_norm")(s)
        return leaky_relu(a + s)
