"""Patch consistency error (CE): how much a patch-wise model's predictions disagree where patches overlap.

Source: B. Kwon and M. Kim, "One Look is Enough: Seamless Patchwise Refinement for Zero-Shot Monocular Depth
Estimation on High-Resolution Images" (PRO), ICCV 2025, arXiv:2503.22351. PRO reports CE (lower is better)
next to AbsRel / delta1 to measure the depth discontinuities that tile-based refiners leave at patch
boundaries, and trains against the same quantity with its Grouped Patch Consistency Training: a consistency
loss on the overlapping regions of neighbouring patches (the official code, KAIST-VICLab/One-Look-is-Enough,
`estimator/models/losses.py: ConsistencyLoss`, takes the mean absolute (L1) difference of two patches'
predictions over their shared pixels, for every pair of overlapping patches, with no alignment between them:
the patches are already in one global frame, normalised by the coarse prediction's median and MAD).

Definition implemented here. Patches k = 1..K with windows W_k = [y0, y1) x [x0, x1) of an H x W image and
predictions P_k (shaped like W_k). For every pair i < j whose windows intersect in O_ij (the valid pixels of
the overlap):

    e_ij = 1/|O_ij| * sum_{x in O_ij} | P_i(x) - A_ij(P_j)(x) |

where A_ij is the alignment (`align`): identity ("none", default, as PRO), a least-squares scale s
("scale": s * P_j fitted to P_i on O_ij) or scale and shift ("scale_shift"). Then

    CE = mean over overlapping pairs of e_ij         (reduction="pair", default: PRO's per-overlap L1 mean)
    CE = sum_ij sum_{O_ij} |...| / sum_ij |O_ij|     (reduction="pixel": every overlapping pixel pair counts once)

Properties: CE = 0 iff the patches agree on every overlap; with align="none" CE is invariant to a global
shift and scales with a global scale (CE(k P) = |k| CE(P)); with "scale" it is also invariant to a per-patch
scale, with "scale_shift" to a per-patch affine map (patch-wise relative predictions).

Assumptions (the paper's text was not available to check them against; see docs): the pairwise mean absolute
difference on the raw overlap (no alignment) is taken from the official consistency loss; averaging over pairs
(instead of the loss's sum) and the optional alignments are our choices for a metric.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from sddr_jax.errors import UserError

ALIGN_MODES = ("none", "scale", "scale_shift")
REDUCTIONS = ("pair", "pixel")


def _as_window(window: Any, name: str, image_shape: tuple[int, int]) -> tuple[int, int, int, int]:
    try:
        y0, y1, x0, x1 = (int(v) for v in window)
    except (TypeError, ValueError):
        raise UserError(f"{name}: expected a window (y0, y1, x0, x1) of four integers, got {window!r}") from None
    if not (y0 < y1 and x0 < x1):
        raise UserError(f"{name}: empty window (y0, y1, x0, x1) = {(y0, y1, x0, x1)}; need y0 < y1 and x0 < x1")
    h, w = image_shape
    if y0 < 0 or x0 < 0 or y1 > h or x1 > w:
        raise UserError(f"{name}: window (y0, y1, x0, x1) = {(y0, y1, x0, x1)} lies outside the "
                        f"{h}x{w} (height x width) image")
    return y0, y1, x0, x1


def _check_image_shape(image_shape: Any) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in tuple(image_shape)[:2])
    except (TypeError, ValueError):
        raise UserError(f"image_shape: expected (height, width), got {image_shape!r}") from None
    if h <= 0 or w <= 0:
        raise UserError(f"image_shape: expected positive (height, width), got {(h, w)}")
    return h, w


def _fit(target: np.ndarray, source: np.ndarray, align: str) -> np.ndarray:
    """`source` aligned to `target` by least squares (1-D arrays of the overlap's valid pixels)."""
    if align == "none":
        return source
    if align == "scale":
        den = float(np.dot(source, source))
        return source * (float(np.dot(source, target)) / den if den > 0 else 1.0)
    a = np.stack([source, np.ones_like(source)], axis=1)
    (s, t), *_ = np.linalg.lstsq(a, target, rcond=None)
    return s * source + t


def patch_consistency_error(patches: Sequence[tuple[Any, Any]], image_shape: Any, *, align: str = "none",
                            reduction: str = "pair", valid: Any = None) -> float:
    """PRO's patch consistency error (CE, lower is better) of `patches` = [(window, prediction), ...].

    window: (y0, y1, x0, x1) of the image (e.g. `sddr_jax.inference.Window`); prediction: the (y1-y0, x1-x0)
    map the model predicted for that window, in the image's frame (all patches in the same units).
    image_shape: (H, W) of the full image. align: "none" | "scale" | "scale_shift" (see the module
    docstring). reduction: "pair" (mean of the per-overlap means) or "pixel". valid: optional (H, W) boolean
    mask; only overlap pixels where it is true count.

    Raises UserError naming the argument for malformed windows or predictions, windows outside the image, no
    overlapping pair of windows, or overlaps without a valid pixel.
    """
    if align not in ALIGN_MODES:
        raise UserError(f"align: expected one of {ALIGN_MODES}, got {align!r}")
    if reduction not in REDUCTIONS:
        raise UserError(f"reduction: expected one of {REDUCTIONS}, got {reduction!r}")
    shape = _check_image_shape(image_shape)
    try:
        items = list(patches)
    except TypeError:
        raise UserError(f"patches: expected a sequence of (window, prediction) pairs, got {type(patches).__name__}") from None
    if len(items) < 2:
        raise UserError(f"patches: need at least two (window, prediction) pairs to compare, got {len(items)}")
    mask = None
    if valid is not None:
        mask = np.asarray(valid, dtype=bool)
        if mask.shape != shape:
            raise UserError(f"valid: expected a mask of the image's shape {shape}, got {mask.shape}")

    windows, preds = [], []
    for k, item in enumerate(items):
        try:
            window, pred = item
        except (TypeError, ValueError):
            raise UserError(f"patches[{k}]: expected a (window, prediction) pair") from None
        win = _as_window(window, f"patches[{k}] window", shape)
        p = np.asarray(pred, dtype=np.float64)
        if p.ndim == 3 and p.shape[-1] == 1:
            p = p[..., 0]
        if p.shape != (win[1] - win[0], win[3] - win[2]):
            raise UserError(f"patches[{k}] prediction: expected shape {(win[1] - win[0], win[3] - win[2])} "
                            f"(the window's height x width), got {p.shape}")
        bad = ~np.isfinite(p)
        if bad.any():
            raise UserError(f"patches[{k}] prediction: {int(bad.sum())} non-finite values")
        windows.append(win)
        preds.append(p)

    total, count, pair_errors, overlapping = 0.0, 0, [], 0
    for i in range(len(windows)):
        for j in range(i + 1, len(windows)):
            (ai0, ai1, bi0, bi1), (aj0, aj1, bj0, bj1) = windows[i], windows[j]
            y0, y1, x0, x1 = max(ai0, aj0), min(ai1, aj1), max(bi0, bj0), min(bi1, bj1)
            if y0 >= y1 or x0 >= x1:
                continue
            overlapping += 1
            pi = preds[i][y0 - ai0:y1 - ai0, x0 - bi0:x1 - bi0]
            pj = preds[j][y0 - aj0:y1 - aj0, x0 - bj0:x1 - bj0]
            if mask is not None:
                m = mask[y0:y1, x0:x1]
                pi, pj = pi[m], pj[m]
            pi, pj = pi.ravel(), pj.ravel()
            if pi.size == 0:
                continue
            diff = np.abs(pi - _fit(pi, pj, align))
            total += float(diff.sum())
            count += diff.size
            pair_errors.append(float(diff.mean()))
    if overlapping == 0:
        raise UserError(f"patches: no two of the {len(windows)} windows overlap; CE needs overlapping patches")
    if count == 0:
        raise UserError("valid: no valid pixel in any overlap of the patches")
    return float(np.mean(pair_errors)) if reduction == "pair" else total / count


def patchwise_consistency_error(predict: Callable[[np.ndarray], Any], image: Any, windows: Sequence[Any],
                                **kwargs: Any) -> float:
    """CE of a patch-wise predictor on one image: `predict(crop) -> (h, w) map` is called on every window's
    crop of `image` (H, W[, C]); the maps are compared with `patch_consistency_error` (kwargs go there).

    `windows` are (y0, y1, x0, x1) tuples, e.g. `sddr_jax.inference.window_grid(H, W, pieces, cover)`.
    """
    if not callable(predict):
        raise UserError(f"predict: expected a callable crop -> depth map, got {type(predict).__name__}")
    img = np.asarray(image)
    if img.ndim not in (2, 3):
        raise UserError(f"image: expected an (H, W) or (H, W, C) array, got shape {img.shape}")
    shape = img.shape[:2]
    try:
        wins = [_as_window(w, f"windows[{k}]", shape) for k, w in enumerate(windows)]
    except TypeError:
        raise UserError(f"windows: expected a sequence of (y0, y1, x0, x1), got {type(windows).__name__}") from None
    patches = [(w, predict(img[w[0]:w[1], w[2]:w[3]])) for w in wins]
    return patch_consistency_error(patches, shape, **kwargs)
