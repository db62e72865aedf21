"""The Mix Transformer (MiT) backbone of SegFormer, b0..b5 (docs/method.md §3.3).

The refiner uses MiT-b0 fed with the 16-channel stem features at S/4. Token grids are kept as NHWC maps
between stages; inside a stage tokens are (B, h*w, C) in row-major order, as in PyTorch's `flatten(2)`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sddr_jax.ops import LN_EPS_BLOCK, LN_EPS_PATCH, TapConv, gelu_exact, layer_norm

Dtype = Any
Array = jax.Array

# SegFormer's init: Linear trunc_normal(std 0.02) truncated at +-2 absolute (= 100 sigma, i.e. a plain
# normal), LayerNorm 1/0, Conv normal(0, sqrt(2 / fan_out)) with fan_out = k*k*out / groups.
DENSE_INIT = nn.initializers.normal(0.02)


def _conv_init(kernel: int, features: int, groups: int = 1):
    return nn.initializers.normal(math.sqrt(2.0 / (kernel * kernel * features // groups)))


def torch_default_conv_init(fan_in: int):
    """PyTorch's default Conv2d init: kaiming_uniform(a=sqrt(5)), i.e. uniform(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


@dataclasses.dataclass(frozen=True)
class MiTConfig:
    """One member of the SegFormer MiT family (all use head dim 32 in b0 and 64 in b1-b5)."""

    embed_dims: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratio: int = 4
    drop_path_rate: float = 0.1


MIT_CONFIGS: dict[str, MiTConfig] = {
    "b0": MiTConfig((32, 64, 160, 256), (1, 2, 5, 8), (2, 2, 2, 2)),
    "b1": MiTConfig((64, 128, 320, 512), (1, 2, 5, 8), (2, 2, 2, 2)),
    "b2": MiTConfig((64, 128, 320, 512), (1, 2, 5, 8), (3, 4, 6, 3)),
    "b3": MiTConfig((64, 128, 320, 512), (1, 2, 5, 8), (3, 4, 18, 3)),
    "b4": MiTConfig((64, 128, 320, 512), (1, 2, 5, 8), (3, 8, 27, 3)),
    "b5": MiTConfig((64, 128, 320, 512), (1, 2, 5, 8), (3, 6, 40, 3)),
}


def get_mit_config(name: str) -> MiTConfig:
    try:
        return MIT_CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown MiT backbone {name!r}; known: {', '.join(MIT_CONFIGS)}") from None


def drop_path(x: Array, rate: float, rng: jax.Array) -> Array:
    """Stochastic depth: zero whole samples with probability `rate`, scale the kept ones by 1/(1-rate)."""
    keep = 1.0 - rate
    mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


def multi_head_attention(q: Array, k: Array, v: Array, num_heads: int) -> Array:
    """softmax(q k^T / sqrt(d)) v over (B, N, C) tokens; head h uses channels h*d .. h*d+d-1."""
    b, n, c = q.shape
    d = c // num_heads
    q = q.reshape(b, n, num_heads, d)
    k = k.reshape(b, k.shape[1], num_heads, d)
    v = v.reshape(b, v.shape[1], num_heads, d)
    logits = jnp.einsum("bnhd,bmhd->bhnm", q, k) * (d ** -0.5)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
    return jnp.einsum("bhnm,bmhd->bnhd", weights, v).reshape(b, n, c)


class EfficientAttention(nn.Module):
    """MiT attention with spatial reduction: keys/values from an r x r strided conv of the token grid."""

    dim: int
    num_heads: int
    sr_ratio: int
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: Array, hw: tuple[int, int]) -> Array:
        dense = lambda f, name: nn.Dense(f, dtype=self.dtype, kernel_init=DENSE_INIT, name=name)  # noqa: E731
        q = dense(self.dim, "q")(x)
        if self.sr_ratio > 1:
            r = self.sr_ratio
            grid = x.reshape(x.shape[0], hw[0], hw[1], self.dim)
            grid = nn.Conv(self.dim, (r, r), strides=(r, r), padding="VALID", dtype=self.dtype,
                           kernel_init=_conv_init(r, self.dim), name="sr")(grid)
            x = grid.reshape(grid.shape[0], -1, self.dim)
            x = layer_norm(LN_EPS_PATCH, dtype=self.dtype, name="sr_norm")(x)
        kv = dense(2 * self.dim, "kv")(x)
        out = multi_head_attention(q, kv[..., : self.dim], kv[..., self.dim:], self.num_heads)
        return dense(self.dim, "proj")(out)


class MixFFN(nn.Module):
    """Dense(C -> hC) -> depthwise 3x3 conv on the grid -> exact GELU -> Dense(hC -> C)."""

    dim: int
    hidden: int
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: Array, hw: tuple[int, int], train: bool = False) -> Array:
        x = nn.Dense(self.hidden, dtype=self.dtype, kernel_init=DENSE_INIT, name="fc1")(x)
        grid = x.reshape(x.shape[0], hw[0], hw[1], self.hidden)
        init = _conv_init(3, self.hidden, self.hidden)
        if train:  # XLA's grouped convolution: its backward compiles faster (docs/benchmarks.md)
            grid = nn.Conv(self.hidden, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=self.hidden,
                           dtype=self.dtype, kernel_init=init, name="dwconv")(grid)
        else:
            grid = TapConv(self.hidden, dtype=self.dtype, kernel_init=init, name="dwconv")(grid)  # depthwise
        x = gelu_exact(grid.reshape(x.shape))
        return nn.Dense(self.dim, dtype=self.dtype, kernel_init=DENSE_INIT, name="fc2")(x)


class MiTBlock(nn.Module):
    """Pre-norm transformer block: t += Attn(LN(t)); t += MixFFN(LN(t)); LayerNorm eps 1e-6."""

    dim: int
    num_heads: int
    sr_ratio: int
    mlp_ratio: int = 4
    drop_path_rate: float = 0.0
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: Array, hw: tuple[int, int], train: bool = False) -> Array:
        def residual(branch):
            if train and self.drop_path_rate > 0.0:
                return drop_path(branch, self.drop_path_rate, self.make_rng("dropout"))
            return branch

        a = layer_norm(LN_EPS_BLOCK, dtype=self.dtype, name="norm1")(x)
        attn = EfficientAttention(self.dim, self.num_heads, self.sr_ratio, self.dtype, name="attn")
        x = x + residual(attn(a, hw))
        m = layer_norm(LN_EPS_BLOCK, dtype=self.dtype, name="norm2")(x)
        x = x + residual(MixFFN(self.dim, self.mlp_ratio * self.dim, self.dtype, name="mlp")(m, hw, train))
        return x


class OverlapPatchEmbed(nn.Module):
    """Zero-padded strided conv (kernel k, stride s, pad k // 2) then LayerNorm eps 1e-5 over tokens."""

    dim: int
    kernel: int
    stride: int
    kernel_init: Any = None
    bias_init: Any = None
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, tuple[int, int]]:
        p = self.kernel // 2
        kw = {}
        if self.kernel_init is not None:
            kw["kernel_init"] = self.kernel_init
        else:
            kw["kernel_init"] = _conv_init(self.kernel, self.dim)
        if self.bias_init is not None:
            kw["bias_init"] = self.bias_init
        x = nn.Conv(self.dim, (self.kernel, self.kernel), strides=(self.stride, self.stride),
                    padding=((p, p), (p, p)), dtype=self.dtype, name="proj", **kw)(x)
        b, h, w, c = x.shape
        tokens = layer_norm(LN_EPS_PATCH, dtype=self.dtype, name="norm")(x.reshape(b, h * w, c))
        return tokens, (h, w)


class MixVisionTransformer(nn.Module):
    """MiT backbone: four stages (patch embed -> blocks -> LayerNorm) returning four NHWC maps.

    `in_channels` only sets the default init of the stage-1 projection: the refiner feeds 16 stem
    channels through a fresh conv with PyTorch's default init (docs/method.md §3.7).
    """

    config: MiTConfig = MIT_CONFIGS["b0"]
    in_channels: int = 16
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, x: Array, train: bool = False) -> list[Array]:
        cfg = self.config
        rates = np.linspace(0.0, cfg.drop_path_rate, sum(cfg.depths))
        fan_in = self.in_channels * 7 * 7
        outs, cur = [], 0
        for s in range(4):
            if s == 0:
                init = torch_default_conv_init(fan_in)
                embed = OverlapPatchEmbed(cfg.embed_dims[0], 7, 4, kernel_init=init, bias_init=init,
                                          dtype=self.dtype, name="patch_embed1")
            else:
                embed = OverlapPatchEmbed(cfg.embed_dims[s], 3, 2, dtype=self.dtype,
                                          name=f"patch_embed{s + 1}")
            t, hw = embed(x)
            for j in range(cfg.depths[s]):
                t = MiTBlock(cfg.embed_dims[s], cfg.num_heads[s], cfg.sr_ratios[s], cfg.mlp_ratio,
                             float(rates[cur + j]), self.dtype, name=f"block{s + 1}_{j}")(t, hw, train)
            cur += cfg.depths[s]
            t = layer_norm(LN_EPS_BLOCK, dtype=self.dtype, name=f"norm{s + 1}")(t)
            x = t.reshape(t.shape[0], hw[0], hw[1], cfg.embed_dims[s])
            outs.append(x)
        return outs
