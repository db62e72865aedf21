"""The stem residual blocks `Down` shared by the low and high branches (docs/method.md §3.2).

PyTorch origin: `Resnet.BasicBlock_ini` with a 1x1 stride-2 shortcut; its "bn1/bn2" are GroupNorms.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax

from sddr_jax.ops import TapConv, group_norm, leaky_relu

Dtype = Any

# docs/method.md §3.7: convs outside the backbone start from normal(0, 0.01) with zero bias.
CONV_INIT = nn.initializers.normal(0.01)


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
        def in_conv(k, s, p, name):  # the convs of the block's input
            if x.shape[-1] == 1 and not train:  # a one-channel map at inference: slices (ops.TapConv)
                return TapConv(c, k, s, p, dtype=self.dtype, kernel_init=CONV_INIT, name=name)
            return conv(k, s, p, name)

        a = in_conv(3, 2, 1, "conv1")(x)
        a = leaky_relu(group_norm(groups, dtype=self.dtype, name="norm1")(a))
        a = conv(3, 1, 1, "conv2")(a)
        a = group_norm(groups, dtype=self.dtype, name="norm2")(a)
        s = in_conv(1, 2, 0, "shortcut_conv")(x)
        s = group_norm(groups, dtype=self.dtype, name="shortcut_norm")(s)
        return leaky_relu(a + s)
