"""Coarse-to-fine windows: grid, feather mask, adaptive resolution, alignment, blending (spec 5.2-5.5).

The pure pieces of the official two-stage "patch fusion" code, each usable on its own:

* `window_grid` - the official overlapping window grid with its quirks (spec 5.3);
* `feather_mask` - the Gaussian feather mask used to merge a window into the full map (spec 5.4);
* `resolution_factors` / `resolution_factors_host` and `adaptive_resolution` - the official three-level
  adaptive predictor resolution (spec 5.2 b-c); `paper_resolution` - the paper's equation (spec 5.5);
* `align_scale_shift` - least-squares scale and shift (the official `compute_scale_and_shift`);
* `resize_cv` - OpenCV INTER_LINEAR / INTER_CUBIC resizing in matrix form, usable inside jit;
* `blend_windows` - the official sequential feather blend, or an order-independent feather average.

The pipelines built from them - `refine_two_stage` and the pseudo-label generator `edge_labels` (spec 6) -
live in `sddr_jax.coarse_to_fine`; `edge_labels` is also importable from here (the module map names it
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

from sddr_jax.errors import UserError

Array = jax.Array

# The official code's schedule (spec 5.2 step 3) and the paper-like one with a 4x4 step (0.25 is our choice).
OFFICIAL_SCHEDULE: tuple[tuple[int, float], ...] = ((2, 0.2), (3, 0.25))
PAPER_SCHEDULE: tuple[tuple[int, float], ...] = ((2, 0.2), (3, 0.25), (4, 0.25))

# Official expansion factors of the adaptive resolution, indexed by `resolution_factors`:
# 0 = flat window, 1 = edge density above the image mean, 2 = above the "big" threshold.
RESOLUTION_FACTORS: tuple[float, float, float] = (0.8, 1.0, 1.2)
BASE_RESOLUTION = 448  # r-hat: the base predictor's training resolution (LeReS)
MAX_RESOLUTION = 2048  # the official GPU_threshold cap on a predictor resolution
EDGE_PERCENTILE = 94.0  # pixels above this percentile of |Sobel| count as edges for the density g_w

# Feather mask constants (spec 5.4; the official generatemask((3000, 3000))).
_FEATHER_SIZE = 3000
_FEATHER_BORDER = int(0.15 * _FEATHER_SIZE)  # 450
_FEATHER_SIGMA = int(_FEATHER_SIZE / 16)  # 187
_FEATHER_KSIZE = int(2 * math.ceil(2 * _FEATHER_SIGMA) + 1)  # 749

_HIGHEST = jax.lax.Precision.HIGHEST


# ----------------------------------------------------------------------------------------------------
# the window grid (spec 5.3)


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
    """The official overlapping window grid for (P = pieces, c = cover) on an H x W image (spec 5.3).

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
# feather mask (spec 5.4)


@functools.lru_cache(maxsize=1)
def _feather_base() -> np.ndarray:
    # The 3000 x 3000 blur with a 749 kernel costs ~3 s on one core: computed once per process, lazily.
    mask = np.zeros((_FEATHER_SIZE, _FEATHER_SIZE), np.float32)
    lo, hi = _FEATHER_BORDER, _FEATHER_SIZE - _FEATHER_BORDER
    mask[lo:hi, lo:hi] = 1.0
    mask = cv2.GaussianBlur(mask, (_FEATHER_KSIZE, _FEATHER_KSIZE), _FEATHER_SIGMA)
    mask = ((mask - mask.min()) / (mask.max() - mask.min())).astype(np.float32)
    mask.setflags(write=False)
    return mask


@functools.lru_cache(maxsize=256)
def feather_mask(height: int, width: int) -> np.ndarray:
    """The official feather mask (spec 5.4) resized to height x width with OpenCV INTER_LINEAR.

    A 3000 x 3000 image with ones on [450, 2550)^2, Gaussian-blurred (749 x 749, sigma 187, OpenCV default
    border), min-max normalised; then resized. Returns a read-only float32 (height, width) array, cached.
    """
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise UserError(f"feather_mask: height and width must be >= 1, got {height}x{width}")
    out = cv2.resize(_feather_base(), (width, height), interpolation=cv2.INTER_LINEAR)
    out = np.ascontiguousarray(out, np.float32)
    out.setflags(write=False)
    return out


# ----------------------------------------------------------------------------------------------------
# OpenCV resizes in matrix form (in-graph R_cv_linear / R_cv_cubic)

_CV_FLAGS = {"linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC, "nearest": cv2.INTER_NEAREST}


@functools.lru_cache(maxsize=512)
def cv_resize_matrix(in_size: int, out_size: int, interpolation: str = "cubic") -> np.ndarray:
    """The (out, in) matrix of OpenCV's 1-D resampling rule (`cv2.resize` along one axis).

    OpenCV's float resize is linear and separable, so resizing the identity along one axis yields the
    exact matrix (half-pixel centres, replicated borders, A = -0.75 for cubic) without re-deriving the
    rule; applying it on both axes reproduces `cv2.resize` up to float32 rounding.
    """
    if interpolation not in _CV_FLAGS:
        raise UserError(
            f"cv_resize_matrix: interpolation must be one of {sorted(_CV_FLAGS)}, got {interpolation!r}"
        )
    in_size, out_size = int(in_size), int(out_size)
    if in_size < 1 or out_size < 1:
        raise UserError(f"cv_resize_matrix: sizes must be >= 1, got {in_size} -> {out_size}")
    eye = np.eye(in_size, dtype=np.float32)
    m = cv2.resize(eye, (in_size, out_size), interpolation=_CV_FLAGS[interpolation])
    m = np.ascontiguousarray(m.reshape(out_size, in_size), np.float32)
    m.setflags(write=False)
    return m


@functools.lru_cache(maxsize=512)
def cv_nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source indices of OpenCV INTER_NEAREST along one axis (read off `cv2.resize` of an index ramp).

    OpenCV computes floor(dst * in/out) in double precision, PyTorch in float32 (`ops.nearest_indices`):
    they agree for the power-of-two refiner sizes but can differ by one pixel for other size pairs.
    """
    in_size, out_size = int(in_size), int(out_size)
    if in_size < 1 or out_size < 1:
        raise UserError(f"cv_nearest_indices: sizes must be >= 1, got {in_size} -> {out_size}")
    ramp = np.arange(in_size, dtype=np.float32)[None, :]  # exact integers up to 2^24
    idx = cv2.resize(ramp, (out_size, 1), interpolation=cv2.INTER_NEAREST)[0].astype(np.int32)
    idx.setflags(write=False)
    return idx


def resize_cv(x: Array, out_hw: Sequence[int], interpolation: str = "cubic", method: str = "taps") -> Array:
    """OpenCV-rule resize (R_cv_linear / R_cv_cubic / INTER_NEAREST, spec 2.4) of axes (-3, -2) of NHWC.

    linear / cubic, width then height as OpenCV, with the rows of `cv_resize_matrix`: method "taps" applies
    each row's few non-zero weights as gathers (default, cheap), "matrix" as matmuls at HIGHEST precision.
    nearest: two gathers (exact). `out_hw` = (height, width) must be static. Jittable and vmappable.
    """
    if x.ndim < 3:
        raise UserError(f"resize_cv: expected an array (..., H, W, C), got shape {tuple(x.shape)}")
    oh, ow = (int(v) for v in out_hw)
    h, w = x.shape[-3], x.shape[-2]
    if interpolation == "nearest":
        if ow != w:
            x = jnp.take(x, jnp.asarray(cv_nearest_indices(w, ow)), axis=x.ndim - 2)
        if oh != h:
            x = jnp.take(x, jnp.asarray(cv_nearest_indices(h, oh)), axis=x.ndim - 3)
        return x
    if method not in ("taps", "matrix"):
        raise UserError(f"resize_cv: method must be 'taps' or 'matrix', got {method!r}")
    for axis, n_in, n_out in ((x.ndim - 2, w, ow), (x.ndim - 3, h, oh)):
        if n_in == n_out:
            continue
        if method == "matrix":
            m = jnp.asarray(cv_resize_matrix(n_in, n_out, interpolation), x.dtype)
            y = jnp.tensordot(m, jnp.moveaxis(x, axis, 0), axes=(1, 0), precision=_HIGHEST)
            x = jnp.moveaxis(y, 0, axis)
        else:
            idx, wts = _cv_taps(n_in, n_out, interpolation)
            shape = [1] * x.ndim
            shape[axis] = n_out
            terms = [
                jnp.asarray(wts[:, k], x.dtype).reshape(shape)
                * jnp.take(x, jnp.asarray(idx[:, k]), axis=axis)
                for k in range(idx.shape[1])
            ]
            x = functools.reduce(lambda a, b: a + b, terms)
    return x


@functools.lru_cache(maxsize=512)
def _cv_taps(in_size: int, out_size: int, interpolation: str) -> tuple[np.ndarray, np.ndarray]:
    # The few non-zeros of each row of the resampling matrix as (index, weight) taps: O(taps) per output
    # sample instead of O(in) for the matmul (the windows are resized from S = 1024).
    m = cv_resize_matrix(in_size, out_size, interpolation)
    k = max(1, int((m != 0).sum(axis=1).max()))
    idx = np.zeros((out_size, k), np.int32)
    wts = np.zeros((out_size, k), np.float32)
    for i in range(out_size):
        nz = np.flatnonzero(m[i])
        idx[i, : nz.size] = nz
        wts[i, : nz.size] = m[i, nz]
    return idx, wts


# ----------------------------------------------------------------------------------------------------
# adaptive predictor resolution (spec 5.2 b-c, 5.5)


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


def _sobel_reflect101(x: Array) -> Array:
    """|Sobel_y| + |Sobel_x| of (..., H, W) with OpenCV's default reflect-101 border (float32)."""
    pad = [(0, 0)] * (x.ndim - 2) + [(1, 1), (1, 1)]
    p = jnp.pad(x, pad, mode="reflect")
    h, w = x.shape[-2], x.shape[-1]

    def s(dy: int, dx: int) -> Array:
        return p[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]

    gy = (s(1, -1) + 2 * s(1, 0) + s(1, 1)) - (s(-1, -1) + 2 * s(-1, 0) + s(-1, 1))
    gx = (s(-1, 1) + 2 * s(0, 1) + s(1, 1)) - (s(-1, -1) + 2 * s(0, -1) + s(1, -1))
    return jnp.abs(gy) + jnp.abs(gx)


def resolution_factors(
    depth: Array, windows: Sequence[Window], percentile: float = EDGE_PERCENTILE
) -> Array:
    """In-graph version of `resolution_factors_host` for a batch: depth (B, H, W, 1) -> int32 (B, N).

    Same rule in float32 (the official Sobel runs in float64; ties at the percentile can in rare cases
    flip a window between levels). Jittable and vmappable; the windows are static.
    """
    if depth.ndim != 4 or depth.shape[-1] != 1:
        raise UserError(f"resolution_factors: expected depth (B, H, W, 1), got shape {tuple(depth.shape)}")
    grad = _sobel_reflect101(depth[..., 0].astype(jnp.float32))
    b = grad.shape[0]
    thr = jnp.percentile(grad.reshape(b, -1), percentile, axis=-1)
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
    """The paper's adaptive resolution (spec 5.5), rounded up to a multiple of 32 and capped (host).

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
# least-squares alignment and blending


def align_scale_shift(pred: Array, target: Array, mask: Array | None = None) -> tuple[Array, Array]:
    """Least-squares (scale, shift) minimising sum m (a * pred + b - target)^2 over the last three axes.

    The official `compute_scale_and_shift` (MiDaS). Leading axes are batch axes; returns two arrays of
    the leading shape. Solved in centred form (same minimiser, better conditioned in float32 than the
    normal equations); where the masked prediction has no variance the official code returns (0, 0),
    and so do we.
    """
    if pred.shape != target.shape:
        raise UserError(
            f"align_scale_shift: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ"
        )
    m = jnp.ones_like(pred) if mask is None else jnp.broadcast_to(mask, pred.shape).astype(pred.dtype)
    axes = (-3, -2, -1)
    n = m.sum(axis=axes)
    safe_n = jnp.maximum(n, 1.0)
    mp = (m * pred).sum(axis=axes) / safe_n
    mt = (m * target).sum(axis=axes) / safe_n
    dp = (pred - mp[..., None, None, None]) * m
    dt = (target - mt[..., None, None, None]) * m
    var = (dp * dp).sum(axis=axes)
    cov = (dp * dt).sum(axis=axes)
    valid = (var > 0) & (n > 0)
    scale = jnp.where(valid, cov / jnp.where(valid, var, 1.0), 0.0)
    shift = jnp.where(valid, mt - scale * mp, 0.0)
    return scale, shift


def apply_scale_shift(x: Array, scale: Array, shift: Array) -> Array:
    """a * x + b with (a, b) of the leading shape of x (..., H, W, C)."""
    return scale[..., None, None, None] * x + shift[..., None, None, None]


BLENDS = ("official", "average")


def blend_windows(
    canvas: Array,
    patches: Sequence[Array],
    windows: Sequence[Window],
    masks: Sequence[Any] | None = None,
    mode: str = "official",
) -> Array:
    """Merge window patches (B, h_n, w_n, C) into canvas (B, H, W, C) with feather masks (spec 5.2 d).

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


def bilateral_filter(x: Array, radius: int, sigma_space: float, sigma_range: float) -> Array:
    """Edge-preserving bilateral filter of (..., H, W, C) maps (spec 6 step 1; parameters are ours).

    Weights exp(-d^2 / (2 sigma_space^2)) * exp(-(x_q - x_p)^2 / (2 sigma_range^2)) over a
    (2 radius + 1)^2 window with replicated borders. Jittable; cost O(radius^2) shifted copies.
    """
    radius = int(radius)
    if radius < 1 or not sigma_space > 0 or not sigma_range > 0:
        raise UserError(
            "bilateral_filter: need radius >= 1 and positive sigmas, "
            f"got {(radius, sigma_space, sigma_range)}"
        )
    pad = [(0, 0)] * (x.ndim - 3) + [(radius, radius), (radius, radius), (0, 0)]
    p = jnp.pad(x, pad, mode="edge")
    h, w = x.shape[-3], x.shape[-2]
    num = jnp.zeros_like(x)
    den = jnp.zeros_like(x)
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            q = p[..., radius + dy : radius + dy + h, radius + dx : radius + dx + w, :]
            wt = math.exp(-(dy * dy + dx * dx) / (2 * sigma_space**2)) * jnp.exp(
                -jnp.square(q - x) / (2 * sigma_range**2)
            )
            num = num + wt * q
            den = den + wt
    return num / den


def __getattr__(name: str) -> Any:
    # `windows.edge_labels` (the module map's name) lives with the other pipeline in coarse_to_fine;
    # resolved lazily because coarse_to_fine imports this module.
    if name == "edge_labels":
        from sddr_jax.coarse_to_fine import edge_labels

        return edge_labels
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
    "cv_resize_matrix",
    "cv_nearest_indices",
    "resize_cv",
    "adaptive_resolution",
    "candidate_resolutions",
    "resolution_factors_host",
    "resolution_factors",
    "paper_resolution",
    "align_scale_shift",
    "apply_scale_shift",
    "blend_windows",
    "bilateral_filter",
    "edge_labels",
]
