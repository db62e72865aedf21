"""Decoder with learned soft masks and the two side outputs (docs/method.md §3.6).

Skip pairs by level: 1 <-> b3, 2 <-> b2, 3 <-> b1, 4 <-> (l3, h3), 5 <-> (l2, h2), 6 <-> (l1, h1). The mask
weights the LOW branch: f_k = m_k * low_k + (1 - m_k) * high_k (the paper's Omega is 1 - m).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax

from sddr_jax.ops import ConvReplicate, group_norm, leaky_relu, upsample_x2

Dtype = Any
Array = jax.Array


class Up(nn.Module):
    """GroupNorm -> bicubic x2 -> replicate-padded conv -> LeakyReLU if act.

    upsample: "align_corners" (PyTorch bicubic, align_corners=True: the official refiner) or "stride_aligned"
    (`ops.upsample_bicubic_stride_x2`, docs/method.md §3.6).
    """

    features: int
    groups: int
    kernel_size: int = 3
    act: bool = True
    dtype: Dtype | None = None
    upsample: str = "align_corners"

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        x = group_norm(self.groups, dtype=self.dtype, name="norm")(x)
        x = upsample_x2(x, self.upsample, method="gather" if train else "taps")
        x = ConvReplicate(self.features, self.kernel_size, dtype=self.dtype, name="conv")(x, train=train)
        return leaky_relu(x) if self.act else x


class Mask(nn.Module):
    """GroupNorm -> replicate-padded 3x3 conv to one channel -> sigmoid: a soft mask in (0, 1)."""

    groups: int
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> Array:
        x = group_norm(self.groups, dtype=self.dtype, name="norm")(x)
        return nn.sigmoid(ConvReplicate(1, 3, dtype=self.dtype, name="conv")(x, train=train))


def decoder_groups(channels: Sequence[int]) -> dict[str, int]:
    """GroupNorm group counts of every decoder layer for the channel list c[0..6] (official rule C // 8,
    with the official exceptions mask5 = c[1] // 8, up5 = mask6 = up6 = head_half = 1, head_quart = 2)."""
    c = channels
    return {
        "up0": c[6] // 8, "mask1": c[5] // 8, "up1": c[5] // 8, "mask2": c[4] // 8, "up2": c[4] // 8,
        "mask3": c[3] // 8, "up3": c[3] // 8, "mask4": c[2] // 8, "up4": c[2] // 8, "mask5": c[1] // 8,
        "up5": 1, "mask6": 1, "up6": 1, "head_quart": 2, "head_half": 1,
    }


class Decoder(nn.Module):
    """Decoder over the low and high feature lists [l1, l2, l3, b1, b2, b3, b4] (b4 with cross-attention).

    Returns (refined, out_half, out_quart, m5, m6). `upsample` is every `Up`'s upsampling mode.
    """

    channels: Sequence[int] = (8, 16, 32, 32, 64, 160, 256)
    dtype: Dtype | None = None
    upsample: str = "align_corners"

    @nn.compact
    def __call__(self, low: Sequence[Array], high: Sequence[Array], train: bool = False):
        c, g, dt = tuple(self.channels), decoder_groups(self.channels), self.dtype
        up = functools.partial(Up, upsample=self.upsample)
        low, high = list(low)[::-1], list(high)[::-1]  # level k: index k (0 = b4, ..., 6 = l1)
        r = up(c[5], g["up0"], dtype=dt, name="up0")(low[0] + high[0], train)
        masks = {}
        out_quart = out_half = None
        for k in range(1, 7):
            m = Mask(g[f"mask{k}"], dtype=dt, name=f"mask{k}")(r, train)
            masks[k] = m
            f = m * low[k] + (1 - m) * high[k]
            x = r + f
            if k == 4:
                out_quart = up(1, g["head_quart"], act=False, dtype=dt, name="head_quart")(x, train)
            elif k == 5:
                out_half = up(1, g["head_half"], act=False, dtype=dt, name="head_half")(x, train)
            if k < 6:
                r = up(c[6 - k - 1], g[f"up{k}"], dtype=dt, name=f"up{k}")(x, train)
            else:
                r = up(1, g["up6"], kernel_size=5, act=False, dtype=dt, name="up6")(x, train)
        return r, out_half, out_quart, masks[5], masks[6]
