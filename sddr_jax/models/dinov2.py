"""DINOv2 ViT encoder (patch 14) as used by Depth Anything V2, in Flax linen.

Not part of the SDDR spec: this is the backbone of the JAX-native base predictor (docs/method.md §1, "pluggable
predictors"). It follows the original Depth Anything V2 repository (`depth_anything_v2/dinov2.py`) and the
Hugging Face `Dinov2Backbone`, which compute the same network and differ only in how they interpolate the
position embeddings for a grid other than 37 x 37 (see `pos_embed_mode`).

Parameter names follow the original repository (`blocks_3/attn/qkv`, `ls1`, `norm`, ...) so that the
converter from the original `.pth` layout is a rename plus transposes; the Hugging Face layout is mapped to
the same names (see `sddr_jax/convert/depth_anything.py`).
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

PATCH_SIZE = 14
LAYER_NORM_EPS = 1e-6
# The original repository adds 0.1 to the target grid size before computing the bicubic scale factor
# (a work-around from DINO, facebookresearch/dino#8); Hugging Face resizes to the exact size instead.
ORIGINAL_INTERPOLATE_OFFSET = 0.1
POS_EMBED_MODES = ("hf", "original")


def _cubic_weights(t: np.ndarray, a: float = -0.75) -> np.ndarray:
    """Keys cubic convolution weights of the 4 taps at offsets -1, 0, 1, 2 (PyTorch and OpenCV use a = -0.75)."""

    def near(x):  # |x| <= 1
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a

    return np.stack([far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)], axis=-1)


def cubic_half_pixel_taps(
    in_size: int, out_size: int, scale: float | None = None, coords: str = "opencv"
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (out, 4) and weights (out, 4) of a half-pixel bicubic resize along one axis.

    This is PyTorch's `interpolate(mode="bicubic", align_corners=False, antialias=False)` and OpenCV's
    `INTER_CUBIC`: source x = (dst + 0.5) * s - 0.5 with s = in/out (or 1/scale when PyTorch is given a
    `scale_factor`), a = -0.75, and out-of-range taps clamped to the border (replicate).
    coords "opencv": x in float64 (OpenCV); "torch": s and x in float32 as ATen computes them, which moves
    x by up to ~1e-6 and the result by ~1e-5 at a 2x upsampling. Weights are then evaluated in float64.
    """
    if coords == "torch":
        s = np.float32(1.0 / scale) if scale is not None else np.float32(in_size) / np.float32(out_size)
        x = (s * (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)).astype(np.float32)
        x0 = np.floor(x)
        t = (x - x0).astype(np.float64)
    elif coords == "opencv":
        s = (1.0 / scale) if scale is not None else in_size / out_size
        x = (np.arange(out_size, dtype=np.float64) + 0.5) * s - 0.5
        x0 = np.floor(x)
        t = x - x0
    else:
        raise ValueError(f"coords: expected 'opencv' or 'torch', got {coords!r}")
    idx = x0[:, None].astype(np.int64) + np.arange(-1, 3)[None, :]
    return np.clip(idx, 0, in_size - 1), _cubic_weights(t)


def cubic_half_pixel_matrix(in_size: int, out_size: int, scale: float | None = None, coords: str = "opencv") -> np.ndarray:
    """The (out, in) matrix of `cubic_half_pixel_taps` (clamped taps accumulate on the border pixel)."""
    idx, w = cubic_half_pixel_taps(in_size, out_size, scale, coords)
    m = np.zeros((out_size, in_size), np.float64)
    np.add.at(m, (np.repeat(np.arange(out_size), 4), idx.reshape(-1)), w.reshape(-1))
    return m


def interpolate_pos_embed(
    pos_embed: Array, grid_hw: tuple[int, int], mode: str = "hf", offset: float = ORIGINAL_INTERPOLATE_OFFSET
) -> Array:
    """Resize the patch position embeddings (1, 1 + N*N, D) to a (gh, gw) grid; returns (1, 1 + gh*gw, D).

    mode "hf": bicubic to exactly (gh, gw) (Hugging Face `Dinov2Embeddings.interpolate_pos_encoding`).
    mode "original": bicubic with scale factor (g + offset) / N (original DINOv2 / Depth Anything V2 code),
    which gives the same grid size but slightly different source coordinates.
    Both skip the resize when the grid is the stored N x N one. Done in float32 like both references.
    """
    if mode not in POS_EMBED_MODES:
        raise ValueError(f"pos_embed_mode: expected one of {POS_EMBED_MODES}, got {mode!r}")
    gh, gw = grid_hw
    num_positions = pos_embed.shape[1] - 1
    n = int(math.isqrt(num_positions))
    if n * n != num_positions:
        raise ValueError(f"pos_embed: expected 1 + N*N positions, got {pos_embed.shape[1]}")
    if (gh, gw) == (n, n):
        return pos_embed
    dim = pos_embed.shape[-1]
    cls_pos, patch_pos = pos_embed[:, :1], pos_embed[:, 1:].astype(jnp.float32).reshape(n, n, dim)
    if mode == "hf":
        mh, mw = cubic_half_pixel_matrix(n, gh, coords="torch"), cubic_half_pixel_matrix(n, gw, coords="torch")
    else:
        # The original passes scale_factor=(sx, sy) with output size floor(n * s) = floor(g + offset) = g.
        mh = cubic_half_pixel_matrix(n, gh, scale=(gh + offset) / n, coords="torch")
        mw = cubic_half_pixel_matrix(n, gw, scale=(gw + offset) / n, coords="torch")
    hp = jax.lax.Precision.HIGHEST
    patch_pos = jnp.einsum("yh,hwd->ywd", jnp.asarray(mh, jnp.float32), patch_pos, precision=hp)
    patch_pos = jnp.einsum("xw,ywd->yxd", jnp.asarray(mw, jnp.float32), patch_pos, precision=hp)
    patch_pos = patch_pos.reshape(1, gh * gw, dim).astype(pos_embed.dtype)
    return jnp.concatenate([cls_pos, patch_pos], axis=1)


class LayerScale(nn.Module):
    """Per-channel scale `gamma` of a residual branch (DINOv2 layer scale; init 1.0 in Depth Anything V2)."""

    dim: int
    init_value: float = 1.0

    @nn.compact
    def __call__(self, x: Array) -> Array:
        gamma = self.param("gamma", nn.initializers.constant(self.init_value), (self.dim,))
        return x * gamma.astype(x.dtype)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (original `MemEffAttention`, no dropout)."""

    dim: int
    num_heads: int
    dtype: jnp.dtype | None = None
    query_chunk: int = 1024  # 0: never chunk

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, n, _ = x.shape
        head_dim = self.dim // self.num_heads
        qkv = nn.Dense(3 * self.dim, dtype=self.dtype, name="qkv")(x)
        qkv = qkv.reshape(b, n, 3, self.num_heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # (B, N, heads, head_dim)
        q = q * jnp.asarray(head_dim**-0.5, q.dtype)

        def attend(q_chunk):
            logits = jnp.einsum("bqhd,bkhd->bhqk", q_chunk, k)
            # Softmax in float32 even under bf16: the logits of thousands of tokens need the range.
            weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
            return jnp.einsum("bhqk,bkhd->bqhd", weights, v)

        chunk = self.query_chunk
        if chunk and n > 2 * chunk:
            # Long sequences (1036^2 input: 5477 tokens) in query chunks, one after another: the full
            # (B, heads, N, N) logits would be 0.7 GB per layer for ViT-S. Exact: rows are independent.
            pad = (-n) % chunk
            qp = jnp.pad(q, ((0, 0), (0, pad), (0, 0), (0, 0))).reshape(b, (n + pad) // chunk, chunk, self.num_heads, head_dim)
            out = jax.lax.map(attend, jnp.moveaxis(qp, 1, 0))  # (chunks, B, chunk, heads, head_dim)
            out = jnp.moveaxis(out, 0, 1).reshape(b, n + pad, self.num_heads, head_dim)[:, :n]
        else:
            out = attend(q)
        return nn.Dense(self.dim, dtype=self.dtype, name="proj")(out.reshape(b, n, self.dim))


class Mlp(nn.Module):
    dim: int
    hidden_dim: int
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        x = nn.Dense(self.hidden_dim, dtype=self.dtype, name="fc1")(x)
        x = nn.gelu(x, approximate=False)  # torch nn.GELU() / HF "gelu" are the exact erf form
        return nn.Dense(self.dim, dtype=self.dtype, name="fc2")(x)


def _layer_norm(dtype, name: str) -> nn.LayerNorm:
    # Two-pass variance like PyTorch; statistics in float32 even under bf16.
    return nn.LayerNorm(epsilon=LAYER_NORM_EPS, use_fast_variance=False, dtype=dtype, param_dtype=jnp.float32, name=name)


class Block(nn.Module):
    """Pre-norm transformer block with layer scale: x + ls1(attn(norm1 x)), then x + ls2(mlp(norm2 x))."""

    dim: int
    num_heads: int
    mlp_ratio: float = 4.0
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        h = Attention(self.dim, self.num_heads, dtype=self.dtype, name="attn")(_layer_norm(self.dtype, "norm1")(x))
        x = x + LayerScale(self.dim, name="ls1")(h)
        h = Mlp(self.dim, int(self.dim * self.mlp_ratio), dtype=self.dtype, name="mlp")(_layer_norm(self.dtype, "norm2")(x))
        return x + LayerScale(self.dim, name="ls2")(h)


class DinoV2(nn.Module):
    """DINOv2 ViT returning the layer-normed patch tokens of the blocks in `out_indices`.

    Input: (B, H, W, 3) ImageNet-normalised RGB with H, W multiples of `patch_size`.
    Output: a tuple of (B, H/14, W/14, dim) maps, one per index of `out_indices` (0-based block indices, as
    the original `get_intermediate_layers`), each passed through the final LayerNorm `norm`.
    `pretrain_grid` is the side of the stored position-embedding grid (518 / 14 = 37).
    """

    dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    out_indices: Sequence[int] = (2, 5, 8, 11)
    patch_size: int = PATCH_SIZE
    pretrain_grid: int = 37
    pos_embed_mode: str = "hf"
    dtype: jnp.dtype | None = None

    @nn.compact
    def __call__(self, x: Array) -> tuple[Array, ...]:
        b, h, w, _ = x.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"DinoV2 input: height and width must be multiples of {p}, got {h}x{w}")
        idx = tuple(self.out_indices)
        if not idx or list(idx) != sorted(set(idx)) or idx[0] < 0 or idx[-1] >= self.depth:
            raise ValueError(f"out_indices {idx}: expected increasing block indices in [0, {self.depth})")
        gh, gw = h // p, w // p
        tokens = nn.Conv(
            self.dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype, name="patch_embed"
        )(x.astype(self.dtype) if self.dtype is not None else x)
        tokens = tokens.reshape(b, gh * gw, self.dim)
        cls_token = self.param("cls_token", nn.initializers.normal(1e-6), (1, 1, self.dim))
        pos_embed = self.param(
            "pos_embed", nn.initializers.truncated_normal(0.02), (1, self.pretrain_grid**2 + 1, self.dim)
        )
        tokens = jnp.concatenate([jnp.broadcast_to(cls_token, (b, 1, self.dim)).astype(tokens.dtype), tokens], axis=1)
        tokens = tokens + interpolate_pos_embed(pos_embed, (gh, gw), self.pos_embed_mode).astype(tokens.dtype)
        norm = _layer_norm(self.dtype, "norm")
        outputs = []
        for i in range(max(self.out_indices) + 1):
            tokens = Block(self.dim, self.num_heads, self.mlp_ratio, dtype=self.dtype, name=f"blocks_{i}")(tokens)
            if i in self.out_indices:
                outputs.append(norm(tokens)[:, 1:].reshape(b, gh, gw, self.dim))
        # Blocks after the last tapped one would never reach the depth head, so they are not built (for the
        # Depth Anything V2 sizes the last tapped block is the last block anyway).
        return tuple(outputs)
