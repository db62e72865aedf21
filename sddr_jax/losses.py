"""Losses (docs/method.md §8): shared pieces, the `official` and `paper` composite losses, the edge-guided ranking
loss, registry.

Shared pieces work on maps `(B, H, W)` or NHWC `(B, H, W, 1)` (a 2-D `(H, W)` map is one image):
`robust_normalize` (nu), `data_term`, `gradient_matching`, `ssi_loss`, `ranking_loss`.

Composite losses are pure functions `loss_fn(outputs, batch, labels, config) -> (scalar, aux)`:

* `outputs`: any object with attributes `refined (B,S,S,1)`, `out_half (B,S/2,S/2,1)`, `out_quart
  (B,S/4,S/4,1)`, `mask_quart (B,S/4,S/4,1)` (= m5) and `mask_half (B,S/2,S/2,1)` (= m6), e.g. the Refiner's
  `RefinerOutput`;
* `batch`: dict with `rgb (B,S,S,3)`, `low`, `high`, `depth (B,S,S,1)`, `valid (B,S,S,1) bool` (optionally
  `rng`, a PRNG key used by the ranking loss);
* `labels`: dict with `edge (B,S,S,1)` (= G_S), `mask_edge`, `mask_flat` (B,S,S,1) bool, `regions` (B,N_g,S,S)
  bool; or None (first self-distillation phase): the composite then returns L_gt only;
* `config`: `ml_collections.ConfigDict` or mapping; `default_loss_config(name)` gives every field with the
  spec's default. Missing fields fall back to those defaults.

A new loss is a function with that signature decorated by `@register_loss("name")`; the train config's
`loss.name` selects it through `get_loss`. Everything jits, runs under pmap, and works for any batch size.
Empty masks give zero losses (never NaN); NaN/inf in ground truth are excluded through the masks.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from sddr_jax import edges
from sddr_jax.errors import UserError
from sddr_jax.ops import align_scale_shift, resize_nearest

Array = jax.Array
LossFn = Callable[[Any, Mapping, Mapping | None, Any], tuple[Array, dict]]

LOSSES: dict[str, LossFn] = {}
_DEFAULT_CONFIGS: dict[str, Callable[[], ml_collections.ConfigDict]] = {}


# ----------------------------------------------------------------------------------------------------
# registry


def register_loss(name: str, default_config: Callable[[], ml_collections.ConfigDict] | None = None):
    """Decorator registering a composite loss under `name` (optionally with its default-config factory)."""

    def wrap(fn: LossFn) -> LossFn:
        if name in LOSSES and LOSSES[name] is not fn:
            raise UserError(f"loss {name!r} is already registered")
        LOSSES[name] = fn
        if default_config is not None:
            _DEFAULT_CONFIGS[name] = default_config
        return fn

    return wrap


def get_loss(name: str) -> LossFn:
    """The registered composite loss `name`; a clear error lists the known names."""
    if name not in LOSSES:
        raise UserError(f"unknown loss {name!r}; known losses: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def default_loss_config(name: str) -> ml_collections.ConfigDict:
    """Every field of loss `name` with the spec's default (a fresh ConfigDict, `name` included)."""
    if name not in _DEFAULT_CONFIGS:
        get_loss(name)  # raises the "unknown loss" error for unknown names
        return ml_collections.ConfigDict({"name": name})
    return _DEFAULT_CONFIGS[name]()


def _cfg(config, name: str):
    """config -> a plain dict of the loss's fields, defaults filled in."""
    out = dict(_DEFAULT_CONFIGS[name]().to_dict())
    if config is not None:
        items = config.to_dict() if hasattr(config, "to_dict") else dict(config)
        unknown = set(items) - set(out)
        if unknown:
            raise UserError(f"loss config for {name!r}: unknown field(s) {sorted(unknown)}; "
                            f"known: {sorted(out)}")
        out.update(items)
    return out


# ----------------------------------------------------------------------------------------------------
# shared pieces (docs/method.md §8.1)


def _maps3(x, name: str) -> Array:
    m, _ = edges.as_maps(x, name)
    return m


def _prepare(pred, target, mask, name: str):
    """-> (pred, target, mask) as (B, H, W) float32/float32/bool with non-finite targets masked and zeroed."""
    p, t, m = _maps3(pred, f"{name} pred"), _maps3(target, f"{name} target"), _maps3(mask, f"{name} mask")
    if not (p.shape == t.shape == m.shape):
        raise UserError(f"{name}: pred, target and mask must have one shape, got {tuple(p.shape)}, "
                        f"{tuple(t.shape)} and {tuple(m.shape)}")
    p = p.astype(jnp.float32)
    t = t.astype(jnp.float32)
    m = m.astype(bool) & jnp.isfinite(t) & jnp.isfinite(p)
    return jnp.where(m, p, 0.0), jnp.where(m, t, 0.0), m


def _lower_median(v: Array) -> Array:
    """torch.median over the last axis: the lower middle element for even counts."""
    n = v.shape[-1]
    return jnp.sort(v, axis=-1)[..., (n - 1) // 2]


def robust_normalize(x, mask, median_includes_masked_zeros: bool = True) -> Array:
    """nu(x; M) = (x - m) / s per image (docs/method.md §8.1); x, mask (B, H, W) or (B, H, W, 1); same shape out.

    m = median of M * x over *all* pixels (official code; lower middle element for even counts), or over the
    masked pixels only with `median_includes_masked_zeros=False`; s = max(sum M |x - m| / sum M, 1e-6).
    An image with an empty mask keeps m = 0, s = 1.
    """
    xm, restore = edges.as_maps(x, "robust_normalize x")
    mm = _maps3(mask, "robust_normalize mask")
    if xm.shape != mm.shape:
        raise UserError(f"robust_normalize: x and mask must have one shape, got {tuple(xm.shape)} and "
                        f"{tuple(mm.shape)}")
    return restore(_robust_normalize(xm.astype(jnp.float32), mm.astype(bool), median_includes_masked_zeros))


@functools.partial(jax.jit, static_argnums=2)
def _robust_normalize(x: Array, m: Array, median_includes_masked_zeros: bool) -> Array:
    b = x.shape[0]
    mf = m.astype(jnp.float32)
    ssum = jnp.sum(mf, axis=(1, 2))
    valid = ssum > 0
    xz = jnp.where(m, x, 0.0)
    if median_includes_masked_zeros:
        med = _lower_median(xz.reshape(b, -1))
    else:
        s = jnp.sort(jnp.where(m, x, jnp.inf).reshape(b, -1), axis=-1)
        k = jnp.maximum((ssum.astype(jnp.int32) - 1) // 2, 0)
        med = jnp.take_along_axis(s, k[:, None], axis=-1)[:, 0]
    med = jnp.where(valid, med, 0.0)
    xc = x - med[:, None, None]
    sq = jnp.sum(jnp.where(m, jnp.abs(xc), 0.0), axis=(1, 2))
    s = jnp.where(valid, jnp.maximum(sq / jnp.where(valid, ssum, 1.0), 1e-6), 1.0)
    return xc / s[:, None, None]


@functools.partial(jax.jit, static_argnums=3)
def _data_term(xh: Array, yh: Array, m: Array, trim_fraction: float) -> Array:
    res = jnp.where(m, jnp.abs(xh - yh), 0.0)
    total = jnp.sum(m.astype(jnp.float32))
    if trim_fraction > 0.0:
        # Keep the smallest floor(n (1 - trim)) residuals of the batch (what the official code intended).
        n = total.astype(jnp.int32)
        keep = jnp.floor(total * (1.0 - trim_fraction)).astype(jnp.int32)
        srt = jnp.sort(jnp.where(m, res, jnp.inf).ravel())
        rank = jnp.arange(srt.shape[0])
        res_sum = jnp.sum(jnp.where((rank < keep) & (rank < n), srt, 0.0))
    else:
        res_sum = jnp.sum(res)
    return jnp.where(total > 0, res_sum / (2.0 * jnp.maximum(total, 1.0)), 0.0)


def data_term(xh, yh, mask, trim_fraction: float = 0.0) -> Array:
    """l_data = sum_M |x - y| / (2 sum_batch M) (docs/method.md §8.1); 0 for an empty mask.

    `trim_fraction` > 0 drops the largest residuals of the batch first (the official code's intent; its own
    trimming is a no-op, hence default 0).
    """
    x, y, m = _prepare(xh, yh, mask, "data_term")
    return _data_term(x, y, m, float(trim_fraction))


@functools.partial(jax.jit, static_argnums=3)
def _gradient_matching(xh: Array, yh: Array, m: Array, scales: int) -> Array:
    total = 0.0
    for k in range(scales):
        step = 2 ** k
        x, y, mm = xh[:, ::step, ::step], yh[:, ::step, ::step], m[:, ::step, ::step]
        mf = mm.astype(jnp.float32)
        r = mf * (x - y)
        gx = jnp.abs(r[:, :, 1:] - r[:, :, :-1]) * (mf[:, :, 1:] * mf[:, :, :-1])
        gy = jnp.abs(r[:, 1:, :] - r[:, :-1, :]) * (mf[:, 1:, :] * mf[:, :-1, :])
        div = jnp.sum(mf)
        total = total + jnp.where(div > 0, (jnp.sum(gx) + jnp.sum(gy)) / jnp.maximum(div, 1.0), 0.0)
    return total


def gradient_matching(xh, yh, mask, scales: int = 4) -> Array:
    """Multi-scale gradient matching l_gm (docs/method.md §8.1): steps 1, 2, 4, 8 by striding, batch-pooled per scale."""
    x, y, m = _prepare(xh, yh, mask, "gradient_matching")
    return _gradient_matching(x, y, m, int(scales))


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6))
def _ssi(p: Array, t: Array, m: Array, alpha: float, trim_fraction: float, median_zeros: bool,
         scales: int) -> Array:
    xh = jnp.where(m, _robust_normalize(p, m, median_zeros), 0.0)
    yh = jnp.where(m, _robust_normalize(t, m, median_zeros), 0.0)
    loss = _data_term(xh, yh, m, trim_fraction)
    if alpha > 0:
        loss = loss + alpha * _gradient_matching(xh, yh, m, scales)
    return loss


def ssi_loss(pred, target, mask, alpha: float = 0.5, *, trim_fraction: float = 0.0,
             median_includes_masked_zeros: bool = True, scales: int = 4) -> Array:
    """l_ssi(x, y; M, alpha) = l_data(nu(x), nu(y)) + alpha l_gm(nu(x), nu(y)) (docs/method.md §8.1). Scalar.

    pred, target, mask: (B, H, W), (B, H, W, 1) or (H, W), one shape. Non-finite targets are masked out.
    Zero for an empty mask; differentiable (finite gradients) for constant maps and masked NaNs.
    """
    p, t, m = _prepare(pred, target, mask, "ssi_loss")
    return _ssi(p, t, m, float(alpha), float(trim_fraction), bool(median_includes_masked_zeros), int(scales))


# ----------------------------------------------------------------------------------------------------
# edge-guided ranking loss (docs/method.md §8.4)

_RANK_A = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))  # x kernel
_RANK_B = ((1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -2.0, -1.0))  # y kernel


def _valid_xcorr3(x: Array, k) -> Array:
    h, w = x.shape
    out = 0.0
    for i in range(3):
        for j in range(3):
            if k[i][j] != 0.0:
                out = out + k[i][j] * x[i:i + h - 2, j:j + w - 2]
    return out


@functools.partial(jax.jit, static_argnames=("sigma", "alpha", "mask_value", "legacy_anchor_column_bug"))
def ranking_loss_single(pred: Array, target: Array, image: Array, key, sigma: float = 0.03,
                        alpha: float = 1.0,
                        mask_value: float = 0.1, legacy_anchor_column_bug: bool = False) -> Array:
    """Edge-guided ranking loss of one image: pred, target, image (H, W) (image = the guide's first channel).

    Static shapes: H*W anchor slots of which the first N (= number of edge pixels) are used, H*W/2 random-pair
    slots of which min(N, n_eff // 2) are used; the mean divides by the official pair count 3N + R.
    """
    h, w = target.shape
    npx = h * w
    pred = pred.astype(jnp.float32).ravel()
    tgt = target.astype(jnp.float32).ravel()
    img = image.astype(jnp.float32)
    gx = jnp.pad(_valid_xcorr3(img, _RANK_A), 1)
    gy = jnp.pad(_valid_xcorr3(img, _RANK_B), 1)
    mag = jnp.sqrt(gx ** 2 + gy ** 2).ravel()
    theta = jnp.pad(jnp.arctan2(_valid_xcorr3(img, _RANK_B), _valid_xcorr3(img, _RANK_A)), 1).ravel()
    edge = mag >= 0.1 * jnp.max(mag)
    n_edge = jnp.sum(edge)
    k_anchor, k_dist, k_perm = jax.random.split(key, 3)
    edge_idx = jnp.argsort(~edge, stable=True)  # edge pixels first, ascending (torch nonzero order)
    slot = jnp.arange(npx)
    pick = jax.random.randint(k_anchor, (npx,), 0, jnp.maximum(n_edge, 1))
    anchor = edge_idx[pick]
    th = theta[anchor]
    row_a = anchor // w
    col_a = jnp.zeros_like(anchor) if legacy_anchor_column_bug else anchor % w
    dist = jax.random.randint(k_dist, (4, npx), 2, 31).astype(jnp.float32)
    dist = dist * jnp.array([-1.0, -1.0, 1.0, 1.0])[:, None]
    col = jnp.clip(col_a[None] + jnp.round(dist * jnp.abs(jnp.cos(th))[None]).astype(jnp.int32), 0, w - 1)
    row = jnp.clip(row_a[None] + jnp.round(dist * jnp.abs(jnp.sin(th))[None]).astype(jnp.int32), 0, h - 1)
    pts = row * w + col  # (4, npx)
    ea = jnp.concatenate([pts[0], pts[1], pts[2]])
    eb = jnp.concatenate([pts[1], pts[2], pts[3]])
    e_used = jnp.tile(slot < n_edge, 3)
    # random pairs among pixels with target > mask_value: a uniform permutation of those pixels
    eff = tgt > mask_value
    n_eff = jnp.sum(eff)
    order = jnp.argsort(jnp.where(eff, jax.random.uniform(k_perm, (npx,)), 2.0))
    half = npx // 2
    ra, rb = order[0:2 * half:2], order[1:2 * half:2]
    n_rand = jnp.minimum(n_edge, n_eff // 2)
    r_used = jnp.arange(half) < n_rand
    ia = jnp.concatenate([ea, ra])
    ib = jnp.concatenate([eb, rb])
    used = jnp.concatenate([e_used, r_used])
    pa, pb, ta, tb = pred[ia], pred[ib], tgt[ia], tgt[ib]
    ratio = (ta + 1e-6) / (tb + 1e-6)
    eq = (ratio < 1.0 + sigma) & (ratio > 1.0 / (1.0 + sigma))
    lab = jnp.where(ratio >= 1.0 + sigma, 1.0, jnp.where(ratio <= 1.0 / (1.0 + sigma), -1.0, 0.0))
    cons = used & (ta > 0) & (tb > 0)
    diff = pa - pb
    equal = jnp.where(cons & eq, diff ** 2, 0.0)
    unequal = jnp.where(cons & ~eq, jax.nn.softplus(-lab * diff), 0.0)
    count = (3 * n_edge + n_rand).astype(jnp.float32)
    return jnp.where(count > 0, (alpha * jnp.sum(equal) + jnp.sum(unequal)) / jnp.maximum(count, 1.0), 0.0)


def ranking_loss(pred, target, image, key, sigma: float = 0.03, alpha: float = 1.0, mask_value: float = 0.1,
                 legacy_anchor_column_bug: bool = False) -> Array:
    """Edge-guided ranking loss (docs/method.md §8.4), averaged over the batch. Scalar.

    pred, target: (B, H, W) or (B, H, W, 1); target <= 0 (or non-finite) marks invalid pixels. image:
    (B, H, W, C) (edges from channel 0) or (B, H, W). `key`: a PRNG key (split per image).
    `legacy_anchor_column_bug=True` reproduces the official code's true division (every anchor in column 0).
    """
    p = _maps3(pred, "ranking_loss pred").astype(jnp.float32)
    t = _maps3(target, "ranking_loss target").astype(jnp.float32)
    img = jnp.asarray(image)
    img = img[..., 0] if img.ndim == 4 else img
    if not (p.shape == t.shape == img.shape):
        raise UserError(f"ranking_loss: pred, target and image must share (B, H, W), got {tuple(p.shape)}, "
                        f"{tuple(t.shape)} and {tuple(img.shape)}")
    return _ranking_batch(p, t, img, key, float(sigma), float(alpha), float(mask_value),
                          bool(legacy_anchor_column_bug))


@functools.partial(jax.jit, static_argnums=(4, 5, 6, 7))
def _ranking_batch(p, t, img, key, sigma, alpha, mask_value, legacy):
    t = jnp.where(jnp.isfinite(t), t, 0.0)
    keys = jax.random.split(key, p.shape[0])
    per = jax.vmap(lambda a, b, c, k: ranking_loss_single(a, b, c, k, sigma=sigma, alpha=alpha,
                                                          mask_value=mask_value,
                                                          legacy_anchor_column_bug=legacy))(p, t, img, keys)
    return jnp.mean(per)


# ----------------------------------------------------------------------------------------------------
# composite pieces


def _check_batch(outputs, batch) -> None:
    for k in ("depth", "valid"):
        if k not in batch:
            raise UserError(f"loss batch: missing key {k!r} (expected rgb, low, high, depth, valid)")
    ref = outputs.refined
    if ref.ndim != 4 or ref.shape[-1] != 1:
        raise UserError(f"loss outputs.refined: expected (B, S, S, 1), got {tuple(ref.shape)}")
    for k in ("depth", "valid"):
        if tuple(batch[k].shape) != tuple(ref.shape):
            raise UserError(f"loss batch[{k!r}]: expected shape {tuple(ref.shape)} (outputs.refined), "
                            f"got {tuple(batch[k].shape)}")


def _check_labels(labels, shape, need=("edge", "mask_edge", "mask_flat")) -> None:
    for k in need:
        if k not in labels:
            raise UserError(f"loss labels: missing key {k!r} (expected edge, mask_edge, mask_flat, regions)")
        if tuple(labels[k].shape) != tuple(shape):
            raise UserError(f"loss labels[{k!r}]: expected shape {tuple(shape)}, "
                            f"got {tuple(labels[k].shape)}")


def gt_loss(outputs, batch, c: Mapping, side_outputs: bool = True) -> Array:
    """L_gt = sum over outputs of w_ssi l_ssi(o, GT down, M_gt down; alpha) (GT, mask by PyTorch nearest)."""
    depth = batch["depth"].astype(jnp.float32)
    valid = batch["valid"].astype(bool) & jnp.isfinite(depth)
    depth = jnp.where(valid, depth, 0.0)
    outs = (outputs.refined, outputs.out_half, outputs.out_quart) if side_outputs else (outputs.refined,)
    total = 0.0
    for o in outs:
        hw = o.shape[1:3]
        g = resize_nearest(depth, hw)
        m = resize_nearest(valid, hw)
        p, t, mm = _prepare(o, g, m, "L_gt")
        total = total + c["w_ssi"] * _ssi(p, t, mm, c["alpha"], c["trim_fraction"],
                                          c["median_includes_masked_zeros"], c["grad_scales"])
    return total


@functools.partial(jax.jit, static_argnames=("q_low", "q_high"))
def soft_mask_loss(mask, edge_mask, flat_mask, q_low: float = 0.15, q_high: float = 0.85) -> Array:
    """Official soft-mask term E_m + F_m for one mask m (B, h, w, 1) (docs/method.md §8.2, item 2).

    lo / hi = the values at indices floor(q_low N) / floor(q_high N) of the ascending sort of all mask values
    in the batch; E = mean of m over edge pixels with m > lo (pushes m to 0 on edges), F = mean of (1 - m)
    over flat pixels with m < hi (pushes m to 1 on flat areas). `edge_mask`/`flat_mask` are already at m's
    size. An empty selection contributes 0.
    """
    m = mask.astype(jnp.float32)
    flat = jnp.sort(jax.lax.stop_gradient(m).ravel())
    n = flat.shape[0]
    lo = flat[min(int(q_low * n), n - 1)]
    hi = flat[min(int(q_high * n), n - 1)]
    sel_e = edge_mask & (m > lo)
    sel_f = flat_mask & (m < hi)
    ne = jnp.sum(sel_e.astype(jnp.float32))
    nf = jnp.sum(sel_f.astype(jnp.float32))
    e = jnp.where(ne > 0, jnp.sum(jnp.where(sel_e, m, 0.0)) / jnp.maximum(ne, 1.0), 0.0)
    f = jnp.where(nf > 0, jnp.sum(jnp.where(sel_f, 1.0 - m, 0.0)) / jnp.maximum(nf, 1.0), 0.0)
    return e + f


def region_gradient_loss(g0, gs, regions, beta_stop_gradient: bool = False) -> Array:
    """Paper's L_grad = (1/N_g) sum_n ||b1 G_0[P_n] + b0 - G_S[P_n]||_1 / |P_n|, averaged over the batch.

    g0, gs: (B, H, W) or (B, H, W, 1); regions: (B, N_g, H, W) bool. (b1, b0): closed-form least squares of
    G_0 to G_S inside P_n (stop-gradient optional). An empty region contributes 0.
    """
    x = _maps3(g0, "L_grad g0").astype(jnp.float32)
    y = _maps3(gs, "L_grad gs").astype(jnp.float32)
    r = jnp.asarray(regions).astype(bool)
    if r.ndim != 4 or r.shape[0] != x.shape[0] or r.shape[2:] != x.shape[1:]:
        raise UserError(f"L_grad regions: expected (B, N_g, H, W) = ({x.shape[0]}, N_g, {x.shape[1]}, "
                        f"{x.shape[2]}), got {tuple(r.shape)}")
    return _region_gradient(x, y, r, bool(beta_stop_gradient))


@functools.partial(jax.jit, static_argnums=3)
def _region_gradient(x: Array, y: Array, r: Array, beta_stop_gradient: bool) -> Array:
    r = r & jnp.isfinite(y)[:, None]
    y = jnp.where(jnp.isfinite(y), y, 0.0)
    xs, ys = x[:, None], y[:, None]
    b1, b0 = align_scale_shift(xs, ys, r, axes=(-2, -1), min_var=1e-12, degenerate="mean")
    if beta_stop_gradient:
        b1, b0 = jax.lax.stop_gradient(b1), jax.lax.stop_gradient(b0)
    res = jnp.where(r, jnp.abs(b1[..., None, None] * xs + b0[..., None, None] - ys), 0.0)
    cnt = jnp.sum(r.astype(jnp.float32), axis=(-2, -1))
    per = jnp.where(cnt > 0, jnp.sum(res, axis=(-2, -1)) / jnp.maximum(cnt, 1.0), 0.0)  # (B, N_g)
    return jnp.mean(jnp.mean(per, axis=-1))


@functools.partial(jax.jit, static_argnames=("a", "n_w"))
def fusion_loss(mask, gs, a: float = 0.02, n_w: int = 4) -> Array:
    """Paper's L_fusion for one soft mask m (B, h, w, 1) with G_S already at m's size (docs/method.md §8.3).

    Omega = 1 - m. Per image: t_q = q-quantile of G_S, T_q = q-quantile of Omega; for n = 1..N_w, pixels with
    G_S < t_{n a} add max(0, Omega - T_{n a}) and pixels with G_S > t_{1 - n a} add max(0, T_{1 - n a} -
    Omega); divided by N_w N_p. Averaged over the batch.
    """
    om = 1.0 - _maps3(mask, "L_fusion mask").astype(jnp.float32)
    g = _maps3(gs, "L_fusion gs").astype(jnp.float32)
    b = om.shape[0]
    of, gf = om.reshape(b, -1), g.reshape(b, -1)
    total = 0.0
    for k in range(1, int(n_w) + 1):
        q_lo, q_hi = k * a, 1.0 - k * a
        t_lo = jnp.quantile(gf, q_lo, axis=-1)[:, None]
        t_hi = jnp.quantile(gf, q_hi, axis=-1)[:, None]
        big_lo = jnp.quantile(of, q_lo, axis=-1)[:, None]
        big_hi = jnp.quantile(of, q_hi, axis=-1)[:, None]
        total = total + jnp.sum(jnp.where(gf < t_lo, jax.nn.relu(of - big_lo), 0.0), axis=-1)
        total = total + jnp.sum(jnp.where(gf > t_hi, jax.nn.relu(big_hi - of), 0.0), axis=-1)
    return jnp.mean(total / (int(n_w) * of.shape[-1]))


def _batch_key(batch, seed: int):
    return batch["rng"] if "rng" in batch else jax.random.key(seed)


class _Outs(NamedTuple):
    refined: Array
    out_half: Array
    out_quart: Array
    mask_quart: Array
    mask_half: Array


def _composite_args(outputs, batch, labels, keys_batch, keys_labels):
    """Duck-typed outputs -> a pytree; only the needed batch / label entries (the inner jit sees arrays)."""
    o = _Outs(*(jnp.asarray(getattr(outputs, k)) for k in _Outs._fields))
    b = {k: batch[k] for k in keys_batch if k in batch}
    lab = None if labels is None else {k: labels[k] for k in keys_labels if k in labels}
    return o, b, lab


def _freeze(c: Mapping) -> tuple:
    """Config -> a hashable static argument (lists become tuples)."""
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in c.items()))


# ----------------------------------------------------------------------------------------------------
# the `official` variant (docs/method.md §8.2)


def official_config() -> ml_collections.ConfigDict:
    """Defaults of the `official` loss (docs/method.md §8.2 / 8.4), quirks as named flags."""
    return ml_collections.ConfigDict({
        "name": "official",
        "w_ssi": 1.0, "w_mask": 0.1, "w_grad": 0.5, "w_rank": 0.0,  # w = [w_ssi, w_mask, w_grad, w_rank]
        "alpha": 0.5,  # gradient-matching weight inside L_gt
        "grad_scales": 4,
        "trim_fraction": 0.0,  # the official trimming is a no-op
        "median_includes_masked_zeros": True,
        "square_grad_weight": True,  # official: w_grad * (w_grad L_local + w_rank L_rank)
        "mask_quantile_low": 0.15, "mask_quantile_high": 0.85,
        "rank_sigma": 0.03, "rank_alpha": 1.0, "rank_mask_value": 0.1,
        "legacy_anchor_column_bug": False,
        "rank_seed": 0,  # used when the batch carries no "rng" key (training adds a fresh one per step and device)
        "rank_target": "pseudo",  # "pseudo": the labels' D_S when they carry it (official); "gt": ground truth
    })


@register_loss("official", official_config)
def official_loss(outputs, batch, labels, config) -> tuple[Array, dict]:
    """The official release's training loss (docs/method.md §8.2).

    Total = L_gt + L_mask + w_grad (w_grad L_local + w_rank L_rank); with `square_grad_weight=False`
    L_gt + L_mask + w_grad L_local + w_rank L_rank. With `labels=None`, L_gt only.
    aux: l_gt, l_mask, l_local, l_rank, total. Config values are static Python numbers / bools.
    """
    c = _cfg(config, "official")
    _check_batch(outputs, batch)
    if labels is not None:
        _check_labels(labels, outputs.refined.shape)
        if c["w_rank"] != 0.0 and "rgb" not in batch:
            raise UserError("official loss with w_rank != 0: batch needs 'rgb' for the ranking loss")
    args = _composite_args(outputs, batch, labels, ("depth", "valid", "rgb", "rng"),
                           ("edge", "mask_edge", "mask_flat"))
    return _official_impl(*args, _freeze(c))


@functools.partial(jax.jit, static_argnums=3)
def _official_impl(outputs, batch, labels, frozen) -> tuple[Array, dict]:
    c = dict(frozen)
    l_gt = gt_loss(outputs, batch, c, side_outputs=True)
    zero = jnp.zeros((), jnp.float32)
    if labels is None:
        return l_gt, {"l_gt": l_gt, "l_mask": zero, "l_local": zero, "l_rank": zero, "total": l_gt}
    me = labels["mask_edge"].astype(bool)
    mf = labels["mask_flat"].astype(bool)
    l_mask = zero
    for m in (outputs.mask_half, outputs.mask_quart):  # m6, m5
        hw = m.shape[1:3]
        l_mask = l_mask + c["w_mask"] * soft_mask_loss(m, resize_nearest(me, hw), resize_nearest(mf, hw),
                                                       c["mask_quantile_low"], c["mask_quantile_high"])
    p, t, mm = _prepare(edges.sobel_abs(outputs.refined), labels["edge"], me, "L_local")
    l_local = _ssi(p, t, mm, 0.0, c["trim_fraction"], c["median_includes_masked_zeros"], c["grad_scales"])
    if c["w_rank"] != 0.0:
        if c.get("rank_target", "pseudo") == "pseudo" and "depth" in labels:
            target = labels["depth"].astype(jnp.float32)  # the teacher's refined depth D_S (official code)
        else:
            depth = batch["depth"].astype(jnp.float32)
            target = jnp.where(batch["valid"].astype(bool) & jnp.isfinite(depth), depth, 0.0)
        img = batch["rgb"][..., 0]
        l_rank = _ranking_batch(outputs.refined[..., 0].astype(jnp.float32), target[..., 0], img,
                                _batch_key(batch, c["rank_seed"]), float(c["rank_sigma"]),
                                float(c["rank_alpha"]),
                                float(c["rank_mask_value"]), bool(c["legacy_anchor_column_bug"]))
    else:
        l_rank = zero
    if c["square_grad_weight"]:
        edge_terms = c["w_grad"] * (c["w_grad"] * l_local + c["w_rank"] * l_rank)
    else:
        edge_terms = c["w_grad"] * l_local + c["w_rank"] * l_rank
    total = l_gt + l_mask + edge_terms
    return total, {"l_gt": l_gt, "l_mask": l_mask, "l_local": l_local, "l_rank": l_rank, "total": total}


# ----------------------------------------------------------------------------------------------------
# the `paper` variant (docs/method.md §8.3)


def paper_config() -> ml_collections.ConfigDict:
    """Defaults of the `paper` loss (docs/method.md §8.3)."""
    return ml_collections.ConfigDict({
        "name": "paper",
        "w_ssi": 1.0, "lambda_grad": 0.5, "lambda_fusion": 0.1,
        "alpha": 0.5, "grad_scales": 4, "trim_fraction": 0.0, "median_includes_masked_zeros": True,
        "include_side_outputs": False,  # L_gt on the refined output only
        "beta_stop_gradient": False,
        "fusion_a": 0.02, "fusion_n_w": 4,
        # used only when labels carry no "regions" (edges.edge_regions on labels["edge"])
        "num_regions": 4, "region_top_fraction": 0.05, "region_margin": 8, "region_iterations": 10,
    })


@register_loss("paper", paper_config)
def paper_loss(outputs, batch, labels, config) -> tuple[Array, dict]:
    """The paper's loss (docs/method.md §8.3): L_gt + lambda_grad L_grad + lambda_fusion L_fusion.

    With `labels=None`, L_gt only.
    L_fusion sums the term over m5 and m6. aux: l_gt, l_grad, l_fusion, total.
    """
    c = _cfg(config, "paper")
    _check_batch(outputs, batch)
    if labels is not None:
        _check_labels(labels, outputs.refined.shape, need=("edge",))
        if "regions" in labels:
            r = labels["regions"]
            b, s = outputs.refined.shape[0], outputs.refined.shape[1:3]
            if r.ndim != 4 or r.shape[0] != b or tuple(r.shape[2:]) != tuple(s):
                raise UserError(f"loss labels['regions']: expected (B, N_g, S, S) = "
                                f"({b}, N_g, {s[0]}, {s[1]}), "
                                f"got {tuple(r.shape)}")
    args = _composite_args(outputs, batch, labels, ("depth", "valid"), ("edge", "regions"))
    return _paper_impl(*args, _freeze(c))


@functools.partial(jax.jit, static_argnums=3)
def _paper_impl(outputs, batch, labels, frozen) -> tuple[Array, dict]:
    c = dict(frozen)
    l_gt = gt_loss(outputs, batch, c, side_outputs=bool(c["include_side_outputs"]))
    zero = jnp.zeros((), jnp.float32)
    if labels is None:
        return l_gt, {"l_gt": l_gt, "l_grad": zero, "l_fusion": zero, "total": l_gt}
    gs = labels["edge"].astype(jnp.float32)
    if "regions" in labels:
        regions = labels["regions"]
    else:
        regions = edges.edge_regions(jax.lax.stop_gradient(gs), c["num_regions"], c["region_top_fraction"],
                                     c["region_margin"], c["region_iterations"])
    l_grad = region_gradient_loss(edges.sobel_abs(outputs.refined), gs, regions,
                                  bool(c["beta_stop_gradient"]))
    gs_f = jnp.where(jnp.isfinite(gs), gs, 0.0)
    l_fusion = zero
    for m in (outputs.mask_quart, outputs.mask_half):
        gs_m = resize_nearest(gs_f, m.shape[1:3])
        l_fusion = l_fusion + fusion_loss(m, gs_m, c["fusion_a"], c["fusion_n_w"])
    total = l_gt + c["lambda_grad"] * l_grad + c["lambda_fusion"] * l_fusion
    return total, {"l_gt": l_gt, "l_grad": l_grad, "l_fusion": l_fusion, "total": total}
