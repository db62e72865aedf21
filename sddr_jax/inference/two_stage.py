"""Coarse-to-fine refinement as one compiled program: two-stage inference (docs/method.md §5.2, §5.5).

The official code refines one window at a time, with a host round trip per window. Here the whole pass
(global pass and every step) is one jitted function per (image size, schedule, S): each step's adaptive
levels are computed in-graph from the current map, and per group of windows of one shape a `lax.map` runs
the base predictor on each window's RGB crop at that window's own resolution (`lax.switch` over the <= 3
candidate resolutions, so no unused resolution is predicted), then the refiner, the least-squares alignment
and the cubic resize back. The only sequential dependency of the official procedure, the merge order of
overlapping windows, is kept exactly by applying the feather blends in window order (`blend="official"`).
The same building blocks serve the edge pseudo-labels (`sddr_jax.training.labels`). See docs/windows.md.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sddr_jax.errors import UserError
from sddr_jax.inference.one_stage import RefinerFn, handle_nonfinite, unwrap_params
from sddr_jax.models.refiner import check_params
from sddr_jax.ops import align_scale_shift, apply_scale_shift, fill_invalid, minmax_normalize, resize_bilinear, resize_cv
from sddr_jax.inference.windows import (
    BASE_RESOLUTION,
    BLENDS,
    MAX_RESOLUTION,
    OFFICIAL_SCHEDULE,
    Window,
    blend_windows,
    candidate_resolutions,
    check_schedule,
    resolution_factors,
    resolution_factors_host,
    window_grid,
)

Array = jax.Array
RefinerCallable = Callable[[Any, Array, Array], Array]

# Official global pass (docs/method.md §5.2 step 2): predictor at 448^2 (low) and 1024^2 (high).
GLOBAL_SIZES = (448, 1024)
RESOLUTIONS = ("adaptive", "fixed")


# ----------------------------------------------------------------------------------------------------
# the refiner call

# The default refiner function: the official b0 refiner (min-max each input). Any hashable function
# `refiner_fn(params, low, high) -> (N, S, S, 1)` with the same meaning can replace it (another model config via
# `RefinerFn.from_config`, bf16, a stand-in in tests); it is a static argument of the jitted pipelines.
official_refiner = RefinerFn()


# ----------------------------------------------------------------------------------------------------
# predictors as jit arguments: array leaves are traced, everything else (functions, ints) is static


def _is_array(x: Any) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic))


class _Static:
    """Hashable holder of a predictor's non-array leaves and tree structure (a static jit argument)."""

    def __init__(self, treedef: Any, leaves: tuple):
        self.treedef, self.leaves = treedef, leaves

    def _key(self):
        return (self.treedef, tuple((type(v), v) if v is not None else None for v in self.leaves))

    def __hash__(self):
        return hash(self._key())

    def __eq__(self, other):
        return isinstance(other, _Static) and self._key() == other._key()


def partition_predictor(predictor: Any) -> tuple[list, _Static]:
    if not callable(predictor):
        raise UserError(
            f"predictor: expected a callable predict(image, size) -> depth, got {type(predictor).__name__}"
        )
    leaves, treedef = jax.tree_util.tree_flatten(predictor)
    dynamic = [v if _is_array(v) else None for v in leaves]
    static = tuple(None if _is_array(v) else v for v in leaves)
    try:
        hash(static)
    except TypeError:
        raise UserError(
            "predictor: its non-array fields must be hashable (they are static under jit); "
            "make the predictor a pytree (e.g. a flax.struct.dataclass) whose arrays are leaves"
        ) from None
    return dynamic, _Static(treedef, static)


def combine_predictor(dynamic: list, static: _Static) -> Any:
    leaves = [d if s is None else s for d, s in zip(dynamic, static.leaves)]
    return jax.tree_util.tree_unflatten(static.treedef, leaves)


# ----------------------------------------------------------------------------------------------------
# building blocks (pure; called inside jit)


def crop_window(x: Array, w: Window) -> Array:
    return x[:, w.y0 : w.y1, w.x0 : w.x1, :]


def _predict(predictor: Callable, image: Array, res: int, size: int) -> Array:
    """Predictor at res^2, checked, then R_bilinear_torch to size^2 (the official high-input resize)."""
    out = predictor(image, int(res))
    expect = (image.shape[0], res, res, 1)
    if tuple(out.shape) != expect:
        raise UserError(
            f"predictor: predict(image {tuple(image.shape)}, {res}) must return {expect}, "
            f"got {tuple(out.shape)}"
        )
    return resize_bilinear(out.astype(jnp.float32), (size, size))


def _global(params, image, predictor, size, global_sizes, refiner_fn):
    low = _predict(predictor, image, global_sizes[0], size)
    high = _predict(predictor, image, global_sizes[1], size)
    d0 = refiner_fn(params, low, high)
    return resize_cv(minmax_normalize(d0.astype(jnp.float32)), image.shape[1:3], "nearest"), low, high


def global_pass(params, image, predictor, size, global_sizes, refiner_fn) -> Array:
    """docs/method.md §5.2 step 2: refine the whole image at size^2; min-max; OpenCV nearest to H x W -> base map B."""
    return _global(params, image, predictor, size, global_sizes, refiner_fn)[0]


def _shape_groups(windows: Sequence[Window]) -> dict[tuple[int, int], list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for n, w in enumerate(windows):
        groups.setdefault(w.shape, []).append(n)
    return groups


def _predict_window(predictor: Callable, crop: Array, *, res: int, size: int) -> Array:
    """The predictor on ONE window crop (h, w, C) at res^2, then R_bilinear_torch to (size, size, 1)."""
    return _predict(predictor, crop[None], res, size)[0]


def _refine_aligned(params, refiner_fn, low, high):
    """Refiner on a batch of windows (n, S, S, 1), each aligned by least squares to its low input (§5.2 d)."""
    refined = refiner_fn(params, low, high).astype(jnp.float32)
    scale, shift = align_scale_shift(refined, low)
    return apply_scale_shift(refined, scale, shift)


def window_patches(params, image, base, predictor, windows, levels, size, refiner_fn, resolution_cfg,
                   window_batch=1):
    """One coarse-to-fine step up to the merge: -> the aligned window patches (B, h_n, w_n, 1), in window order.

    `levels` (B, N) int32: each (image, window)'s adaptive level (0 flat / 1 mean / 2 edge), computed in-graph
    or on the host. Per group of windows of one shape, a `lax.map` runs over the group's (window, image)
    pairs: the predictor on the RGB crop at the pair's own resolution only (`lax.switch` over the distinct
    candidate resolutions of that shape: none is computed and thrown away), R_bilinear_torch to S. Then the
    low inputs (B on the window, OpenCV nearest to S) and the high inputs go through the refiner
    `window_batch` windows per call (`None`: all windows of the group in one call), each refined window is
    aligned to its low input and resized back to the window with R_cv_cubic (docs/method.md §5.2 d).
    """
    b_size = base.shape[0]
    base_res, max_res, _ = resolution_cfg
    patches: list[Array | None] = [None] * len(windows)
    for shape, members in _shape_groups(windows).items():
        g = len(members)
        # (G * B, ...) in (window, image) order
        crops = jnp.stack([crop_window(image, windows[n]) for n in members]).reshape((g * b_size,) + shape
                                                                                     + image.shape[-1:])
        lows = jnp.stack([resize_cv(crop_window(base, windows[n]), (size, size), "nearest") for n in members])
        lows = lows.reshape((g * b_size, size, size, 1))
        level = jnp.stack([levels[:, n] for n in members]).reshape(-1)
        cands = candidate_resolutions(shape, base_res, max_res)
        distinct = list(dict.fromkeys(cands))
        branch = jnp.asarray([distinct.index(r) for r in cands], jnp.int32)
        branches = [functools.partial(_predict_window, predictor, res=r, size=size) for r in distinct]

        def predict(args, branch=branch, branches=branches):
            crop, lv = args
            if len(branches) == 1:
                return branches[0](crop)
            return lax.switch(branch[lv], branches, crop)

        highs = lax.map(predict, (crops, level))
        batch = g * b_size if window_batch is None else min(int(window_batch), g * b_size)
        if batch >= g * b_size:
            aligned = _refine_aligned(params, refiner_fn, lows, highs)
            out = resize_cv(aligned, shape, "cubic")
        else:
            def refine(args):
                low, high = args
                return resize_cv(_refine_aligned(params, refiner_fn, low[None], high[None])[0], shape, "cubic")

            out = lax.map(refine, (lows, highs), batch_size=batch if batch > 1 else None)
        out = out.reshape((g, b_size) + shape + (1,))
        for i, n in enumerate(members):
            patches[n] = out[i]
    return patches


def _levels(base, windows, resolution_cfg):
    if resolution_cfg[2]:  # "fixed": factor 1.0 everywhere
        return jnp.ones((base.shape[0], len(windows)), jnp.int32)
    return resolution_factors(base, windows)


def two_stage_body(params, image, predictor, *, steps, size, global_sizes, refiner_fn, blend, resolution_cfg,
                   window_batch=1):
    """The whole two-stage pass (docs/method.md §5.2) as one pure function: -> (U, global low, global high)."""
    base, low, high = _global(params, image, predictor, size, global_sizes, refiner_fn)
    height, width = image.shape[1:3]
    for pieces, cover in steps:
        windows = window_grid(height, width, pieces, cover)
        levels = _levels(base, windows, resolution_cfg)
        patches = window_patches(params, image, base, predictor, windows, levels, size, refiner_fn,
                                 resolution_cfg, window_batch)
        base = blend_windows(base, patches, windows, mode=blend)
    return base, low, high

# ----------------------------------------------------------------------------------------------------
# jitted cores: one program for the whole pass, or (plan_on_host) the global pass and one program per step


_STATIC = ("pred_static", "steps", "size", "global_sizes", "refiner_fn", "blend", "resolution_cfg", "window_batch")


@functools.partial(jax.jit, static_argnames=_STATIC)
def _two_stage_jit(params, image, pred_dynamic, *, pred_static, steps, size, global_sizes, refiner_fn, blend,
                   resolution_cfg, window_batch):
    predictor = combine_predictor(pred_dynamic, pred_static)
    return two_stage_body(params, image, predictor, steps=steps, size=size, global_sizes=global_sizes,
                          refiner_fn=refiner_fn, blend=blend, resolution_cfg=resolution_cfg,
                          window_batch=window_batch)


@functools.partial(jax.jit, static_argnames=("pred_static", "size", "global_sizes", "refiner_fn"))
def _global_jit(params, image, pred_dynamic, *, pred_static, size, global_sizes, refiner_fn):
    return _global(params, image, combine_predictor(pred_dynamic, pred_static), size, global_sizes, refiner_fn)


@functools.partial(
    jax.jit, static_argnames=("pred_static", "windows", "size", "refiner_fn", "blend", "resolution_cfg",
                              "window_batch"),
)
def two_stage_step(params, image, base, levels, pred_dynamic, *, pred_static, windows, size, refiner_fn, blend,
                   resolution_cfg, window_batch=1):
    """One step with given levels (B, N) (a traced argument: one compilation per step, whatever the levels)."""
    predictor = combine_predictor(pred_dynamic, pred_static)
    patches = window_patches(params, image, base, predictor, windows, levels, size, refiner_fn, resolution_cfg,
                             window_batch)
    return blend_windows(base, patches, windows, mode=blend)


# ----------------------------------------------------------------------------------------------------
# public API


def check_common(image, size, blend, resolution, global_sizes, base_resolution, max_resolution, name):
    if getattr(image, "ndim", None) != 4:
        shape = tuple(getattr(image, "shape", ()))
        raise UserError(f"{name}: expected an image batch (B, H, W, C), got shape {shape}")
    size = int(size)
    if size < 1:
        raise UserError(f"{name}: size must be a positive int, got {size}")
    if blend not in BLENDS:
        raise UserError(f"{name}: blend must be one of {BLENDS}, got {blend!r}")
    if resolution not in RESOLUTIONS:
        raise UserError(f"{name}: resolution must be one of {RESOLUTIONS}, got {resolution!r}")
    try:
        gs = tuple(min(int(s), int(max_resolution)) for s in global_sizes)
    except (TypeError, ValueError):
        raise UserError(f"{name}: global_sizes must be two ints (low, high), got {global_sizes!r}") from None
    if len(gs) != 2 or min(gs) < 1:
        raise UserError(f"{name}: global_sizes must be two positive ints (low, high), got {global_sizes!r}")
    if int(base_resolution) < 0 or int(max_resolution) < 32:
        raise UserError(
            f"{name}: need base_resolution >= 0 and max_resolution >= 32, "
            f"got {base_resolution}, {max_resolution}"
        )
    return size, gs


def refine_two_stage(
    params: Any,
    rgb: Array,
    predictor: Callable[[Array, int], Array],
    schedule: Sequence[tuple[int, float]] = OFFICIAL_SCHEDULE,
    size: int = 1024,
    blend: str = "official",
    *,
    resolution: str = "adaptive",
    plan_on_host: bool = False,
    base_resolution: int = BASE_RESOLUTION,
    max_resolution: int = MAX_RESOLUTION,
    global_sizes: Sequence[int] = GLOBAL_SIZES,
    refiner_fn: RefinerCallable = official_refiner,
    window_batch: int | None = 1,
    nonfinite: str = "error",
    return_global: bool = False,
) -> Array | dict[str, Array]:
    """Two-stage coarse-to-fine refinement (docs/method.md §5.2): rgb (B, H, W, C) -> refined depth (B, H, W, 1).

    `predictor(image, res) -> (B, res, res, 1)` is the base depth predictor (sddr_jax.inference.predictors):
    it runs on the whole image at `global_sizes` (448^2 and 1024^2) for the global pass at `size`^2, then,
    for each (pieces, cover) of `schedule` (official `((2, 0.2), (3, 0.25))`, paper-like
    `windows.PAPER_SCHEDULE`), on every window's RGB crop at the window's adaptive resolution; each window
    is refined against the previous step's map, aligned and merged with the feather mask
    (`blend="official"`: the official sequential order; `"average"`: order-independent). For a precomputed
    predictor, `rgb` is what it reads (`stack_maps`): its window crops are crops of the stored maps, which
    adds no detail.

    The whole pass is ONE compiled program per (image size, schedule, size, options), cached by jax: the
    levels are chosen in-graph and only the chosen resolution of each window is predicted.
    resolution: "adaptive" = the official three-level rule (docs/method.md §5.2 b-c); "fixed" = factor 1.0
    for every window. plan_on_host=True computes the levels on the host exactly as the official code
    (float64 OpenCV Sobel, numpy percentile; the in-graph float32 rule can, on rare ties at the percentile,
    put a window on another level): one program for the global pass and one per step, with a
    device-to-host copy of the map in between. window_batch: windows per refiner call (1, the default, is the
    fastest on CPU and the leanest; None = every window of a shape group in one call, for accelerators).
    nonfinite: NaN / inf in `rgb`: "error" (default; one bad pixel would spread through the min-max
    normalisation to the whole map) or "fill" (each channel's finite mean).
    Returns the working map U of the last step (values on the [0, 1] scale of the global pass), or with
    `return_global=True` the dict {"depth": U, "low", "high": the global pass's inputs (B, size, size, 1)}.
    """
    steps = check_schedule(schedule)
    size, gs = check_common(
        rgb, size, blend, resolution, global_sizes, base_resolution, max_resolution, "refine_two_stage"
    )
    if window_batch is not None and (isinstance(window_batch, bool) or int(window_batch) < 1):
        raise UserError(f"refine_two_stage: window_batch must be a positive int or None, got {window_batch!r}")
    window_batch = None if window_batch is None else int(window_batch)
    pred_dynamic, pred_static = partition_predictor(predictor)
    if isinstance(refiner_fn, RefinerFn):  # the refiner of a model config: the params must fit it
        check_params(unwrap_params(params), dataclasses.asdict(refiner_fn), where="refine_two_stage params")
    traced = isinstance(rgb, jax.core.Tracer)
    if plan_on_host and traced:
        raise UserError(
            "refine_two_stage: plan_on_host=True needs concrete arrays (it cannot run under jit/vmap)"
        )
    height, width = int(rgb.shape[1]), int(rgb.shape[2])
    for pieces, cover in steps:  # a clear error for an image too small for a step, before anything runs
        window_grid(height, width, pieces, cover)
    if not traced:
        a = np.asarray(rgb, np.float32)
        if not np.all(np.isfinite(a)):
            if nonfinite == "fill":  # per image and channel
                a = fill_invalid(a, axis=(1, 2))
            else:
                handle_nonfinite(a, "refine_two_stage: the input", nonfinite)
        rgb = a
    rgb = jnp.asarray(rgb, jnp.float32)
    cfg = (int(base_resolution), int(max_resolution), resolution == "fixed")
    if not plan_on_host:
        base, low, high = _two_stage_jit(
            params, rgb, pred_dynamic, pred_static=pred_static, steps=steps, size=size, global_sizes=gs,
            refiner_fn=refiner_fn, blend=blend, resolution_cfg=cfg, window_batch=window_batch,
        )
    else:
        base, low, high = _global_jit(params, rgb, pred_dynamic, pred_static=pred_static, size=size,
                                      global_sizes=gs, refiner_fn=refiner_fn)
        for pieces, cover in steps:
            windows = window_grid(height, width, pieces, cover)
            if cfg[2]:
                levels = np.ones((rgb.shape[0], len(windows)), np.int32)
            else:
                levels = np.stack([resolution_factors_host(m[..., 0], windows) for m in np.asarray(base)])
            base = two_stage_step(
                params, rgb, base, jnp.asarray(levels, jnp.int32), pred_dynamic, pred_static=pred_static,
                windows=windows, size=size, refiner_fn=refiner_fn, blend=blend, resolution_cfg=cfg,
                window_batch=window_batch,
            )
    if return_global:
        return {"depth": base, "low": low, "high": high}
    return base


__all__ = [
    "GLOBAL_SIZES",
    "RESOLUTIONS",
    "RefinerCallable",
    "official_refiner",
    "refine_two_stage",
    "partition_predictor",
    "combine_predictor",
    "crop_window",
    "global_pass",
    "window_patches",
    "two_stage_body",
    "two_stage_step",
    "check_common",
]
