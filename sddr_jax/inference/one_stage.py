"""One-stage inference with the official demo's preprocessing (docs/method.md §5.1).

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

import dataclasses
import functools
import math
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from sddr_jax.errors import UserError
from sddr_jax.io import total_memory_bytes
from sddr_jax.models.refiner import SIZE_MULTIPLE, build_refiner, check_params, model_config_dict
from sddr_jax.ops import embedded_forms, fill_invalid, minmax_normalize, resize_linear_host, resize_nearest_host

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
    limit = max_size()
    if size > limit:
        need = size * size * _REFINER_BYTES_PER_PIXEL / 2**30
        raise UserError(f"{name} {size}: too large: the refiner needs about {need:,.0f} GiB at S={size} "
                        f"(limit S <= {limit} from this machine's memory; set ${MAX_SIZE_ENV} to change it)")
    return size


# Peak memory of one refiner call grows as S^2: about 450 bytes per working pixel in float32 on CPU (1.8 GiB
# peak RSS at S = 2048, docs/benchmarks.md); the limit keeps S^2 * 512 bytes under the machine's memory.
_REFINER_BYTES_PER_PIXEL = 512
MAX_SIZE_ENV = "SDDR_JAX_MAX_SIZE"


def max_size() -> int:
    """The largest working size S accepted: $SDDR_JAX_MAX_SIZE, else the largest multiple of 128 whose
    refiner pass fits the machine's memory (S^2 * 512 bytes)."""
    env = os.environ.get(MAX_SIZE_ENV)
    if env:
        try:
            return int(env)
        except ValueError:
            raise UserError(f"${MAX_SIZE_ENV}: expected an integer size, got {env!r}") from None
    s = int(math.sqrt(total_memory_bytes() / _REFINER_BYTES_PER_PIXEL))
    return max(SIZE_MULTIPLE, s - s % SIZE_MULTIPLE)


@functools.partial(jax.jit, static_argnames=("dtype", "normalize", "model_items"))
def _refiner_inference(params, low, high, *, dtype, normalize, model_items):
    if normalize:
        low, high = minmax_normalize(low), minmax_normalize(high)
    return build_refiner(dict(model_items), dtype=dtype).apply({"params": params}, low, high, train=False)


def refiner_inference(params: Mapping, low: Array, high: Array, dtype: Any = None, normalize: bool = True,
                      model_config: Any = None):
    """Jitted refiner call on (B, S, S, 1) maps; min-max normalises each map first (official `inference`).

    Returns the full `RefinerOutput`. `dtype` is the compute dtype (None = the model config's, float32 by
    default; or jnp.bfloat16). `model_config`: the refiner's model config (None = the official b0 refiner).
    """
    items = tuple(sorted(model_config_dict(model_config).items()))
    return _refiner_inference(params, low, high, dtype=dtype, normalize=bool(normalize), model_items=items)


@dataclasses.dataclass(frozen=True)
class RefinerFn:
    """`refiner_fn(params, low, high) -> refined (N, S, S, 1)` for the refiner of a model config.

    Hashable (a static argument of the jitted coarse-to-fine pipelines); inputs are min-max normalised
    per map as at inference. `RefinerFn.from_config(cfg)` builds it from any model config.
    """

    backbone: str = "b0"
    cross_iterations: int = 8
    dtype: str = "float32"
    upsample: str = "align_corners"

    @classmethod
    def from_config(cls, model_config: Any = None) -> "RefinerFn":
        return cls(**model_config_dict(model_config))

    def __call__(self, params, low, high):
        model = build_refiner(dataclasses.asdict(self))
        with embedded_forms():  # the refined map is read again by the pipeline around this call
            out = model.apply({"params": unwrap_params(params)}, minmax_normalize(low), minmax_normalize(high),
                              train=False)
        return out.refined


NONFINITE = ("error", "fill")


def handle_nonfinite(a: np.ndarray, name: str, nonfinite: str = "error") -> np.ndarray:
    """NaN / inf in a map: "error" (default) refuses it, naming `name`; "fill" replaces those pixels by the
    mean of the map's finite ones (per map over its last three axes; 0 for a map with none)."""
    if nonfinite not in NONFINITE:
        raise UserError(f"nonfinite: expected one of {NONFINITE}, got {nonfinite!r}")
    if np.all(np.isfinite(a)):
        return a
    if nonfinite == "error":
        raise UserError(f"{name}: contains NaN or infinite values (pass nonfinite='fill' to replace them by the "
                        "map's finite mean)")
    return fill_invalid(a, axis=tuple(range(1, a.ndim)))


def _as_batch(x: Any, name: str, nonfinite: str = "error") -> tuple[np.ndarray, int]:
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
    return handle_nonfinite(a, name, nonfinite), rank


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
    model_config: Any = None,
    nonfinite: str = "error",
) -> np.ndarray:
    """Refine a low/high pair the way the official demo does (docs/method.md §5.1); returns the float refined map.

    low, high: (H, W), (H, W, 1) or (B, H, W, 1) arrays (the two may have different H, W; B must match).
    size: working size S, a multiple of 128 (2048 in the official demo).
    out_hw: output (H, W); default: the size of `high` (pass the RGB image's size to match the demo).
    dtype: compute dtype of the refiner (None = float32; jnp.bfloat16 for speed).
    batch_size: maps per refiner call. The last chunk is padded to `batch_size`, so any number of maps
    costs one compilation; 1 (the default) also bounds memory at S = 2048.
    model_config: the refiner's model config (None = the official b0 refiner; a training checkpoint
    carries its own, see `sddr_jax.params.load_refiner`).
    nonfinite: NaN / inf in an input: "error" (default) or "fill" (the map's finite mean).
    Returns float32 with the rank of `high`: (H', W'), (H', W', 1) or (B, H', W', 1); not quantised.
    """
    size = check_size(size)
    low_b, _ = _as_batch(low, "low", nonfinite)
    high_b, rank = _as_batch(high, "high", nonfinite)
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
    check_params(params, model_config, where="refine_one_stage params")
    n = low_b.shape[0]
    chunks = []
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        pad = batch_size - (stop - start)
        take = np.r_[np.arange(start, stop), np.full(pad, stop - 1, np.int64)]
        low_s = resize_nearest_host(low_b[take], (size, size))
        high_s = resize_nearest_host(high_b[take], (size, size))
        out = refiner_inference(params, jnp.asarray(low_s), jnp.asarray(high_s), dtype=dtype,
                               model_config=model_config)
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
    "refiner_inference",
    "RefinerFn",
    "refine_one_stage",
    "unwrap_params",
]

