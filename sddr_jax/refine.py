"""One-stage inference with the official demo's preprocessing (spec 5.1).

    low, high (any sizes) --R_nearest_torch--> S x S --min-max each map--> Refiner --> refined (S x S)
    --OpenCV INTER_LINEAR--> (H, W)

The pieces are public so that other pipelines (the coarse-to-fine two-stage path lives in its own module)
reuse exactly the same steps: `minmax_normalize` (with a constant-map guard), `refiner_inference` (the
jitted min-max + Refiner call, the official `Gradient_FusionModel_FFM.inference`), `resize_nearest_host`
and `resize_linear_host` (the host-side resizes of the demo).

Constant maps: the official code divides by max - min and returns NaN for a constant map. Here a constant
map normalises to all zeros (x - min = 0 divided by 1), so a constant input never produces NaN.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from sddr_jax.errors import UserError
from sddr_jax.models import Refiner
from sddr_jax.models.refiner import SIZE_MULTIPLE
from sddr_jax.ops import nearest_indices

Array = jax.Array
DEFAULT_SIZE = 2048


def check_size(size: Any, name: str = "size") -> int:
    """The refiner's working size: a positive multiple of 128 (UserError otherwise)."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
        raise UserError(f"{name} must be an integer multiple of {SIZE_MULTIPLE}, got {size!r}")
    size = int(size)
    if size <= 0 or size % SIZE_MULTIPLE:
        raise UserError(
            f"{name} must be a positive multiple of {SIZE_MULTIPLE} (e.g. 1024 or 2048), got {size}"
        )
    return size


def minmax_normalize(x: Array, axis: Sequence[int] = (-3, -2, -1)) -> Array:
    """(x - min) / (max - min) over `axis` (default: each map of a (B, H, W, C) batch), jittable.

    A constant map (max == min) maps to zeros instead of NaN.
    """
    lo = jnp.min(x, axis=tuple(axis), keepdims=True)
    hi = jnp.max(x, axis=tuple(axis), keepdims=True)
    rng = hi - lo
    return (x - lo) / jnp.where(rng > 0, rng, jnp.ones_like(rng))


@functools.partial(jax.jit, static_argnames=("dtype", "normalize"))
def refiner_inference(params: Mapping, low: Array, high: Array, dtype: Any = None, normalize: bool = True):
    """Jitted refiner call on (B, S, S, 1) maps; min-max normalises each map first (official `inference`).

    Returns the full `RefinerOutput`. `dtype` is the compute dtype (None = float32, or jnp.bfloat16).
    """
    if normalize:
        low, high = minmax_normalize(low), minmax_normalize(high)
    return Refiner(dtype=dtype).apply({"params": params}, low, high, train=False)


def _as_batch(x: Any, name: str) -> tuple[np.ndarray, int]:
    """(H, W) / (H, W, 1) / (B, H, W, 1) -> float32 (B, H, W, 1) plus the original rank."""
    try:
        a = np.asarray(x, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise UserError(f"{name}: expected a numeric depth map, got {type(x).__name__} ({e})") from None
    rank = a.ndim
    if rank == 2:
        a = a[None, :, :, None]
    elif rank == 3 and a.shape[-1] == 1:
        a = a[None]
    elif rank == 4 and a.shape[-1] == 1:
        pass
    else:
        raise UserError(f"{name}: expected a map of shape (H, W), (H, W, 1) or (B, H, W, 1), got {a.shape}")
    if min(a.shape[1:3]) < 1 or a.shape[0] < 1:
        raise UserError(f"{name}: empty map of shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise UserError(f"{name}: contains NaN or infinite values")
    return a, rank


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


def unwrap_params(params: Mapping) -> Mapping:
    """Accept either {'params': tree} or the tree itself."""
    if isinstance(params, Mapping) and set(params.keys()) == {"params"}:
        return params["params"]
    return params


def refine_one_stage(
    params: Mapping,
    low: Any,
    high: Any,
    size: int = DEFAULT_SIZE,
    *,
    out_hw: tuple[int, int] | None = None,
    dtype: Any = None,
    batch_size: int = 1,
) -> np.ndarray:
    """Refine a low/high pair the way the official demo does (spec 5.1); returns the float refined map.

    low, high: (H, W), (H, W, 1) or (B, H, W, 1) arrays (the two may have different H, W; B must match).
    size: working size S, a multiple of 128 (2048 in the official demo).
    out_hw: output (H, W); default: the size of `high` (pass the RGB image's size to match the demo).
    dtype: compute dtype of the refiner (None = float32; jnp.bfloat16 for speed).
    batch_size: maps per refiner call. The last chunk is padded to `batch_size`, so any number of maps
    costs one compilation; 1 (the default) also bounds memory at S = 2048.
    Returns float32 with the rank of `high`: (H', W'), (H', W', 1) or (B, H', W', 1); not quantised.
    """
    size = check_size(size)
    low_b, _ = _as_batch(low, "low")
    high_b, rank = _as_batch(high, "high")
    if low_b.shape[0] != high_b.shape[0]:
        raise UserError(
            f"low and high must hold the same number of maps, got {low_b.shape[0]} and {high_b.shape[0]}"
        )
    if out_hw is None:
        out_hw = tuple(high_b.shape[1:3])
    else:
        try:
            out_hw = (int(out_hw[0]), int(out_hw[1]))
        except (TypeError, ValueError, IndexError):
            raise UserError(f"out_hw must be (height, width), got {out_hw!r}") from None
        if min(out_hw) < 1:
            raise UserError(f"out_hw must be positive, got {out_hw}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise UserError(f"batch_size must be a positive integer, got {batch_size!r}")
    params = unwrap_params(params)
    n = low_b.shape[0]
    chunks = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        pad = batch_size - (stop - start)
        take = np.r_[np.arange(start, stop), np.full(pad, stop - 1, np.int64)]
        low_s = resize_nearest_host(low_b[take], (size, size))
        high_s = resize_nearest_host(high_b[take], (size, size))
        out = refiner_inference(params, jnp.asarray(low_s), jnp.asarray(high_s), dtype=dtype)
        chunks.append(np.asarray(out.refined, np.float32)[: stop - start])
    result = resize_linear_host(np.concatenate(chunks, 0), out_hw)
    if rank == 2:
        return result[0, :, :, 0]
    if rank == 3:
        return result[0]
    return result


__all__ = [
    "DEFAULT_SIZE",
    "check_size",
    "minmax_normalize",
    "refiner_inference",
    "refine_one_stage",
    "resize_linear_host",
    "resize_nearest_host",
    "unwrap_params",
]

# Coarse-to-fine two-stage inference (spec 5.2) lives beside the window functions; re-exported here so that
# both inference pipelines are `sddr_jax.refine.*`. coarse_to_fine imports this module lazily (no cycle).
from sddr_jax.coarse_to_fine import refine_two_stage  # noqa: E402

__all__.append("refine_two_stage")
