"""Batched coarse-to-fine refinement: two-stage inference and the edge pseudo-labels G_S (docs/method.md §5.2, §5.5, §6).

The official code refines one window at a time. Here every step's windows (of every image in the batch)
go through ONE refiner call: the windows are cropped with static coordinates, resized to the refiner size
S so that they share a shape, refined together, aligned, resized back and merged. The only sequential
dependency of the official procedure is the merge order of overlapping windows; it is kept exactly by
applying the feather blends in window order after the batched computation (`blend="official"`).

Window sizes differ slightly (the flush last column/row) and the predictor resolution differs per window
(adaptive rule), so the predictor calls are grouped: by (window height, window width, resolution) when the
resolutions are known on the host, or, inside jit, by window shape with every candidate resolution of the
three-level rule evaluated and the right one selected per window (see docs/windows.md).
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

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


def global_pass(params, image, predictor, size, global_sizes, refiner_fn) -> Array:
    """docs/method.md §5.2 step 2: refine the whole image at size^2; min-max; OpenCV nearest to H x W -> base map B."""
    low = _predict(predictor, image, global_sizes[0], size)
    high = _predict(predictor, image, global_sizes[1], size)
    d0 = refiner_fn(params, low, high)
    return resize_cv(minmax_normalize(d0.astype(jnp.float32)), image.shape[1:3], "nearest")


def _shape_groups(windows: Sequence[Window]) -> dict[tuple[int, int], list[int]]:
    groups: dict[tuple[int, int], list[int]] = {}
    for n, w in enumerate(windows):
        groups.setdefault(w.shape, []).append(n)
    return groups


def _highs_planned(image, predictor, windows, plan, size) -> Array:
    """High inputs (B, N, S, S, 1) with known per-(image, window) resolutions `plan` (B x N static ints).

    One predictor call per distinct (window height, window width, resolution).
    """
    b_size, n_win = image.shape[0], len(windows)
    groups: dict[tuple[int, int, int], list[tuple[int, int]]] = {}
    for b in range(b_size):
        for n, w in enumerate(windows):
            groups.setdefault((w.height, w.width, int(plan[b][n])), []).append((b, n))
    outs, order = [], []
    for (_, _, res), members in groups.items():
        crops = jnp.stack([crop_window(image[b : b + 1], windows[n])[0] for b, n in members])
        outs.append(_predict(predictor, crops, res, size))
        order.extend(b * n_win + n for b, n in members)
    highs = jnp.concatenate(outs, axis=0)
    highs = jnp.take(highs, jnp.asarray(np.argsort(np.asarray(order))), axis=0)
    return highs.reshape((b_size, n_win) + highs.shape[1:])


def _highs_selected(image, predictor, windows, index, candidates, size) -> Array:
    """High inputs (B, N, S, S, 1) when the factor level `index` (B, N) is only known in-graph.

    Per window shape, the predictor runs at each distinct candidate resolution for all images and windows of
    that shape, and each window keeps the output of its own level (static shapes, ~3x the predictor work).
    """
    b_size, n_win = image.shape[0], len(windows)
    outs, order = [], []
    for shape, members in _shape_groups(windows).items():
        cands = candidates[members[0]]
        crops = jnp.stack([crop_window(image, windows[n]) for n in members], axis=1)  # (B, G, h, w, C)
        crops = crops.reshape((-1,) + crops.shape[2:])
        by_res = {res: _predict(predictor, crops, res, size) for res in dict.fromkeys(cands)}
        stacked = jnp.stack([by_res[res] for res in cands])  # (levels, B*G, S, S, 1)
        level = jnp.stack([index[:, n] for n in members], axis=1).reshape(-1)  # (B*G,)
        chosen = jnp.take_along_axis(stacked, level[None, :, None, None, None], axis=0)[0]
        outs.append(chosen.reshape((b_size, len(members)) + chosen.shape[1:]))
        order.extend(members)
    highs = jnp.concatenate(outs, axis=1)
    if order != list(range(n_win)):
        highs = jnp.take(highs, jnp.asarray(np.argsort(np.asarray(order))), axis=1)
    return highs


def refine_windows(params, image, base, predictor, windows, size, refiner_fn, plan, resolution_cfg):
    """One coarse-to-fine step up to the merge: -> list of aligned window patches (B, h_n, w_n, 1).

    low input = B restricted to the window, OpenCV nearest to S (the code's rule; equal to R_nearest_torch
    for S = 2^k); high input = predictor on the image window (resolution by the plan or the in-graph rule),
    R_bilinear_torch to S; ONE refiner call on all B x N windows; least-squares scale/shift of each refined
    window to its low input; R_cv_cubic back to the window size (docs/method.md §5.2 d).
    """
    b_size, n_win = base.shape[0], len(windows)
    lows = jnp.stack([resize_cv(crop_window(base, w), (size, size), "nearest") for w in windows], axis=1)
    base_res, max_res, fixed = resolution_cfg
    cands = [candidate_resolutions(w.shape, base_res, max_res) for w in windows]
    if plan is None and fixed:  # factor 1.0 everywhere: a static plan, one predictor call per window shape
        plan = tuple(tuple(c[1] for c in cands) for _ in range(b_size))
    if plan is not None:
        highs = _highs_planned(image, predictor, windows, plan, size)
    else:
        index = resolution_factors(base, windows)
        highs = _highs_selected(image, predictor, windows, index, cands, size)
    flat = (b_size * n_win, size, size, 1)
    refined = refiner_fn(params, lows.reshape(flat), highs.reshape(flat))
    refined = refined.astype(jnp.float32).reshape(lows.shape)
    scale, shift = align_scale_shift(refined, lows)
    aligned = apply_scale_shift(refined, scale, shift)
    # Per-window resizes: slicing windows out of one stacked resize output is ~30x slower on XLA CPU.
    return [resize_cv(aligned[:, n], w.shape, "cubic") for n, w in enumerate(windows)]


# ----------------------------------------------------------------------------------------------------
# jitted cores


@functools.partial(jax.jit, static_argnames=("pred_static", "size", "global_sizes", "refiner_fn"))
def _global_pass_jit(params, image, pred_dynamic, *, pred_static, size, global_sizes, refiner_fn):
    return global_pass(params, image, combine_predictor(pred_dynamic, pred_static), size, global_sizes, refiner_fn)


@functools.partial(
    jax.jit,
    static_argnames=("pred_static", "windows", "size", "refiner_fn", "blend", "plan", "resolution_cfg"),
)
def two_stage_step(
    params, image, base, pred_dynamic, *, pred_static, windows, size, refiner_fn, blend, plan, resolution_cfg
):
    predictor = combine_predictor(pred_dynamic, pred_static)
    patches = refine_windows(params, image, base, predictor, windows, size, refiner_fn, plan, resolution_cfg)
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
    plan_on_host: bool | None = None,
    base_resolution: int = BASE_RESOLUTION,
    max_resolution: int = MAX_RESOLUTION,
    global_sizes: Sequence[int] = GLOBAL_SIZES,
    refiner_fn: RefinerCallable = official_refiner,
    nonfinite: str = "error",
) -> Array:
    """Two-stage coarse-to-fine refinement (docs/method.md §5.2): rgb (B, H, W, C) -> refined depth (B, H, W, 1).

    Global pass at `size`^2 (predictor at `global_sizes`), then for each (pieces, cover) of `schedule`
    (official `((2, 0.2), (3, 0.25))`, paper-like `windows.PAPER_SCHEDULE`) the windows of `window_grid`
    are refined in ONE batched refiner call against the previous step's map and merged with the feather
    mask (`blend="official"`: the official sequential order; `"average"`: order-independent).

    resolution: "adaptive" = the official three-level rule (docs/method.md §5.2 c); "fixed" = factor 1.0 everywhere.
    plan_on_host: where the adaptive levels are computed. True: on the host (exact official float64
    Sobel/percentile), each window's predictor runs once at its own resolution, grouped by
    (window shape, resolution), one compiled step per distinct plan. False: in-graph (jittable), every
    candidate resolution is predicted and selected. None (default): host unless called under a jax
    transformation. `predictor` follows the predictor protocol (sddr_jax.inference.predictors); for the simulated
    and precomputed predictors `rgb` is the array they expect (ground truth, stacked maps).
    nonfinite: NaN / inf in `rgb`: "error" (default; one bad pixel would spread through the min-max
    normalisation to the whole map) or "fill" (each channel's finite mean).
    Returns the working map U of the last step (values on the [0, 1] scale of the global pass).
    """
    steps = check_schedule(schedule)
    size, gs = check_common(
        rgb, size, blend, resolution, global_sizes, base_resolution, max_resolution, "refine_two_stage"
    )
    pred_dynamic, pred_static = partition_predictor(predictor)
    if isinstance(refiner_fn, RefinerFn):  # the refiner of a model config: the params must fit it
        check_params(unwrap_params(params), dataclasses.asdict(refiner_fn), where="refine_two_stage params")
    traced = isinstance(rgb, jax.core.Tracer)
    if plan_on_host is None:
        plan_on_host = not traced
    if plan_on_host and traced:
        raise UserError(
            "refine_two_stage: plan_on_host=True needs concrete arrays (it cannot run under jit/vmap)"
        )
    height, width = int(rgb.shape[1]), int(rgb.shape[2])
    if not traced:
        a = np.asarray(rgb, np.float32)
        if not np.all(np.isfinite(a)):
            if nonfinite == "fill":  # per image and channel
                a = fill_invalid(a, axis=(1, 2))
            else:
                handle_nonfinite(a, "refine_two_stage: the input", nonfinite)
        rgb = a
    rgb = jnp.asarray(rgb, jnp.float32)
    base = _global_pass_jit(
        params, rgb, pred_dynamic, pred_static=pred_static, size=size, global_sizes=gs, refiner_fn=refiner_fn
    )
    cfg = (int(base_resolution), int(max_resolution), resolution == "fixed")
    for pieces, cover in steps:
        windows = window_grid(height, width, pieces, cover)
        plan = None
        if plan_on_host:
            cands = [candidate_resolutions(w.shape, cfg[0], cfg[1]) for w in windows]
            if resolution == "fixed":
                levels = np.ones((rgb.shape[0], len(windows)), np.int32)
            else:
                base_np = np.asarray(base)
                levels = np.stack([resolution_factors_host(m[..., 0], windows) for m in base_np])
            plan = tuple(tuple(cands[n][int(lv)] for n, lv in enumerate(row)) for row in levels)
        base = two_stage_step(
            params, rgb, base, pred_dynamic, pred_static=pred_static, windows=windows, size=size,
            refiner_fn=refiner_fn, blend=blend, plan=plan, resolution_cfg=cfg,
        )
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
    "refine_windows",
    "two_stage_step",
    "check_common",
]
