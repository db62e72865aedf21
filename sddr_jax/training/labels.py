"""Edge pseudo-labels G_S for self-distillation (docs/method.md §6, §10).

`edge_labels` is the teacher's coarse-to-fine pass: a global refinement, then each step's windows refined in
one batched call and merged; the gradients of the refined windows, aligned by least squares to the previous
label, form G_S. `label_options` reads its static options from a training config and `label_body` is the
per-device body that the training loop runs under pmap / shard_map.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from sddr_jax import edges
from sddr_jax.errors import UserError
from sddr_jax.inference.one_stage import RefinerFn
from sddr_jax.inference.predictors import SimulatedPredictor
from sddr_jax.inference.two_stage import (
    GLOBAL_SIZES,
    RefinerCallable,
    check_common,
    combine_predictor,
    crop_window,
    global_pass,
    official_refiner,
    partition_predictor,
    refine_windows,
)
from sddr_jax.inference.windows import (
    BASE_RESOLUTION,
    MAX_RESOLUTION,
    OFFICIAL_SCHEDULE,
    blend_windows,
    check_schedule,
    feather_mask,
    window_grid,
)
from sddr_jax.ops import align_scale_shift, apply_scale_shift, fill_invalid
from sddr_jax.training.parallel import AXIS

Array = jax.Array


def _interior(shape: tuple[int, int]) -> np.ndarray:
    # G(.) uses zero padding, so a window's 1-pixel border carries a spurious step: kept out of fit and merge.
    m = np.zeros(shape, np.float32)
    m[1:-1, 1:-1] = 1.0
    return m


def _gradient_patches(patches, windows, previous):
    """docs/method.md §6 step 2: G(D_w) of each window aligned by least squares to the previous label on the window."""
    out = []
    for patch, w in zip(patches, windows):
        grad = edges.sobel_abs(patch)
        beta1, beta0 = align_scale_shift(grad, crop_window(previous, w), jnp.asarray(_interior(w.shape))[..., None])
        out.append(apply_scale_shift(grad, beta1, beta0))
    return out




@functools.partial(
    jax.jit,
    static_argnames=(
        "pred_static", "steps", "size", "global_sizes", "refiner_fn", "blend", "resolution_cfg", "bilateral",
        "mask_cfg",
    ),
)
def _edge_labels_jit(
    params, image, pred_dynamic, *, pred_static, steps, size, global_sizes, refiner_fn, blend, resolution_cfg,
    bilateral, mask_cfg,
):
    predictor = combine_predictor(pred_dynamic, pred_static)
    height, width = image.shape[1:3]
    base = global_pass(params, image, predictor, size, global_sizes, refiner_fn)
    label = edges.sobel_abs(base)
    if bilateral is not None:
        label = edges.bilateral_filter(label, *bilateral)
    for pieces, cover in steps:
        windows = window_grid(height, width, pieces, cover)
        patches = refine_windows(
            params, image, base, predictor, windows, size, refiner_fn, None, resolution_cfg
        )
        grads = _gradient_patches(patches, windows, label)
        masks = [feather_mask(*w.shape) * _interior(w.shape) for w in windows]
        label = blend_windows(label, grads, windows, masks=masks, mode=blend)
        base = blend_windows(base, patches, windows, mode=blend)
    if mask_cfg is None:
        return {"edge": label, "depth": base}
    edge_q, flat_q, num_regions, top_fraction, margin, iterations = mask_cfg
    if num_regions > 0:
        regions = edges.edge_regions(label, num_regions=num_regions, top_fraction=top_fraction, margin=margin,
                                     iterations=iterations)
    else:
        regions = jnp.zeros((label.shape[0], 0) + label.shape[1:3], bool)
    return {
        "edge": label,
        "mask_edge": edges.mask_edge(label, q=edge_q),
        "mask_flat": edges.mask_flat(label, q=flat_q),
        "regions": regions,
        "depth": base,
    }




def edge_labels(
    params: Any,
    image: Array,
    predictor: Callable[[Array, int], Array],
    schedule: Sequence[tuple[int, float]] = OFFICIAL_SCHEDULE,
    *,
    size: int = 1024,
    blend: str = "official",
    resolution: str = "adaptive",
    base_resolution: int = BASE_RESOLUTION,
    max_resolution: int = MAX_RESOLUTION,
    global_sizes: Sequence[int] = GLOBAL_SIZES,
    bilateral: tuple[int, float, float] | None = None,
    edge_quantile: float = 0.85,
    flat_quantile: float = 0.15,
    num_regions: int = 4,
    top_fraction: float = 0.05,
    region_margin: int = 8,
    region_iterations: int = 10,
    masks: bool = True,
    refiner_fn: RefinerCallable = official_refiner,
) -> dict[str, Array]:
    """Self-distilled edge pseudo-labels G_S (docs/method.md §6) for a batch: image (B, H, W, C) -> labels dict.

    1. Global pass (as `refine_two_stage`): D_0 -> base map B (B, H, W, 1); G_0 = sobel_abs(B), optionally
       bilateral-filtered (`bilateral=(radius, sigma_space, sigma_range)`, default off as the code).
    2. Per step of `schedule`: all windows refined in one batched call against the previous depth (low) and
       the predictor at the window's adaptive resolution (high); each window's depth is aligned to the low
       input and merged into the depth map; its gradient G(D_w) (window border excluded) is aligned to the
       previous label on the window by least squares (beta1, beta0) and merged with the feather mask.
    Labels come at the image's resolution: pass training-resolution images (S_train x S_train).

    Returns {"edge": G_S (B, H, W, 1), "mask_edge", "mask_flat": (B, H, W, 1) bool (quantiles
    `edge_quantile` / `flat_quantile` of G_S per image), "regions": (B, num_regions, H, W) bool (paper's P_n),
    "depth": D_S (B, H, W, 1), the refined depth of the last step}. `num_regions=0` gives an empty
    (B, 0, H, W) "regions"; `masks=False` returns only "edge" and "depth" (for callers that build their own
    masks). Pure and jittable (the adaptive levels are computed in-graph; `resolution="fixed"` skips the
    candidate predictions); vmappable over a batch.
    """
    steps = check_schedule(schedule)
    size, gs = check_common(
        image, size, blend, resolution, global_sizes, base_resolution, max_resolution, "edge_labels"
    )
    if bilateral is not None:
        try:
            bilateral = (int(bilateral[0]), float(bilateral[1]), float(bilateral[2]))
        except (TypeError, ValueError, IndexError):
            raise UserError(
                "edge_labels: bilateral must be (radius, sigma_space, sigma_range) or None, "
                f"got {bilateral!r}"
            ) from None
    pred_dynamic, pred_static = partition_predictor(predictor)
    if int(num_regions) < 0:
        raise UserError(f"edge_labels: num_regions must be >= 0, got {num_regions}")
    mask_cfg = None
    if masks:
        mask_cfg = (float(edge_quantile), float(flat_quantile), int(num_regions), float(top_fraction),
                    int(region_margin), int(region_iterations))
    return _edge_labels_jit(
        params, jnp.asarray(image, jnp.float32), pred_dynamic, pred_static=pred_static, steps=steps,
        size=size, global_sizes=gs, refiner_fn=refiner_fn, blend=blend,
        resolution_cfg=(int(base_resolution), int(max_resolution), resolution == "fixed"),
        bilateral=bilateral,
        mask_cfg=mask_cfg,
    )


def label_options(config: Any) -> dict[str, Any]:
    """Static keyword arguments of `edge_labels` from `config.labels` and the data's simulated predictor.

    The teacher's predictor is the pipeline's simulated predictor: the whole-image pass uses the pipeline's
    low/high resolutions (default S/4 and S) and its training resolution (default the low one).
    """
    c, d = config.labels, config.data
    s = int(d.image_size)
    pk = dict(d.predictor)
    low_res = int(pk.pop("low_res", None) or max(8, s // 4))
    high_res = int(pk.pop("high_res", None) or s)
    pk["train_res"] = int(pk.get("train_res") or low_res)
    return dict(
        predictor_options=tuple(sorted(pk.items())), schedule=tuple(tuple(x) for x in c.schedule),
        size=int(c.size or s), blend=c.blend, resolution=c.resolution,
        base_resolution=int(c.base_resolution or pk["train_res"]), max_resolution=int(c.max_resolution or high_res),
        global_sizes=(low_res, high_res), bilateral=tuple(c.bilateral) if c.bilateral else None,
        edge_quantile=float(c.edge_quantile), flat_quantile=float(c.flat_quantile), num_regions=int(c.num_regions),
        top_fraction=float(c.top_fraction), region_margin=int(c.region_margin),
        refiner_fn=RefinerFn.from_config(config.model))


def label_body(teacher_params: Any, batch: Mapping[str, jax.Array], key: jax.Array, *,
               predictor_options: tuple = (), axis_name: str | None = AXIS, **edge_label_kwargs) -> dict[str, jax.Array]:
    """Edge pseudo-labels G_S (docs/method.md §6) of this device's batch from the frozen teacher params.

    The simulated predictor (docs/method.md §7) sees the ground-truth depth as its image, exactly as the data pipeline's
    low/high inputs do; its noise key is folded with the device index so devices draw different noise.
    Runs inside the same jit/pmap as the rest of the program; no gradient flows into the labels.
    """
    if axis_name is not None:  # under pmap / shard_map: each device draws its own noise
        key = jax.random.fold_in(key, lax.axis_index(axis_name))
    predictor = SimulatedPredictor.create(key, **dict(predictor_options))
    depth = batch["depth"].astype(jnp.float32)
    # Invalid ground truth would poison the predictor's resizing; the pipeline marks it, we fill it with the
    # image's valid mean (only the labels see this; the losses keep using `valid`).
    image = fill_invalid(depth, batch["valid"].astype(bool) & (depth > 0), axis=(1, 2, 3))
    labels = edge_labels(lax.stop_gradient(teacher_params), image, predictor, **edge_label_kwargs)
    return {k: lax.stop_gradient(v) for k, v in labels.items() if k in ("edge", "mask_edge", "mask_flat", "regions")}
