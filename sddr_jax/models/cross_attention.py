"""The cross-attention ("CVT") between the deepest low and high features, reshape quirk included (docs/method.md §3.5).

The official block flattens an NCHW tensor (B, 2, C, h, w) to tokens with a transpose, runs a transformer
block, and reshapes the (B, 2hw, C) result straight back to (B, 2, C, h, w) WITHOUT transposing back. The
next iteration's transpose therefore sees each branch's (hw x C) token matrix reinterpreted as (C x hw).
This module reproduces that exactly; the checkpoint was trained with it.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sddr_jax.models.mit import multi_head_attention
from sddr_jax.ops import LN_EPS_PATCH, gelu_exact, layer_norm

Dtype = Any
Array = jax.Array

CONV_INIT = nn.initializers.normal(0.01)  # the 1x1 convs and the transposed 1x1 conv (docs/method.md §3.7)
DENSE_INIT = nn.initializers.normal(0.02)  # trunc_normal(0.02) truncated at +-2 absolute == normal


def positional_encoding(h: int, w: int, dim: int = 256, temperature: float = 10000.0) -> np.ndarray:
    """Sine positional encoding E (h, w, dim), computed like the official `PositionEmbeddingSine` in float32.

    With 1-based Y = row + 1, X = col + 1 and f = dim / 2 features per axis:
    E[..., 2j] = sin(Y / T^(2j/f)), E[..., 2j+1] = cos(Y / T^(2j/f)), and the same for X at offset f.
    """
    if dim % 4:
        raise ValueError(f"positional_encoding: dim must be a multiple of 4, got {dim}")
    f = dim // 2
    j = np.arange(f, dtype=np.float32)
    dim_t = np.float32(temperature) ** (np.float32(2) * np.floor(j / 2) / np.float32(f))
    y = np.arange(1, h + 1, dtype=np.float32)[:, None, None] / dim_t  # (h, 1, f)
    x = np.arange(1, w + 1, dtype=np.float32)[None, :, None] / dim_t  # (1, w, f)
    y = np.broadcast_to(y, (h, w, f))
    x = np.broadcast_to(x, (h, w, f))

    def interleave(a):
        out = np.empty_like(a)
        out[..., 0::2] = np.sin(a[..., 0::2])
        out[..., 1::2] = np.cos(a[..., 1::2])
        return out

    return np.concatenate([interleave(y), interleave(x)], axis=-1).astype(np.float32)


class CrossBlock(nn.Module):
    """Pre-norm block: T += Wo(attn(Wq(u + P), Wk(u + P), Wv(u))) with u = LN(T); T += MLP(LN(T))."""

    dim: int
    num_heads: int = 8
    mlp_ratio: int = 4
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, t: Array, pos: Array) -> Array:
        dense = lambda f, name, bias=True: nn.Dense(  # noqa: E731
            f, use_bias=bias, dtype=self.dtype, kernel_init=DENSE_INIT, name=name)
        u = layer_norm(LN_EPS_PATCH, dtype=self.dtype, name="norm1")(t)
        qk_in = u + pos
        q = dense(self.dim, "q", False)(qk_in)
        k = dense(self.dim, "k", False)(qk_in)
        v = dense(self.dim, "v", False)(u)
        t = t + dense(self.dim, "out")(multi_head_attention(q, k, v, self.num_heads))
        m = layer_norm(LN_EPS_PATCH, dtype=self.dtype, name="norm2")(t)
        m = dense(self.dim, "fc2")(gelu_exact(dense(self.mlp_ratio * self.dim, "fc1")(m)))
        return t + m


class CrossAttention(nn.Module):
    """Joint attention over the 2*h*w tokens of the low and high deepest maps (B, h, w, C) each.

    Returns the residuals (Z_low, Z_high), each (B, h, w, C); the caller adds them to its inputs.
    """

    dim: int = 256
    num_iterations: int = 8
    num_heads: int = 8
    dtype: Dtype | None = None

    @nn.compact
    def __call__(self, low: Array, high: Array) -> tuple[Array, Array]:
        b, h, w, c = low.shape
        if c != self.dim or high.shape != low.shape:
            raise ValueError(
                f"CrossAttention: expected two (B, h, w, {self.dim}) maps, got {low.shape}, {high.shape}"
            )
        x = jnp.stack([low, high], axis=1)  # (B, 2, h, w, C) == the NCHW tensor transposed as in step (a)
        # pre-projection per pixel: depthwise 1x1 scale (no bias), then a 1x1 conv without bias
        pre_scale = self.param("pre_scale", CONV_INIT, (c,), jnp.float32)
        x = x * jnp.asarray(pre_scale, x.dtype if self.dtype is None else self.dtype)
        x = nn.Dense(c, use_bias=False, dtype=self.dtype, kernel_init=CONV_INIT, name="pre_proj")(x)

        pos = jnp.asarray(positional_encoding(h, w, c), x.dtype)
        pos = jnp.broadcast_to(pos[None, None], (b, 2, h, w, c)).reshape(b, 2 * h * w, c)
        for i in range(self.num_iterations):
            tokens = x.reshape(b, 2 * h * w, c)
            u = CrossBlock(c, self.num_heads, dtype=self.dtype, name=f"block_{i}")(tokens, pos)
            # the reshape quirk: read the tokens as (B, 2, C, h, w) in NCHW, then transpose to (B, 2, h, w, C)
            x = u.reshape(b, 2, c, h, w).transpose(0, 1, 3, 4, 2)

        # post-projection per pixel: depthwise transposed 1x1 (scale + bias), then a 1x1 conv without bias
        post_scale = self.param("post_scale", CONV_INIT, (c,), jnp.float32)
        post_bias = self.param("post_bias", nn.initializers.zeros, (c,), jnp.float32)
        dt = x.dtype
        x = x * jnp.asarray(post_scale, dt) + jnp.asarray(post_bias, dt)
        x = nn.Dense(c, use_bias=False, dtype=self.dtype, kernel_init=CONV_INIT, name="post_proj")(x)
        return x[:, 0], x[:, 1]
