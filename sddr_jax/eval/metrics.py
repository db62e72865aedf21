"""Metrics and evaluation protocols (docs/method.md §9): depth accuracy, aggregation, ORD/D3R, ORD_rank, boundary F1,
Middlebury GT.

* `depth_metrics` (jittable jnp, per image; `depth_metrics_batch` beside it): least-squares (or median)
  alignment, then AbsRel, SqRel, RMSE, log10, delta1..3 on the valid pixels, as the official Middlebury
  script.
* `aggregate`: the official script's dataset mean (per-image values that are NaN or <= 0 are skipped).
* `boost_edge_metrics` / `d3r` / `ord_boost`: Boost's superpixel protocol with scikit-image SLIC (host numpy).
* `ord_ranking`: SDDR's Eq. 13 on edge-guided point pairs (the ranking loss of docs/method.md §8.4 with a fixed seed).
* `boundary_f1`: Depth Pro's scale-invariant boundary F1 (host numpy).
* `middlebury_gt_depth`, `middlebury_metrics` (calib files: `io.read_middlebury_calib`): the official
  Middlebury2021 ground truth (with its uint8 cast as the `legacy_uint8_gt` switch).

Empty valid masks give NaN metrics, which `aggregate` skips.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any, Iterable, Iterator, Mapping

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from sddr_jax.errors import UserError
from sddr_jax.ops import align_scale_shift

Array = jax.Array

METRIC_KEYS = ("abs_rel", "sq_rel", "rmse", "log10", "delta1", "delta2", "delta3")
ALIGN_MODES = ("lsq", "median", "none")
SPACES = ("depth", "disparity")


# ----------------------------------------------------------------------------------------------------
# depth accuracy (docs/method.md §9.1)


def _check_pair(pred, gt, valid, name: str):
    pred = jnp.asarray(pred)
    gt = jnp.asarray(gt)
    if pred.shape != gt.shape:
        raise UserError(f"{name}: pred and gt must have the same shape, got {tuple(pred.shape)} and "
                        f"{tuple(gt.shape)}")
    if valid is None:
        valid = jnp.ones(gt.shape, bool)
    else:
        valid = jnp.asarray(valid)
        if valid.shape != gt.shape:
            raise UserError(f"{name}: valid must have gt's shape {tuple(gt.shape)}, got {tuple(valid.shape)}")
    return pred, gt, valid.astype(bool)


def _masked_median(x: Array, m: Array) -> Array:
    """Median of x over m (mean of the two middle values for even counts, as np.median); NaN if m is empty."""
    flat = jnp.where(m, x, jnp.inf).ravel()
    s = jnp.sort(flat)
    n = jnp.sum(m)
    lo = s[jnp.maximum((n - 1) // 2, 0)]
    hi = s[jnp.maximum(n // 2, 0)]
    return jnp.where(n > 0, 0.5 * (lo + hi), jnp.nan)


def align_prediction(pred, gt, valid, align: str = "lsq", space: str = "depth") -> Array:
    """The prediction aligned to gt on the valid pixels (docs/method.md §9.1), jittable.

    `align`: "lsq" (least-squares scale and shift, the official script), "median" (scale only: median(target)
    / median(pred)) or "none". `space`: "depth" fits pred to gt and keeps the result unclipped; "disparity"
    fits pred to 1/gt, clips negatives to 0 and inverts (a zero becomes +inf, as in the official script).
    """
    if align not in ALIGN_MODES:
        raise UserError(f"align: expected one of {ALIGN_MODES}, got {align!r}")
    if space not in SPACES:
        raise UserError(f"space: expected one of {SPACES}, got {space!r}")
    pred = jnp.asarray(pred, jnp.float32)
    gt = jnp.asarray(gt, jnp.float32)
    valid = jnp.asarray(valid, bool) & jnp.isfinite(gt) & (gt > 0) & jnp.isfinite(pred)
    target = gt if space == "depth" else 1.0 / jnp.where(valid, gt, 1.0)
    x = jnp.where(valid, pred, 0.0)
    y = jnp.where(valid, target, 0.0)
    if align == "lsq":
        a, b = align_scale_shift(x, y, valid, axes=(-2, -1), degenerate="mean")
        out = a * pred + b
    elif align == "median":
        out = pred * (_masked_median(y, valid) / _masked_median(x, valid))
    else:
        out = pred
    if space == "disparity":
        out = 1.0 / jnp.maximum(out, 0.0)
    return out


def _errors(p: Array, g: Array, m: Array) -> dict[str, Array]:
    """Per-image errors on pixels m (compute_global_errors of the official script); NaN if m is empty."""
    n = jnp.sum(m.astype(jnp.float32))
    g = jnp.where(m, g, 1.0)
    p = jnp.where(m, p, 1.0)

    def mean(v):
        return jnp.where(n > 0, jnp.sum(jnp.where(m, v, 0.0)) / jnp.maximum(n, 1.0), jnp.nan)

    thresh = jnp.maximum(g / p, p / g)
    return {
        "abs_rel": mean(jnp.abs(g - p) / g),
        "sq_rel": mean((g - p) ** 2 / g),
        "rmse": jnp.sqrt(mean((g - p) ** 2)),
        "log10": mean(jnp.abs(jnp.log10(g) - jnp.log10(p))),
        "delta1": mean((thresh < 1.25).astype(jnp.float32)),
        "delta2": mean((thresh < 1.25 ** 2).astype(jnp.float32)),
        "delta3": mean((thresh < 1.25 ** 3).astype(jnp.float32)),
    }


def depth_metrics(pred, gt, valid=None, align: str = "lsq", space: str = "depth") -> dict[str, Array]:
    """AbsRel, SqRel, RMSE, log10, delta1..3 of one image (2-D arrays) after alignment (docs/method.md §9.1). Jittable.

    Valid pixels: `valid` (default all) and finite gt > 0 and finite pred; NaN/inf in gt never enter. The
    metrics use gt and the aligned prediction on those pixels (an aligned value <= 0 gives NaN log10 / delta
    effects exactly as numpy would in the official script). An empty mask gives NaN for every key. Keys:
    abs_rel, sq_rel, rmse, log10, delta1, delta2, delta3.
    """
    pred, gt, valid = _check_pair(pred, gt, valid, "depth_metrics")
    if pred.ndim != 2:
        raise UserError(f"depth_metrics: expected 2-D (H, W) maps, got shape {tuple(pred.shape)}; "
                        "use depth_metrics_batch for (B, H, W[, 1])")
    aligned = align_prediction(pred, gt, valid, align, space)
    m = valid & jnp.isfinite(gt) & (gt > 0) & jnp.isfinite(pred)
    return _errors(aligned, jnp.asarray(gt, jnp.float32), m)


def depth_metrics_batch(pred, gt, valid=None, align: str = "lsq", space: str = "depth") -> dict[str, Array]:
    """`depth_metrics` over a batch: (B, H, W) or (B, H, W, 1) arrays -> dict of (B,) arrays. Jittable."""
    pred, gt, valid = _check_pair(pred, gt, valid, "depth_metrics_batch")
    if pred.ndim == 4:
        if pred.shape[-1] != 1:
            raise UserError(f"depth_metrics_batch: 4-D arrays must be (B, H, W, 1), got {tuple(pred.shape)}")
        pred, gt, valid = pred[..., 0], gt[..., 0], valid[..., 0]
    if pred.ndim != 3:
        raise UserError(f"depth_metrics_batch: expected (B, H, W) or (B, H, W, 1), got {tuple(pred.shape)}")
    return jax.vmap(lambda p, g, v: depth_metrics(p, g, v, align, space))(pred, gt, valid)


def aggregate(per_image: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """Dataset score: per key, the mean of the per-image values that are > 0 (the official `nanmean(x[x >
    0])`).

    NaN (e.g. empty masks) and values equal to 0 are skipped, as are negative values; +inf is kept (as numpy
    would). A key with no usable value gives NaN. Note the official quirk: an image with delta1 = 0 is
    skipped.
    """
    rows = list(per_image)
    keys: list[str] = []
    for r in rows:
        for k in r:
            if k not in keys:
                keys.append(k)
    out = {}
    for k in keys:
        v = np.asarray([float(r[k]) for r in rows if k in r], np.float64)
        v = v[v > 0]
        out[k] = float(np.mean(v)) if v.size else float("nan")
    return out


# ----------------------------------------------------------------------------------------------------
# Middlebury2021 ground truth (docs/method.md §9.2)


def _calib_numbers(calib: Mapping) -> tuple[float, float, float]:
    try:
        cam0 = calib["cam0"]
        if isinstance(cam0, (int, float)):
            fx = float(cam0)
        else:
            fx = float(str(cam0).strip().lstrip("[").split()[0].rstrip(";"))
        return fx, float(calib["baseline"]), float(calib["doffs"])
    except KeyError as e:
        raise UserError(f"Middlebury calib: missing key {e.args[0]!r} (need cam0, baseline, doffs)") from None
    except ValueError as e:
        raise UserError(f"Middlebury calib: cannot parse numbers ({e})") from None


def uint8_wrap(x) -> np.ndarray:
    """numpy's float -> uint8 cast as the official script gets it on x86: truncate toward 0, wrap mod 256."""
    x = np.asarray(x, np.float64)
    t = np.trunc(np.where(np.isfinite(x), x, 0.0)).astype(np.int64)
    return np.mod(t, 256).astype(np.uint8)


def middlebury_gt_depth(disp, calib: Mapping, legacy_uint8_gt: bool = True, pfm_scale: float = 1.0,
                        flip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Middlebury2021 GT depth = f_x * baseline / (disp / |scale| + doffs) and its valid mask (docs/method.md §9.2).

    `disp`: (H, W) disparity with the top image row first (pass `flip=True` for raw PFM order, bottom-up).
    `calib`: mapping with `cam0` (its first entry is f_x), `baseline`, `doffs` (strings as in calib.txt, or
    numbers). Infinite / NaN disparity gives depth 0 (invalid).
    `legacy_uint8_gt=True` (default, parity with the official script): depth truncated and wrapped to uint8
    (980.0 -> 212, 25.7 -> 25), returned as float32; valid = that value > 0 (so depths that wrap to 0 are
    invalid). `legacy_uint8_gt=False`: the float32 depth in the calib's units (millimetres).
    Returns (depth (H, W) float32, valid (H, W) bool).
    """
    d = np.asarray(disp, np.float64)
    if d.ndim == 3 and d.shape[-1] == 1:
        d = d[..., 0]
    if d.ndim != 2:
        raise UserError(f"middlebury_gt_depth disp: expected an (H, W) disparity, got shape {d.shape}")
    fx, baseline, doffs = _calib_numbers(calib)
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = fx * baseline / (d / abs(float(pfm_scale)) + doffs)
    depth = np.where(np.isfinite(depth), depth, 0.0)
    if flip:
        depth = np.flipud(depth)
    if legacy_uint8_gt:
        depth = uint8_wrap(depth).astype(np.float32)
    else:
        depth = depth.astype(np.float32)
    return np.ascontiguousarray(depth), np.ascontiguousarray(depth > 0)


def middlebury_metrics(pred, disp, calib: Mapping, legacy_uint8_gt: bool = True, pred_is_disp: bool = False,
                       flip: bool = False) -> dict[str, float]:
    """The official Middlebury2021 evaluation of one prediction (host; docs/method.md §9.2).

    The prediction (any size) is resized to the GT size with OpenCV INTER_LINEAR, aligned by least squares to
    GT depth (or to 1/GT with `pred_is_disp`, then clipped at 0 and inverted), and scored with
    `depth_metrics`.
    """
    gt, valid = middlebury_gt_depth(disp, calib, legacy_uint8_gt=legacy_uint8_gt, flip=flip)
    p = np.asarray(pred, np.float32)
    if p.ndim == 3 and p.shape[-1] == 1:
        p = p[..., 0]
    if p.ndim != 2:
        raise UserError(f"middlebury_metrics pred: expected an (H, W) map, got shape {p.shape}")
    p = cv2.resize(p, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_LINEAR)
    m = depth_metrics(p, gt, valid, align="lsq", space="disparity" if pred_is_disp else "depth")
    return {k: float(v) for k, v in m.items()}


# ----------------------------------------------------------------------------------------------------
# Depth Pro's scale-invariant boundary F1


def _fgbg(d: np.ndarray, t: float):
    with np.errstate(divide="ignore", invalid="ignore"):
        return (d[:, :-1] / d[:, 1:] > t, d[:-1, :] / d[1:, :] > t,
                d[:, 1:] / d[:, :-1] > t, d[1:, :] / d[:-1, :] > t)


def _boundary_f1_at(pr: np.ndarray, gt: np.ndarray, t: float, valid) -> float:
    ps, gs = _fgbg(pr, t), _fgbg(gt, t)
    if valid is not None:
        vh = valid[:, :-1] & valid[:, 1:]
        vv = valid[:-1, :] & valid[1:, :]
        vs = (vh, vv, vh, vv)
        ps = tuple(a & v for a, v in zip(ps, vs))
        gs = tuple(a & v for a, v in zip(gs, vs))
    r = 0.25 * sum(np.count_nonzero(a & b) / max(np.count_nonzero(b), 1) for a, b in zip(ps, gs))
    p = 0.25 * sum(np.count_nonzero(a & b) / max(np.count_nonzero(a), 1) for a, b in zip(ps, gs))
    if r + p == 0:
        return 0.0
    return 2.0 * r * p / (r + p)


def boundary_f1(pred, gt, valid=None, t_min: float = 1.05, t_max: float = 1.25,
                num_thresholds: int = 10) -> float:
    """Depth Pro's scale-invariant boundary F1 for depth ground truth (host numpy, (H, W) depth maps).

    Both maps are inverted (1 / max(d, 1e-6)); at each threshold t of linspace(t_min, t_max, N), a pixel pair
    of 4-neighbours is an occlusion boundary when the ratio of the inverses exceeds t (four directions);
    precision and recall are averaged over directions, F1 per threshold, and the F1s are averaged with weights
    proportional to t. Scale-invariant (not shift-invariant): pass an aligned prediction in depth units.
    `valid` (ours, default None = Depth Pro exactly): when given, only pairs with both pixels valid count.
    """
    pr = np.asarray(pred, np.float64)
    g = np.asarray(gt, np.float64)
    if pr.shape != g.shape or pr.ndim != 2:
        raise UserError(f"boundary_f1: expected two (H, W) maps of one shape, got {pr.shape} and {g.shape}")
    v = None
    if valid is not None:
        v = np.asarray(valid, bool)
        if v.shape != g.shape:
            raise UserError(f"boundary_f1 valid: expected shape {g.shape}, got {v.shape}")
        v = v & np.isfinite(g) & np.isfinite(pr)
    thresholds = np.linspace(t_min, t_max, int(num_thresholds))
    weights = thresholds / thresholds.sum()
    ipr = 1.0 / np.clip(np.nan_to_num(pr, nan=1e-6), 1e-6, None)
    igt = 1.0 / np.clip(np.nan_to_num(g, nan=1e-6), 1e-6, None)
    return float(sum(w * _boundary_f1_at(ipr, igt, float(t), v) for t, w in zip(thresholds, weights)))


# ----------------------------------------------------------------------------------------------------
# Boost's superpixel protocol: D3R and ORD_boost (docs/method.md §9.4)

_EPS = float(np.finfo(float).eps)  # MATLAB's eps


def _ord(v1: float, v2: float, delta: float) -> int:
    ratio = (v1 + _EPS) / (v2 + _EPS)
    if ratio > delta:
        return 1
    if ratio < 1.0 / delta:
        return -1
    return 0


def _rescale(x: np.ndarray, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    """MATLAB `rescale`: min-max over the non-NaN values; NaN stays NaN; a constant map gives lo."""
    mn, mx = np.nanmin(x), np.nanmax(x)
    if not np.isfinite(mn) or mx == mn:
        return np.where(np.isnan(x), np.nan, lo)
    return lo + (x - mn) / (mx - mn) * (hi - lo)


def superpixel_pairs(gt_disp_small: np.ndarray, n_segments: int = 5000, compactness: float = 0.1,
                     seed: int = 0, slic_zero: bool = True):
    """SLIC superpixels of a (small) GT disparity map -> (centres (n, 2) int rows/cols, neighbour lists,
    random lists), like Boost's `extractD3Rpoints` (MATLAB `superpixels(gt, 5000, 'Compactness', 20)`).

    skimage SLIC (`channel_axis=None`, SLIC0 by default, as MATLAB's default method) on the map with NaN -> 0.
    Centres: floor of the mean 1-based row/col (MATLAB convention), returned 0-based. Neighbours: labels of
    4-adjacent pixels (MATLAB `bwdist(mask) == 1`), sorted unique. Random: 3 labels drawn uniformly per
    segment (numpy Generator with `seed`; MATLAB's `randi` stream differs, so exact agreement is not
    expected).
    """
    from skimage.segmentation import slic

    g = np.nan_to_num(np.asarray(gt_disp_small, np.float64), nan=0.0)
    labels = slic(g, n_segments=int(n_segments), compactness=float(compactness), channel_axis=None,
                  start_label=0, slic_zero=slic_zero, enforce_connectivity=True)
    labels = np.unique(labels, return_inverse=True)[1].reshape(g.shape)  # consecutive 0..n-1
    n = int(labels.max()) + 1
    rows, cols = np.indices(g.shape)
    cnt = np.bincount(labels.ravel(), minlength=n).astype(np.float64)
    mr = np.bincount(labels.ravel(), weights=rows.ravel() + 1.0, minlength=n) / cnt
    mc = np.bincount(labels.ravel(), weights=cols.ravel() + 1.0, minlength=n) / cnt
    centres = np.stack([np.floor(mr), np.floor(mc)], axis=-1).astype(np.int64)  # 1-based
    pairs = np.concatenate([
        np.stack([labels[:, :-1].ravel(), labels[:, 1:].ravel()], -1),
        np.stack([labels[:-1, :].ravel(), labels[1:, :].ravel()], -1)])
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    pairs = np.unique(np.concatenate([pairs, pairs[:, ::-1]]), axis=0)
    neighbours = [[] for _ in range(n)]
    for a, b in pairs:
        neighbours[a].append(int(b))
    rng = np.random.default_rng(seed)
    random_rel = [list(map(int, rng.integers(0, n, 3))) for _ in range(n)]
    return centres - 1, neighbours, random_rel


def _counted_pairs(gv: np.ndarray, point_pairs, freq_ratio: float) -> Iterator[tuple[int, int]]:
    """The (i, j) pairs Boost's `D3R` loop counts: each unordered pair once (i removed from j's list), both GT
    values nonzero and ord(gt, 1 + freq_ratio) != 0."""
    pp = [list(p) for p in point_pairs]
    for i in range(len(pp)):
        for j in list(pp[i]):
            pp[j] = [k for k in pp[j] if k != i]
            if gv[i] != 0 and gv[j] != 0 and _ord(gv[i], gv[j], 1.0 + freq_ratio) != 0:
                yield i, j


def d3r_routine(gt: np.ndarray, est: np.ndarray, centres: np.ndarray, point_pairs, freq_ratio: float,
                 ratio: float) -> tuple[int, int]:
    """Boost's `D3R` loop: (error, confidence); each pair visited once (i removed from j's list)."""
    gt = np.nan_to_num(gt, nan=0.0)
    gv = gt[centres[:, 0], centres[:, 1]]
    ev = est[centres[:, 0], centres[:, 1]]
    error = confidence = 0
    for i, j in _counted_pairs(gv, point_pairs, freq_ratio):
        error += abs(_ord(gv[i], gv[j], 1.0 + ratio) - _ord(ev[i], ev[j], 1.0 + ratio))
        confidence += 1
    return error, confidence


def _ord_array(v1: np.ndarray, v2: np.ndarray, delta: float) -> np.ndarray:
    """`_ord` on arrays (the same float64 operations, element by element)."""
    r = (v1 + _EPS) / (v2 + _EPS)
    return np.where(r > delta, 1, np.where(r < 1.0 / delta, -1, 0))


def _pair_error(gv: np.ndarray, ev: np.ndarray, pairs: np.ndarray, ratio: float) -> tuple[int, int]:
    """`d3r_routine`'s (error, confidence) from its counted pairs (`_counted_pairs` as an (n, 2) array)."""
    if not len(pairs):
        return 0, 0
    i, j = pairs[:, 0], pairs[:, 1]
    err = np.abs(_ord_array(gv[i], gv[j], 1.0 + ratio) - _ord_array(ev[i], ev[j], 1.0 + ratio))
    return int(err.sum()), len(pairs)


def d3r_pair_errors(pred, gt, **kwargs) -> dict[str, np.ndarray]:
    """The D3R pairs of one image one by one (a diagnostic; keyword arguments as `boost_points`):
    {"centre_a", "centre_b" ((m, 2) rows/cols of each counted pair's two superpixel centres), "gt_ratio" ((m,)
    the larger GT value of the pair over the smaller, in the protocol's rescaled GT), "error" ((m,) int: 0
    agree, 1 flat, 2 reversed; D3R = error.mean())}."""
    pts = boost_points(pred, gt, **kwargs)
    centres, gv, pairs = pts["centres"], pts["gv"], pts["d3r_pairs"]
    ev = pts["est"][centres[:, 0], centres[:, 1]]
    i, j = pairs[:, 0], pairs[:, 1]
    error = np.abs(_ord_array(gv[i], gv[j], 1.01) - _ord_array(ev[i], ev[j], 1.01)).astype(np.int64)
    hi, lo = np.maximum(gv[i], gv[j]), np.minimum(gv[i], gv[j])
    return {"centre_a": centres[i], "centre_b": centres[j], "gt_ratio": (hi + _EPS) / (lo + _EPS), "error": error}


def d3r_outcomes(pred, gt, **kwargs) -> dict[str, float]:
    """How the D3R pairs of one image come out (a diagnostic; keyword arguments as `boost_points`):
    {"pairs", "agree", "flat" (the prediction's two values within 1 %: error 1), "reversed" (the opposite
    order: error 2)}, so D3R = (flat + 2 * reversed) / pairs, and "distance_sum", the summed distance in
    pixels between the two centres of each pair. (Every counted pair differs by > 10 % in the GT, so the GT's
    own order at 1 % is never 0 and a pair's error alone tells flat from reversed.)"""
    return d3r_outcomes_of_pairs(d3r_pair_errors(pred, gt, **kwargs))


def d3r_outcomes_of_pairs(pairs: dict[str, np.ndarray]) -> dict[str, float]:
    """`d3r_outcomes` from `d3r_pair_errors`' output (for a caller that also needs the pairs one by one)."""
    error = pairs["error"]
    distance = np.hypot(*(pairs["centre_a"] - pairs["centre_b"]).T.astype(np.float64))
    return {"pairs": len(error), "agree": int(np.sum(error == 0)), "flat": int(np.sum(error == 1)),
            "reversed": int(np.sum(error == 2)), "distance_sum": float(sum(distance.tolist(), 0.0))}


class _GroundTruthCache:
    """The GT-only part of Boost's protocol for the last few GT maps (keyed by their bytes and the options):
    `evaluate_maps` scores several predictions (refined, low, high) of each image, and the SLIC segmentation
    and the counted pairs depend on the GT alone, so they are computed once per image, not once per
    prediction. Values are read-only."""

    def __init__(self, size: int = 2):
        self.size, self.entries = size, {}

    def get(self, g: np.ndarray, options: tuple, build) -> dict[str, Any]:
        key = (g.shape, hashlib.blake2b(np.ascontiguousarray(g).tobytes(), digest_size=16).digest(), options)
        if key in self.entries:
            self.entries[key] = self.entries.pop(key)  # most recent last
        else:
            self.entries[key] = build()
            while len(self.entries) > self.size:
                self.entries.pop(next(iter(self.entries)))
        return self.entries[key]


_GT_CACHE = _GroundTruthCache()


def _ground_truth_points(g: np.ndarray, gt_space: str, superpixel_scale: float, n_segments: int,
                         compactness: float, seed: int, slic_zero: bool) -> dict[str, Any]:
    """`boost_points`' GT-only values (see there), with the counted pairs of D3R and ORD_boost."""
    g = np.where(np.isfinite(g) & (g != 0), g, np.nan)
    if gt_space == "depth":
        disp = 1.0 / g
        disp = disp / np.nanmax(disp) if np.any(np.isfinite(disp)) else disp
    else:
        disp = g
    min_disp = float(np.nanmin(disp)) if np.any(np.isfinite(disp)) else 0.0
    gt_depth = _rescale(1.0 / disp)
    gt_disp = _rescale(disp)
    s = float(superpixel_scale)
    h, w = g.shape
    if s != 1.0:
        sh, sw = int(math.ceil(h * s)), int(math.ceil(w * s))
        small = cv2.resize(np.nan_to_num(gt_disp, nan=0.0).astype(np.float32), (sw, sh),
                           interpolation=cv2.INTER_NEAREST)
    else:
        small = np.nan_to_num(gt_disp, nan=0.0)
    centres, neighbours, random_rel = superpixel_pairs(small, n_segments, compactness, seed, slic_zero)
    c1 = centres + 1  # MATLAB 1-based, scaled back, then 0-based
    centres = np.stack([np.clip(np.round(c1[:, 0] / s).astype(np.int64) - 1, 0, h - 1),
                        np.clip(np.round(c1[:, 1] / s).astype(np.int64) - 1, 0, w - 1)], -1)
    gv = np.nan_to_num(gt_depth, nan=0.0)[centres[:, 0], centres[:, 1]]

    def counted(lists, freq_ratio):
        return np.asarray(list(_counted_pairs(gv, lists, freq_ratio)), np.int64).reshape(-1, 2)

    out = {"gt_depth": gt_depth, "min_disp": min_disp, "centres": centres, "neighbours": neighbours,
           "random": random_rel, "gv": gv, "d3r_pairs": counted(neighbours, 0.1), "ord_pairs": counted(random_rel, 0.0)}
    for v in out.values():
        if isinstance(v, np.ndarray):
            v.flags.writeable = False
    return out


def boost_points(pred, gt, gt_space: str = "depth", pred_space: str = "disparity",
                 superpixel_scale: float = 1.0, n_segments: int = 5000, compactness: float = 0.1,
                 seed: int = 0, slic_zero: bool = True) -> dict[str, Any]:
    """What Boost's edge metrics compare, for one image (host numpy + skimage SLIC; docs/method.md §9.4):
    {"gt_depth", "est"} (both rescaled to [0, 1]), "centres" (n, 2) rows/cols at full resolution,
    "neighbours" and "random" (per-segment lists), and the pairs that D3R and ORD_boost count ("d3r_pairs",
    "ord_pairs": (n, 2) index arrays into the centres, as Boost's loops visit them). `boost_edge_metrics`
    scores them; `d3r_outcomes` sorts the D3R pairs by outcome. Everything but "est" depends on the GT alone
    and is computed once for the last GT maps seen (read-only arrays; the lists must not be changed).

    GT: zeros/NaN invalid. With `gt_space="depth"` (Boost's depth branch): disp = 1/depth, divided by its max;
    with "disparity": the map itself. min_disp = its smallest valid value; GT disparity and GT depth (1/disp)
    are each rescaled to [0, 1] (so the farthest GT pixel becomes 0, i.e. invalid, a quirk kept).
    Prediction: `pred_space="disparity"` (Boost): rescaled to [min_disp, 1], inverted, rescaled to [0, 1];
    `pred_space="depth"` (ours, for depth predictors such as LeReS): rescaled to [0, 1] directly.
    Superpixels: `superpixel_pairs` on the GT disparity resized by `superpixel_scale` (nearest; 0.2 for
    Middlebury, 1.0 elsewhere); centres scaled back as MATLAB does (1-based row / scale).
    """
    if gt_space not in SPACES or pred_space not in SPACES:
        raise UserError(f"gt_space / pred_space: expected one of {SPACES}, got {gt_space!r} / {pred_space!r}")
    g = np.asarray(gt, np.float64)
    p = np.asarray(pred, np.float64)
    if g.ndim != 2 or p.shape != g.shape:
        raise UserError(f"boost_edge_metrics: expected two (H, W) maps of one shape, "
                        f"got {p.shape} and {g.shape}")
    options = (gt_space, float(superpixel_scale), int(n_segments), float(compactness), int(seed), bool(slic_zero))
    pts = dict(_GT_CACHE.get(g, options, lambda: _ground_truth_points(g, *options)))
    p = np.nan_to_num(p, nan=0.0)
    if pred_space == "disparity":
        with np.errstate(divide="ignore"):
            est = _rescale(1.0 / _rescale(p, pts["min_disp"], 1.0))
    else:
        est = _rescale(p)
    pts["est"] = est
    return pts


def boost_edge_metrics(pred, gt, gt_space: str = "depth", pred_space: str = "disparity",
                       superpixel_scale: float = 1.0, n_segments: int = 5000, compactness: float = 0.1,
                       seed: int = 0, slic_zero: bool = True) -> dict[str, float]:
    """D3R and ORD_boost of one image with Boost's protocol (the arguments and the preparation: `boost_points`).

    D3R: neighbour pairs with both GT nonzero and ord(gt, 1.1) != 0, mean |ord(gt, 1.01) - ord(pred, 1.01)|.
    ORD_boost: random pairs, freq ratio 0 (any GT difference counts), ratio 1.03 for both.
    A value with no counted pair is NaN. Returns {"d3r", "ord_boost", "d3r_pairs", "ord_pairs"}.
    """
    pts = boost_points(pred, gt, gt_space=gt_space, pred_space=pred_space, superpixel_scale=superpixel_scale,
                       n_segments=n_segments, compactness=compactness, seed=seed, slic_zero=slic_zero)
    centres, gv = pts["centres"], pts["gv"]
    ev = pts["est"][centres[:, 0], centres[:, 1]]
    e1, n1 = _pair_error(gv, ev, pts["d3r_pairs"], 0.01)  # = d3r_routine(..., neighbours, 0.1, 0.01)
    e2, n2 = _pair_error(gv, ev, pts["ord_pairs"], 0.03)  # = d3r_routine(..., random, 0.0, 0.03)
    return {"d3r": e1 / n1 if n1 else float("nan"), "ord_boost": e2 / n2 if n2 else float("nan"),
            "d3r_pairs": n1, "ord_pairs": n2}


def d3r(pred, gt, **kwargs) -> float:
    """D3R of one image (see `boost_edge_metrics` for the protocol and keyword arguments)."""
    return boost_edge_metrics(pred, gt, **kwargs)["d3r"]


def ord_boost(pred, gt, **kwargs) -> float:
    """ORD with Boost's protocol (random superpixel pairs; see `boost_edge_metrics`)."""
    return boost_edge_metrics(pred, gt, **kwargs)["ord_boost"]


# ----------------------------------------------------------------------------------------------------
# ORD_rank: SDDR's Eq. 13 (docs/method.md §9.4)


def ord_ranking(pred, gt, valid=None, image=None, seed: int = 0, sigma: float = 0.03,
                align: str = "lsq") -> float:
    """ORD_rank: the edge-guided ranking loss (docs/method.md §8.4) of the aligned prediction against GT, fixed seed.

    Normalisation (ours): pred is aligned to gt (`align_prediction(..., align, "depth")`), and both are
    divided by the median of the valid GT, so the value does not depend on GT units. Labels come from GT
    ratios with tau = `sigma` (0.03); invalid GT is set to 0 (pairs touching it do not count). Pairs:
    edge-guided sampling on `image` (an (H, W, C) RGB whose first channel gives the edges, or (H, W); default:
    the GT depth itself), one anchor per edge pixel (edges >= 0.1 max) with 3 pairs each, plus as many random
    pairs among pixels with normalised target > 0.1, all from `jax.random.key(seed)`. Value = mean over all
    pairs of the equal-pair squared difference plus mean of the logistic term on unequal pairs (the loss's
    normalisation).
    """
    from sddr_jax.losses import ranking_loss_single

    pred_j, gt_j, valid_j = _check_pair(pred, gt, valid, "ord_ranking")
    if pred_j.ndim != 2:
        raise UserError(f"ord_ranking: expected 2-D (H, W) maps, got shape {tuple(pred_j.shape)}")
    m = valid_j & jnp.isfinite(gt_j) & (gt_j > 0)
    aligned = align_prediction(pred_j, gt_j, m, align, "depth")
    scale = _masked_median(jnp.asarray(gt_j, jnp.float32), m)
    target = jnp.where(m, gt_j / scale, 0.0)
    p = jnp.where(m, aligned / scale, 0.0)
    if image is None:
        guide = target
    else:
        guide = jnp.asarray(image, jnp.float32)
        if guide.ndim == 3:
            guide = guide[..., 0]
        if guide.shape != gt_j.shape:
            raise UserError(f"ord_ranking image: expected spatial shape {tuple(gt_j.shape)}, "
                            f"got {tuple(guide.shape)}")
    val = ranking_loss_single(p, target, guide, jax.random.key(seed), sigma=sigma)
    return float(val)


# ----------------------------------------------------------------------------------------------------
# Everything of docs/method.md §9 for one image (used by `sddr-jax evaluate`, training's evaluation and the demo)


def image_metrics(pred, gt, valid, *, rgb=None, edge_metrics: bool = True, ord_rank: bool = True,
                  align: str = "lsq", space: str = "depth", pred_space: str = "depth",
                  superpixel_scale: float = 1.0) -> dict[str, float]:
    """All metrics of one (H, W) prediction against (H, W) ground truth on `valid` pixels (host floats).

    Depth metrics after alignment (`align`, `space`; docs/method.md §9.1). With `edge_metrics`: ORD_boost and D3R with
    Boost's protocol (`boost_edge_metrics`, docs/method.md §9.4), Depth Pro's boundary F1 on the aligned prediction, and
    (with `ord_rank`) ORD_rank, Eq. 13 with seed 0 and edges from `rgb` when given.
    """
    gt = np.asarray(gt, np.float64)
    valid = np.asarray(valid, bool) & np.isfinite(gt) & (gt > 0)
    gt = np.where(valid, gt, 0.0)
    out = {k: float(v) for k, v in depth_metrics(pred, gt, valid, align=align, space=space).items()}
    if edge_metrics:
        e = boost_edge_metrics(pred, gt, gt_space="depth", pred_space=pred_space, superpixel_scale=superpixel_scale)
        out["d3r"], out["ord_boost"] = float(e["d3r"]), float(e["ord_boost"])
        aligned = np.asarray(align_prediction(pred, gt, valid, align, "depth"), np.float64)
        out["boundary_f1"] = float(boundary_f1(np.maximum(aligned, 1e-6), gt, valid))
        if ord_rank:
            out["ord_rank"] = float(ord_ranking(pred, gt, valid, image=rgb, seed=0))
    return out
