"""Edge pseudo-labels G_S for self-distillation (docs/method.md §6, §10).

`edge_labels` is the teacher's coarse-to-fine pass over the student's own inputs: a global refinement of
the student's low/high maps, then each step's windows, for which the base predictor is run again on the
window's crop at the official adaptive resolution, refined in one batched call and merged; the gradients of
the refined windows, aligned by least squares to the previous label, form G_S. `label_options` reads its
static options from a training config, `label_predictor` builds the configured base predictor and
`label_body` is the per-device body that the training loop runs under pmap / shard_map.
"""
from __future__ import annotations

import functools
import os
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
    RefinerCallable,
    combine_predictor,
    crop_window,
    official_refiner,
    partition_predictor,
)
from sddr_jax.inference.windows import (
    BASE_RESOLUTION,
    BLENDS,
    MAX_RESOLUTION,
    OFFICIAL_SCHEDULE,
    blend_windows,
    candidate_resolutions,
    check_schedule,
    feather_mask,
    resolution_factors,
    window_grid,
)
from sddr_jax.ops import align_scale_shift, apply_scale_shift, fill_invalid, minmax_normalize, resize_bilinear, resize_cv
from sddr_jax.training.parallel import AXIS

Array = jax.Array

# G(.) inside the label pass: the edge-replicating border, under which the frame of the image and of every
# window is not a step (docs/method.md §6, "Border handling").
LABEL_BORDER = "replicate"
# First key fold of a window step: simulate_prediction folds 0 (low) and 1 (high) into the example's key.
WINDOW_KEY_FOLD = 2


def _interior(shape: tuple[int, int], frame: int = 1) -> np.ndarray:
    """1 inside, 0 on the `frame`-pixel border of an (h, w) map."""
    m = np.zeros(shape, np.float32)
    m[frame:shape[0] - frame, frame:shape[1] - frame] = 1.0
    return m


def _gradient_patches(patches, windows, previous):
    """docs/method.md §6 step 2: G(D_w) of each window aligned by least squares to the previous label on the
    window (the window's 1-pixel border left out of the fit)."""
    out = []
    for patch, w in zip(patches, windows):
        grad = edges.sobel_abs(patch, border=LABEL_BORDER)
        beta1, beta0 = align_scale_shift(grad, crop_window(previous, w), jnp.asarray(_interior(w.shape))[..., None])
        out.append(apply_scale_shift(grad, beta1, beta0))
    return out


def _window_highs(image, predictor, keys, windows, levels, cands, size, step_index):
    """High inputs (B, N, S, S, 1): the predictor on each window's crop at its own adaptive resolution.

    Per window, a `lax.map` over the batch runs `lax.switch` on the window's level, so only the chosen
    resolution is predicted (no candidate is computed and thrown away). With `keys` (B,) the predictor is
    re-keyed per (example, step, window): fold_in(fold_in(key, WINDOW_KEY_FOLD + step_index), n).
    """
    outs = []
    for n, w in enumerate(windows):
        crops = crop_window(image, w)  # (B, h, w, C)
        res_list = list(dict.fromkeys(cands[n]))
        level_to_branch = jnp.asarray([res_list.index(r) for r in cands[n]], jnp.int32)

        def one(args, n=n, res_list=res_list, level_to_branch=level_to_branch):
            crop, key, level = args
            pred = predictor
            if key is not None:
                pred = predictor.with_key(jax.random.fold_in(jax.random.fold_in(key, WINDOW_KEY_FOLD + step_index), n))
            branches = [functools.partial(_predict_one, pred, res=r, size=size) for r in res_list]
            if len(branches) == 1:
                return branches[0](crop)
            return lax.switch(level_to_branch[level], branches, crop)

        outs.append(lax.map(one, (crops, keys, levels[:, n])))
    return jnp.stack(outs, axis=1)


def _predict_one(predictor, crop, *, res, size):
    out = predictor(crop[None], int(res))
    if tuple(out.shape) != (1, res, res, 1):
        raise UserError(f"label predictor: predict(image {(1,) + tuple(crop.shape)}, {res}) must return "
                        f"{(1, res, res, 1)}, got {tuple(out.shape)}")
    return resize_bilinear(out.astype(jnp.float32), (size, size))[0]


@functools.partial(
    jax.jit,
    static_argnames=("pred_static", "steps", "size", "refiner_fn", "blend", "resolution_cfg", "bilateral",
                     "mask_cfg"),
)
def _edge_labels_jit(params, low, high, image, keys, pred_dynamic, *, pred_static, steps, size, refiner_fn,
                     blend, resolution_cfg, bilateral, mask_cfg):
    predictor = combine_predictor(pred_dynamic, pred_static)
    height, width = low.shape[1:3]
    # s = 0: the student's own maps, refined at their own resolution (no resampling).
    base = minmax_normalize(refiner_fn(params, low, high).astype(jnp.float32))
    label = edges.sobel_abs(base, border=LABEL_BORDER)
    if bilateral is not None:
        label = edges.bilateral_filter(label, *bilateral)
    base_res, max_res, fixed = resolution_cfg
    for s, (pieces, cover) in enumerate(steps):
        windows = window_grid(height, width, pieces, cover)
        cands = [candidate_resolutions(w.shape, base_res, max_res) for w in windows]
        if fixed:
            levels = jnp.ones((low.shape[0], len(windows)), jnp.int32)
        else:
            levels = resolution_factors(base, windows)
        highs = _window_highs(image, predictor, keys, windows, levels, cands, size, s)
        lows = jnp.stack([resize_cv(crop_window(base, w), (size, size), "nearest") for w in windows], axis=1)
        flat = (-1, size, size, 1)
        refined = refiner_fn(params, lows.reshape(flat), highs.reshape(flat)).astype(jnp.float32)
        refined = refined.reshape(lows.shape)
        scale, shift = align_scale_shift(refined, lows)
        aligned = apply_scale_shift(refined, scale, shift)
        patches = [resize_cv(aligned[:, n], w.shape, "cubic") for n, w in enumerate(windows)]
        grads = _gradient_patches(patches, windows, label)
        masks = [feather_mask(*w.shape) * _interior(w.shape) for w in windows]
        label = blend_windows(label, grads, windows, masks=masks, mode=blend)
        base = blend_windows(base, patches, windows, mode=blend)
    if mask_cfg is None:
        return {"edge": label, "depth": base}
    edge_q, flat_q, num_regions, top_fraction, margin, iterations = mask_cfg
    return {"depth": base, **label_masks(label, edge_q, flat_q, num_regions, top_fraction, margin, iterations)}


_MASK_KEYS = ("edge_quantile", "flat_quantile", "num_regions", "top_fraction", "region_margin", "region_iterations")


def label_masks(label: Array, edge_quantile: float = 0.85, flat_quantile: float = 0.15, num_regions: int = 4,
                top_fraction: float = 0.05, region_margin: int = 8, region_iterations: int = 10) -> dict[str, Array]:
    """{"edge", "mask_edge", "mask_flat", "regions"} of an edge label (B, H, W, 1) (docs/method.md §6).

    The student's G(.) in the official loss pads with zeros: its 1-pixel frame is a step whatever the label
    says, so the frame is kept out of every mask and region.
    """
    inside = jnp.asarray(_interior(label.shape[1:3]), bool)[None, :, :, None]
    if num_regions > 0:
        regions = edges.edge_regions(jnp.where(inside, label, 0.0), num_regions=num_regions,
                                     top_fraction=top_fraction, margin=region_margin, iterations=region_iterations)
    else:
        regions = jnp.zeros((label.shape[0], 0) + label.shape[1:3], bool)
    return {
        "edge": label,
        "mask_edge": edges.mask_edge(label, q=edge_quantile) & inside,
        "mask_flat": edges.mask_flat(label, q=flat_quantile) & inside,
        "regions": regions,
    }


def edge_labels(
    params: Any,
    low: Array,
    high: Array,
    image: Array,
    predictor: Callable[[Array, int], Array],
    schedule: Sequence[tuple[int, float]] = OFFICIAL_SCHEDULE,
    *,
    keys: Array | None = None,
    size: int = 1024,
    blend: str = "official",
    resolution: str = "adaptive",
    base_resolution: int = BASE_RESOLUTION,
    max_resolution: int = MAX_RESOLUTION,
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
    """Self-distilled edge pseudo-labels G_S (docs/method.md §6) of a batch, from the student's own inputs.

    low, high: the student's inputs (B, H, W, 1) (any positive scale; min-max normalised by the refiner).
    image: what `predictor` reads, at the same H x W (the RGB for a real predictor; for the simulated one the
    ground-truth depth, optionally followed by the RGB, see `SimulatedPredictor`). keys: optional (B,) PRNG
    keys, one per example; the predictor is then re-keyed per window with `predictor.with_key` (the
    simulated predictor that made the student's maps, with the same example key).

    1. s = 0: D_0 = refiner(low, high) at H x W, min-max -> base map B; G_0 = G(B) with the
       edge-replicating border (no step at the frame), optionally bilateral-filtered
       (`bilateral=(radius, sigma_space, sigma_range)`, default off).
    2. Per step of `schedule`: the windows of `window_grid`; each window's high input is `predictor` run on
       the window's crop at the official adaptive resolution (`resolution="adaptive"`: factor 0.8 / 1.0 /
       1.2 chosen in-graph from B's edge density, r = `base_resolution`, capped at `max_resolution`;
       `"fixed"`: factor 1.0), only the chosen resolution being predicted; its low input is B on the window
       (OpenCV nearest to `size`). All windows are refined in one call at `size` x `size`, aligned to their
       low inputs, resized back (cubic) and merged into the depth map; each window's gradient (window border
       excluded) is aligned to the previous label on the window by least squares and merged with the
       feather mask.

    Returns {"edge": G_S (B, H, W, 1), "mask_edge", "mask_flat": (B, H, W, 1) bool (quantiles
    `edge_quantile` / `flat_quantile` of G_S per image, the 1-pixel frame excluded), "regions":
    (B, num_regions, H, W) bool (paper's P_n, from G_S without its frame), "depth": D_S (B, H, W, 1)}.
    `num_regions=0` gives an empty "regions"; `masks=False` returns only "edge" and "depth". Pure and
    jittable.
    """
    steps = check_schedule(schedule)
    for name, x in (("low", low), ("high", high), ("image", image)):
        if getattr(x, "ndim", None) != 4:
            raise UserError(f"edge_labels: {name} must be a batch (B, H, W, C), got shape "
                            f"{tuple(getattr(x, 'shape', ()))}")
    if low.shape[-1] != 1 or high.shape != low.shape or image.shape[:3] != low.shape[:3]:
        raise UserError(f"edge_labels: low and high must be (B, H, W, 1) and image (B, H, W, C) of one size, got "
                        f"{tuple(low.shape)}, {tuple(high.shape)}, {tuple(image.shape)}")
    size = int(size)
    if size < 8:
        raise UserError(f"edge_labels: size must be >= 8, got {size}")
    if blend not in BLENDS:
        raise UserError(f"edge_labels: blend must be one of {BLENDS}, got {blend!r}")
    if resolution not in ("adaptive", "fixed"):
        raise UserError(f"edge_labels: resolution must be 'adaptive' or 'fixed', got {resolution!r}")
    if int(base_resolution) < 0 or int(max_resolution) < 32:
        raise UserError(f"edge_labels: need base_resolution >= 0 and max_resolution >= 32, got "
                        f"{base_resolution}, {max_resolution}")
    if keys is not None:
        if not hasattr(predictor, "with_key"):
            raise UserError(f"edge_labels: keys given, but the predictor ({type(predictor).__name__}) has no "
                            "with_key(key) to take them")
        if not jnp.issubdtype(keys.dtype, jax.dtypes.prng_key) or keys.shape != low.shape[:1]:
            raise UserError(f"edge_labels: keys must be ({low.shape[0]},) PRNG keys, got {keys.dtype} "
                            f"{tuple(keys.shape)}")
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
        params, jnp.asarray(low, jnp.float32), jnp.asarray(high, jnp.float32), jnp.asarray(image, jnp.float32),
        keys, pred_dynamic, pred_static=pred_static, steps=steps, size=size, refiner_fn=refiner_fn, blend=blend,
        resolution_cfg=(int(base_resolution), int(max_resolution), resolution == "fixed"),
        bilateral=bilateral, mask_cfg=mask_cfg,
    )


PREDICTORS = ("auto", "simulated", "depth-anything-v2-small", "depth-anything-v2-base", "depth-anything-v2-large")


def simulated_options(config: Any) -> dict[str, Any]:
    """Keyword arguments of `simulated_predict` for the data's simulated predictor (`config.data.predictor`
    without the low/high resolutions; the training resolution defaults to the low one, S / 4)."""
    s = int(config.data.image_size)
    pk = {k: v for k, v in dict(config.data.predictor).items() if v not in (None, "")}
    low_res = int(pk.pop("low_res", 0) or max(8, s // 4))
    pk.pop("high_res", None)
    pk["train_res"] = int(pk.get("train_res") or low_res)
    return {k: (tuple(v) if isinstance(v, list) else v) for k, v in pk.items()}


def label_predictor(config: Any) -> tuple[str, Any]:
    """(kind, predictor) of the label pass: the base predictor that the teacher re-runs on every window.

    `labels.predictor`: "simulated" (the data's simulated predictor, same settings and the example's own
    key), a Depth Anything V2 size ("depth-anything-v2-small", weights from `labels.predictor_weights`, its
    output `labels.predictor_output`), or "auto" = "simulated" (a dataset with stored predictions then has
    to name its predictor; `check_label_source` refuses it otherwise). kind is "simulated" or "model".
    """
    kind, name = label_predictor_kind(config)
    if kind == "simulated":
        # The key is a placeholder: the label pass re-keys the predictor with every example's own key.
        return "simulated", SimulatedPredictor.create(np.zeros(2, np.uint32), **simulated_options(config))
    weights = str(config.labels.get("predictor_weights", "") or "")
    if not weights:
        raise UserError(f"labels.predictor={name!r} needs labels.predictor_weights (a .safetensors/.pth file)")
    from sddr_jax.convert.depth_anything import load_depth_anything
    from sddr_jax.models.depth_anything import get_config

    wanted = get_config(name.rsplit("-", 1)[-1])
    converted = load_depth_anything(weights)
    if (converted.config.dim, converted.config.depth) != (wanted.dim, wanted.depth):
        raise UserError(f"labels.predictor_weights {weights}: holds a {converted.config.name!r} model, not {name!r}")
    return "model", converted.predictor(output=str(config.labels.get("predictor_output", "depth") or "depth"))


def label_size(config: Any) -> int:
    """The window refiner size `labels.size` (0: the training size S), a multiple of 128 (the refiner's rule)."""
    size = int(config.labels.size or config.data.image_size)
    if size % 128:
        raise UserError(f"config.labels.size: the refiner works at multiples of 128, got {size}")
    return size


def check_label_config(config: Any) -> None:
    """Refuses label settings that cannot run, before anything is built (a UserError naming the key)."""
    c = config.labels
    _, name = label_predictor_kind(config)
    if name.startswith("depth-anything") and not str(c.get("predictor_weights", "") or ""):
        raise UserError(f"config.labels.predictor={name!r} needs config.labels.predictor_weights (a .safetensors "
                        "or .pth file of that model)")
    weights = str(c.get("predictor_weights", "") or "")
    if weights and not os.path.isfile(weights):
        raise UserError(f"config.labels.predictor_weights {weights}: no such file")
    label_size(config)
    if str(c.get("edge_from", "gradients")) not in ("gradients", "depth"):
        raise UserError(f"config.labels.edge_from: expected 'gradients' (G_S) or 'depth' (G(D_S)), got "
                        f"{c.edge_from!r}")
    if c.resolution not in ("adaptive", "fixed"):
        raise UserError(f"config.labels.resolution: expected 'adaptive' or 'fixed', got {c.resolution!r}")
    if c.blend not in BLENDS:
        raise UserError(f"config.labels.blend: expected one of {BLENDS}, got {c.blend!r}")
    check_schedule(c.schedule)


def check_label_source(config: Any, batch: Mapping[str, Any]) -> None:
    """Refuses a run whose labels would not come from the predictor that made the student's inputs.

    A dataset that stores real predictions (`has_pred`) with the simulated predictor in the label pass would
    build G_S from ground truth plus simulated noise (GT-derived edges, not self-distillation).
    """
    name = str(config.labels.get("predictor", "auto") or "auto")
    has_pred = np.asarray(batch.get("has_pred", False))
    if name in ("auto", "simulated") and bool(np.any(has_pred)):
        raise UserError(
            f"data.name={config.data.name!r} stores the base predictor's low/high maps, but labels.predictor is "
            f"{name!r}: the simulated predictor would make the teacher's windows from ground truth. Set "
            "labels.predictor to the predictor that made the stored maps (e.g. depth-anything-v2-small with "
            "labels.predictor_weights=FILE), or train with L_gt only (train.gt_only_steps = train.num_steps)")
    if name in ("auto", "simulated") and "key" not in batch:
        raise UserError("the label pass needs the examples' simulation keys (batch['key']); the data pipeline "
                        "did not simulate this batch")


def label_options(config: Any) -> dict[str, Any]:
    """Static keyword arguments of `label_body` / `edge_labels` from `config.labels` (docs/method.md §6, §10).

    Windows are refined at `labels.size` (0: S); the adaptive rule's r is `labels.base_resolution`
    (0: the predictor's training resolution: the simulated predictor's train_res, or 518 for Depth
    Anything) and its cap `labels.max_resolution` (0: the official 2048). Regions are computed only when the
    loss reads them (`paper`).
    """
    c = config.labels
    kind, _ = label_predictor_kind(config)
    train_res = simulated_options(config)["train_res"] if kind == "simulated" else 518
    num_regions = int(c.num_regions) if config.loss.name == "paper" else 0
    size = label_size(config)
    return dict(
        schedule=tuple(tuple(x) for x in c.schedule), size=size, blend=c.blend,
        resolution=c.resolution, base_resolution=int(c.base_resolution or train_res),
        max_resolution=int(c.max_resolution or MAX_RESOLUTION),
        bilateral=tuple(c.bilateral) if c.bilateral else None,
        edge_quantile=float(c.edge_quantile), flat_quantile=float(c.flat_quantile), num_regions=num_regions,
        top_fraction=float(c.top_fraction), region_margin=int(c.region_margin),
        refiner_fn=RefinerFn.from_config(config.model), texture=kind == "simulated" and float(
            dict(config.data.predictor).get("texture", 0) or 0) > 0, kind=kind,
        edge_from=str(c.get("edge_from", "gradients")))


def label_shapes(batch: Mapping[str, Any], *, num_regions: int = 0, with_depth: bool = False,
                 **unused) -> dict[str, jax.ShapeDtypeStruct]:
    """Shapes and dtypes of `label_body`'s output for a batch of `low` (B, H, W, 1) maps, without tracing it.

    The labels live at the batch's size: "edge" (and "depth" with `with_depth`) float32 (B, H, W, 1),
    "mask_edge" / "mask_flat" bool (B, H, W, 1), "regions" bool (B, num_regions, H, W). Tracing the label
    pass to learn this costs seconds per run (phase 1 passes zeros of these shapes to the switched step);
    `tests/test_self_distillation.py` checks it against `jax.eval_shape(label_body)`. Other keyword
    arguments (the rest of `label_options`) are accepted and ignored.
    """
    del unused
    b, h, w = (int(d) for d in np.shape(batch["low"])[:3])
    f32 = jax.ShapeDtypeStruct((b, h, w, 1), jnp.float32)
    flag = jax.ShapeDtypeStruct((b, h, w, 1), jnp.bool_)
    out = {"edge": f32, "mask_edge": flag, "mask_flat": flag,
           "regions": jax.ShapeDtypeStruct((b, int(num_regions), h, w), jnp.bool_)}
    if with_depth:
        out["depth"] = f32
    return out


def label_predictor_kind(config: Any) -> tuple[str, str]:
    """(kind, name) of `labels.predictor`: kind "simulated" for auto / simulated, else "model"."""
    name = str(config.labels.get("predictor", "auto") or "auto")
    if name not in PREDICTORS:
        raise UserError(f"labels.predictor: expected one of {PREDICTORS}, got {name!r}")
    return ("simulated" if name in ("auto", "simulated") else "model"), name


def label_body(teacher_params: Any, batch: Mapping[str, jax.Array], predictor: Any, *, kind: str = "simulated",
               texture: bool = False, with_depth: bool = False, edge_from: str = "gradients",
               axis_name: str | None = AXIS, **edge_label_kwargs) -> dict[str, jax.Array]:
    """Edge pseudo-labels G_S (docs/method.md §6) of this device's batch from the frozen teacher params.

    The global pass refines the batch's own low/high maps. kind "simulated": the windows' predictor is the
    data's simulated predictor on the ground truth (+ RGB with `texture`), keyed by each example's key
    (`batch["key"]`, from the data pipeline); "model": `predictor` on the RGB crops. `axis_name` is unused
    (every device labels its own examples with their own keys); kept so the body runs under pmap / shard_map.
    `with_depth` adds D_S as "depth" (the ranking loss's pseudo ground truth). `edge_from="depth"` is the
    paper's Table 6 ablation: the label is G(D_S), the gradient of the refined depth, instead of G_S (masks and
    regions follow it). No gradient flows into the labels.
    """
    del axis_name
    if edge_from not in ("gradients", "depth"):
        raise UserError(f"labels.edge_from: expected 'gradients' (G_S) or 'depth' (G(D_S)), got {edge_from!r}")
    keys = None
    if kind == "simulated":
        depth = batch["depth"].astype(jnp.float32)
        # Invalid ground truth would poison the predictor's resizing; fill it with the image's valid mean
        # (only the labels see this; the losses keep using `valid`). The pipeline fills it the same way.
        image = fill_invalid(depth, batch["valid"].astype(bool) & (depth > 0), axis=(1, 2, 3))
        if texture:
            image = jnp.concatenate([image, batch["rgb"].astype(jnp.float32)], axis=-1)
        keys = jax.random.wrap_key_data(batch["key"])
    else:
        image = batch["rgb"].astype(jnp.float32)
    if edge_from == "depth":
        kw = {k: v for k, v in edge_label_kwargs.items() if k in _MASK_KEYS}
        edge_label_kwargs = {k: v for k, v in edge_label_kwargs.items() if k not in _MASK_KEYS}
        labels = edge_labels(lax.stop_gradient(teacher_params), batch["low"], batch["high"], image, predictor,
                             keys=keys, masks=False, **edge_label_kwargs)
        labels = {"depth": labels["depth"], **label_masks(edges.sobel_abs(labels["depth"], border=LABEL_BORDER), **kw)}
    else:
        labels = edge_labels(lax.stop_gradient(teacher_params), batch["low"], batch["high"], image, predictor,
                             keys=keys, **edge_label_kwargs)
    keep = ("edge", "mask_edge", "mask_flat", "regions") + (("depth",) if with_depth else ())
    return {k: lax.stop_gradient(v) for k, v in labels.items() if k in keep}
