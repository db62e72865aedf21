"""Coarse-to-fine windows: grid, feather mask, adaptive resolution, alignment, blending (docs/method.md §5.2-5.5).

The pure pieces of the official two-stage "patch fusion" code, each usable on its own:

* `window_grid` - the official overlapping window grid with its quirks (docs/method.md §5.3);
* `feather_mask` - the Gaussian feather mask used to merge a window into the full map (docs/method.md §5.4);
* `resolution_factors` / `resolution_factors_host` and `adaptive_resolution` - the official three-level
  adaptive predictor resolution (docs/method.md §5.2 b-c); `paper_resolution` - the paper's equation (docs/method.md §5.5);
* `align_scale_shift` - least-squares scale and shift (the official `compute_scale_and_shift`);
* `resize_cv` - OpenCV INTER_LINEAR / INTER_CUBIC resizing in matrix form, usable inside jit;
* `blend_windows` - the official sequential feather blend, or an order-independent feather average.

The pipelines built from them - `refine_two_stage` and the pseudo-label generator `edge_labels` (docs/method.md §6) -
live in `sddr_jax.inference.two_stage`; `edge_labels` is also importable from here (the module map names it
`windows.edge_labels`).

Host-side tables (the grid, the masks, the resize matrices) are plain numpy computed once per shape and
cached; array functions take NHWC arrays and are jittable and vmappable with the window geometry static.
"""
from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Sequence

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from sddr_jax import ops
from sddr_jax.edges import sobel_abs
from sddr_jax.errors import UserError

Array = jax.Array

# The official code's schedule (docs/method.md §5.2 step 3) and the paper-like one with a 4x4 step (0.25 is our choice).
OFFICIAL_SCHEDULE: tuple[tuple[int, float], ...] = ((2, 0.2), (3, 0.25))
PAPER_SCHEDULE: tuple[tuple[int, float], ...] = ((2, 0.2), (3, 0.25), (4, 0.25))

# Official expansion factors of the adaptive resolution, indexed by `resolution_factors`:
# 0 = flat window, 1 = edge density above the image mean, 2 = above the "big" threshold.
RESOLUTION_FACTORS: tuple[float, float, float] = (0.8, 1.0, 1.2)
BASE_RESOLUTION = 448  # r-hat: the base predictor's training resolution (LeReS)
MAX_RESOLUTION = 2048  # the official GPU_threshold cap on a predictor resolution
EDGE_PERCENTILE = 94.0  # pixels above this percentile of |Sobel| count as edges for the density g_w

# Feather mask constants (docs/method.md §5.4; the official generatemask((3000, 3000))).
_FEATHER_SIZE = 3000
_FEATHER_BORDER = int(0.15 * _FEATHER_SIZE)  # 450
_FEATHER_SIGMA = int(_FEATHER_SIZE / 16)  # 187
_FEATHER_KSIZE = int(2 * math.ceil(2 * _FEATHER_SIGMA) + 1)  # 749

_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------------------
# the window grid (docs/method.md §5.3)


class Window(NamedTuple):
    """A window [y0, y1) x [x0, x1) of an H x W image (a plain tuple (y0, y1, x0, x1))."""

    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def shape(self) -> tuple[int, int]:
        return (self.y1 - self.y0, self.x1 - self.x0)


def check_schedule(schedule: Any) -> tuple[tuple[int, float], ...]:
    """Validate a coarse-to-fine schedule [(pieces, cover), ...] and return it as a hashable tuple."""
    try:
        steps = tuple((int(p), float(c)) for p, c in schedule)
    except (TypeError, ValueError):
        raise UserError(
            f"schedule: expected a sequence of (pieces, cover) pairs such as {OFFICIAL_SCHEDULE}, "
            f"got {schedule!r}"
        ) from None
    for p, c in steps:
        if p < 2 or not 0.0 <= c < 1.0:
            raise UserError(f"schedule: each step needs pieces >= 2 and 0 <= cover < 1, got ({p}, {c})")
    return steps


@functools.lru_cache(maxsize=256)
def window_grid(height: int, width: int, pieces: int, cover: float) -> tuple[Window, ...]:
    """The official overlapping window grid for (P = pieces, c = cover) on an H x W image (docs/method.md §5.3).

    Window size ph = int(H / (P - (P-1) c)) + 1 (likewise pw), overlap oh = int(ph c); `rows` x `cols`
    regular windows, one extra window per row flush with [W - pw - 1, W - 1), then a bottom row flush with
    [H - ph - 1, H - 1). Quirk kept for parity: the last pixel row and column are never covered. The
    windows are returned in the official processing order: generation order, stably sorted by width,
    largest first (the widths are normally all equal, so this is row-major order).
    """
    height, width, pieces, cover = int(height), int(width), int(pieces), float(cover)
    check_schedule([(pieces, cover)])
    # Python float arithmetic and int() truncation, exactly as the official code.
    ph = int(height / (pieces - (pieces - 1) * cover)) + 1
    pw = int(width / (pieces - (pieces - 1) * cover)) + 1
    if ph + 1 > height or pw + 1 > width:
        raise UserError(
            f"window_grid: image {height}x{width} is too small for {pieces}x{pieces} windows of {ph}x{pw} "
            f"(cover {cover}); the flush windows need H >= {ph + 1} and W >= {pw + 1}"
        )
    oh, ow = int(ph * cover), int(pw * cover)
    rows = (height - ph) // (ph - oh) + 1
    cols = (width - pw) // (pw - ow) + 1
    windows: list[Window] = []
    for i in range(rows):
        y0 = i * (ph - oh)
        y1 = min(y0 + ph, height)
        for j in range(cols):
            x0 = j * (pw - ow)
            windows.append(Window(y0, y1, x0, min(x0 + pw, width)))
        windows.append(Window(y0, y1, width - pw - 1, width - 1))
    y0, y1 = height - ph - 1, height - 1
    for j in range(cols):
        x0 = j * (pw - ow)
        windows.append(Window(y0, y1, x0, min(x0 + pw, width)))
    windows.append(Window(y0, y1, width - pw - 1, width - 1))
    # sorted(..., reverse=True) keeps equal keys in generation order, like the official dict sort.
    return tuple(sorted(windows, key=lambda w: w.width, reverse=True))


# ----------------------------------------------------------------------------------------------------
# feather mask (docs/method.md §5.4)


@functools.lru_cache(maxsize=1)
def feather_base() -> np.ndarray:
    """The official 3000 x 3000 feather image (see `feather_mask`), min-max normalised, read-only float32.

    The blurred image is a product of two 1-D boxes and the Gaussian blur is separable, so it is the outer
    product of one 1-D blur of the box (same kernel, same OpenCV border): 4 ms instead of ~3 s for the 2-D
    blur with a 749 x 749 kernel. `tests/test_windows.py` checks it against the 2-D blur (within 3e-6)."""
    box = np.zeros((1, _FEATHER_SIZE), np.float32)
    box[0, _FEATHER_BORDER:_FEATHER_SIZE - _FEATHER_BORDER] = 1.0
    line = cv2.GaussianBlur(box, (_FEATHER_KSIZE, 1), _FEATHER_SIGMA, sigmaY=_FEATHER_SIGMA)[0].astype(np.float64)
    mask = np.outer(line, line)
    mask = ((mask - mask.min()) / (mask.max() - mask.min())).astype(np.float32)
    mask.setflags(write=False)
    return mask


@functools.lru_cache(maxsize=256)
def feather_mask(height: int, width: int) -> np.ndarray:
    """The official feather mask (docs/method.md §5.4) resized to height x width with OpenCV INTER_LINEAR.

    A 3000 x 3000 image with ones on [450, 2550)^2, Gaussian-blurred (749 x 749, sigma 187, OpenCV default
    border), min-max normalised; then resized. Returns a read-only float32 (height, width) array, cached.
    """
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise UserError(f"feather_mask: height and width must be >= 1, got {height}x{width}")
    out = cv2.resize(feather_base(), (width, height), interpolation=cv2.INTER_LINEAR)
    out = np.ascontiguousarray(out, np.float32)
    out.setflags(write=False)
    return out


# ----------------------------------------------------------------------------------------------------
# adaptive predictor resolution (docs/method.md §5.2 b-c, §5.5)


def adaptive_resolution(
    window_hw: Sequence[int],
    factor: float,
    base_resolution: int = BASE_RESOLUTION,
    max_resolution: int = MAX_RESOLUTION,
) -> int:
    """The official predictor resolution of a window: 32 * (floor((f * max(h, w) + r) / 64) + 1), capped.

    `factor` is one of `RESOLUTION_FACTORS` (0.8 flat, 1.0 mean, 1.2 edge-dense), r = `base_resolution`
    (448 for LeReS) and the cap `max_resolution` (the official GPU threshold, 2048). Python float
    arithmetic as the official code: 1067 x 601 gives 672 / 768 / 896, 769 x 433 gives 544 / 640 / 704.
    """
    side = max(int(v) for v in window_hw)
    res = int((side * float(factor) + base_resolution) // 64 + 1) * 32
    return min(res, int(max_resolution))


def candidate_resolutions(
    window_hw: Sequence[int],
    base_resolution: int = BASE_RESOLUTION,
    max_resolution: int = MAX_RESOLUTION,
    factors: Sequence[float] = RESOLUTION_FACTORS,
) -> tuple[int, ...]:
    """`adaptive_resolution` of a window for each factor (flat, mean, edge): the static candidate sizes."""
    return tuple(adaptive_resolution(window_hw, f, base_resolution, max_resolution) for f in factors)


def _factor_index(density: np.ndarray | Array, mean: Any, xp: Any) -> Any:
    """Three-level rule on window edge densities g_w (..., N) given the image density mean (...)."""
    mean = mean[..., None]
    above = density > mean
    n_above = above.sum(axis=-1)
    # g_big = sorted(g_w > mean)[floor(0.5 n)]: sort with the others pushed to -inf, index from the end.
    n_win = density.shape[-1]
    ordered = xp.sort(xp.where(above, density, -xp.inf), axis=-1)
    pos = xp.clip(n_win - n_above + n_above // 2, 0, n_win - 1)
    big = xp.take_along_axis(ordered, pos[..., None], axis=-1)
    big = xp.where(n_above[..., None] > 0, big, mean)  # guard: no window above the mean -> use the mean
    return xp.where(density > big, 2, xp.where(above, 1, 0)).astype(xp.int32)


def resolution_factors_host(
    depth: np.ndarray, windows: Sequence[Window], percentile: float = EDGE_PERCENTILE
) -> np.ndarray:
    """Official factor index (0 flat / 1 mean / 2 edge) of each window, on the host, exactly as the code.

    `depth`: (H, W) map B. E = [|Sobel_y B| + |Sobel_x B| > 94th percentile] with OpenCV 3x3 Sobel in
    float64 (reflect-101 border) and numpy's linear percentile; g_w = mean of E in the window,
    g = mean of E; g_big = the element at floor(n / 2) of the sorted g_w > g. Returns int32 (N,).
    """
    depth = np.asarray(depth)
    if depth.ndim == 3 and depth.shape[-1] == 1:
        depth = depth[..., 0]
    if depth.ndim != 2:
        raise UserError(f"resolution_factors_host: expected an (H, W) depth map, got shape {depth.shape}")
    depth = depth.astype(np.float32, copy=False)
    grad = np.abs(cv2.Sobel(depth, cv2.CV_64F, 0, 1, ksize=3))
    grad += np.abs(cv2.Sobel(depth, cv2.CV_64F, 1, 0, ksize=3))
    edges = (grad > np.percentile(grad, percentile)).astype(np.float32)
    # Counts are exact in float32; the densities are formed in float64.
    density = np.array([float(edges[w.y0 : w.y1, w.x0 : w.x1].sum()) / (w.height * w.width) for w in windows])
    mean = np.asarray(float(edges.sum()) / edges.size)
    return np.asarray(_factor_index(density, mean, np), np.int32)


def resolution_factors(
    depth: Array, windows: Sequence[Window], percentile: float = EDGE_PERCENTILE
) -> Array:
    """In-graph version of `resolution_factors_host` for a batch: depth (B, H, W, 1) -> int32 (B, N).

    Same rule in float32 (the official Sobel runs in float64; ties at the percentile can in rare cases
    flip a window between levels). Jittable and vmappable; the windows are static.
    """
    if depth.ndim != 4 or depth.shape[-1] != 1:
        raise UserError(f"resolution_factors: expected depth (B, H, W, 1), got shape {tuple(depth.shape)}")
    grad = sobel_abs(depth[..., 0].astype(jnp.float32), border="reflect101")
    b = grad.shape[0]
    # jnp.percentile's numbers (q = percentile / 100 in float32), by selection instead of a sort.
    thr = ops.quantile(grad.reshape(b, -1), float(np.float32(percentile) / np.float32(100)), axis=-1)
    edges = (grad > thr[:, None, None]).astype(jnp.float32)
    density = jnp.stack([edges[:, w.y0 : w.y1, w.x0 : w.x1].mean(axis=(1, 2)) for w in windows], axis=-1)
    return _factor_index(density, edges.mean(axis=(1, 2)), jnp)


def paper_resolution(
    window_hw: Sequence[int],
    low_grad_mean: Any,
    window_grad_mean: Any,
    image_grad_mean: Any,
    *,
    alpha: float,
    base_resolution: int = BASE_RESOLUTION,
    max_resolution: int = MAX_RESOLUTION,
    multiple: int = 32,
) -> int:
    """The paper's adaptive resolution (docs/method.md §5.5), rounded up to a multiple of 32 and capped (host).

    h_w = mean(r, r_w) * (mean|grad N_d(L_w)| / alpha) * (mean|grad D_w,prev| / mean|grad D_prev|), with
    r_w = max(h, w) the window's own resolution, `low_grad_mean` = mean|grad| of the normalised low-resolution
    prediction of the window, `window_grad_mean` / `image_grad_mean` the mean gradient of the previous depth
    on the window / whole image (pass equal values for the global pass), and `alpha` the mean gradient
    magnitude of the predictor's training labels (not published: a required argument).
    """
    if not alpha > 0:
        raise UserError(f"paper_resolution: alpha must be > 0, got {alpha}")
    side = max(int(v) for v in window_hw)
    ratio = float(window_grad_mean) / float(image_grad_mean) if float(image_grad_mean) > 0 else 1.0
    res = 0.5 * (base_resolution + side) * (float(low_grad_mean) / alpha) * ratio
    res = int(math.ceil(max(res, 1.0) / multiple)) * multiple
    return int(min(max(res, multiple), max_resolution))


# ----------------------------------------------------------------------------------------------------
# blending


BLENDS = ("official", "average")


def blend_windows(
    canvas: Array,
    patches: Sequence[Array],
    windows: Sequence[Window],
    masks: Sequence[Any] | None = None,
    mode: str = "official",
) -> Array:
    """Merge window patches (B, h_n, w_n, C) into canvas (B, H, W, C) with feather masks (docs/method.md §5.2 d).

    mode "official": in window order, U[w] <- U[w] (1 - M) + A M, so later windows win in overlaps.
    mode "average": order-independent feather-weighted mean: with T = sum_n M_n and A = sum_n M_n A_n / T,
    U <- U (1 - min(T, 1)) + A min(T, 1); one window alone gives the official result.
    `masks` default to `feather_mask` of each window's size; any (h_n, w_n) array works.
    """
    if mode not in BLENDS:
        raise UserError(f"blend: expected one of {BLENDS}, got {mode!r}")
    if len(patches) != len(windows):
        raise UserError(f"blend_windows: {len(patches)} patches for {len(windows)} windows")
    if masks is None:
        masks = [feather_mask(w.height, w.width) for w in windows]
    for p, w in zip(patches, windows):
        if p.shape[-3:-1] != w.shape:
            raise UserError(f"blend_windows: patch of shape {tuple(p.shape)} does not fit window {tuple(w)}")
    if mode == "official":
        for p, w, m in zip(patches, windows, masks):
            m = jnp.asarray(m, canvas.dtype)[..., None]
            region = canvas[..., w.y0 : w.y1, w.x0 : w.x1, :]
            canvas = canvas.at[..., w.y0 : w.y1, w.x0 : w.x1, :].set(region * (1 - m) + p * m)
        return canvas
    num = jnp.zeros_like(canvas)
    total = jnp.zeros(canvas.shape[-3:-1] + (1,), canvas.dtype)
    for p, w, m in zip(patches, windows, masks):
        m = jnp.asarray(m, canvas.dtype)[..., None]
        num = num.at[..., w.y0 : w.y1, w.x0 : w.x1, :].add(p * m)
        total = total.at[w.y0 : w.y1, w.x0 : w.x1, :].add(m)
    cover = jnp.minimum(total, 1.0)
    mean = num / jnp.where(total > 0, total, 1.0)
    return canvas * (1 - cover) + mean * cover


__all__ = [
    "OFFICIAL_SCHEDULE",
    "PAPER_SCHEDULE",
    "RESOLUTION_FACTORS",
    "BASE_RESOLUTION",
    "MAX_RESOLUTION",
    "EDGE_PERCENTILE",
    "BLENDS",
    "Window",
    "check_schedule",
    "window_grid",
    "feather_mask",
    "feather_base",
    "adaptive_resolution",
    "candidate_resolutions",
    "resolution_factors_host",
    "resolution_factors",
    "paper_resolution",
    "blend_windows",
]
