"""Edge representation: the Sobel magnitude G, percentile masks and the paper's edge-dense regions P_n (spec
6).

Layout convention shared by every public function here (the "map convention"):

* a 4-D array is NHWC and must have one channel: `(B, H, W, 1)` (refiner outputs, labels, batch depth);
* a 2-D or 3-D array holds maps on its last two axes: `(H, W)` or `(B, H, W)`.

Results keep the input's layout. Everything is pure jnp with static shapes: jittable and vmappable.
"""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp

from sddr_jax import ops
from sddr_jax.errors import UserError

Array = jax.Array


def as_maps(x, name: str) -> tuple[Array, Callable[[Array], Array]]:
    """`x` in the map convention -> (maps `(N, H, W)`, function restoring `(N, H, W)` to x's layout)."""
    x = jnp.asarray(x)
    if x.ndim == 4:
        if x.shape[-1] != 1:
            raise UserError(f"{name}: a 4-D array must be NHWC with one channel, got shape {tuple(x.shape)}")
        return x[..., 0], lambda y: y[..., None]
    if x.ndim == 3:
        return x, lambda y: y
    if x.ndim == 2:
        return x[None], lambda y: y[0]
    raise UserError(f"{name}: expected (H, W), (B, H, W) or (B, H, W, 1), got shape {tuple(x.shape)}")


SOBEL_BORDERS = {"zero": "constant", "replicate": "edge", "reflect101": "reflect"}


def sobel_abs(depth, border: str = "zero") -> Array:
    """G(D) = |K1 * D| + |K2 * D| with 3x3 Sobel kernels, cross-correlation (docs/method.md §6).

    K1 = [[-1,-2,-1],[0,0,0],[1,2,1]] (vertical derivative), K2 = K1^T (horizontal). `border` is how the
    1-pixel frame is padded: "zero" (the operator of the official local-gradient loss, OpenCV
    BORDER_CONSTANT; the frame itself then reads as a step), "replicate" (BORDER_REPLICATE: a constant map has
    zero gradient everywhere) or "reflect101" (OpenCV's default border, used by the official adaptive
    resolution rule). `depth`: (H, W), (B, H, W) or (B, H, W, 1); the result has the same shape.
    """
    if border not in SOBEL_BORDERS:
        raise UserError(f"sobel_abs: border must be one of {sorted(SOBEL_BORDERS)}, got {border!r}")
    d, restore = as_maps(depth, "sobel_abs depth")
    d = d.astype(jnp.promote_types(d.dtype, jnp.float32))
    p = jnp.pad(d, ((0, 0), (1, 1), (1, 1)), mode=SOBEL_BORDERS[border])
    h, w = d.shape[-2:]

    def at(dy: int, dx: int) -> Array:  # the neighbour at offset (dy, dx), dy, dx in {-1, 0, 1}
        return p[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    gy = (at(1, -1) + 2.0 * at(1, 0) + at(1, 1)) - (at(-1, -1) + 2.0 * at(-1, 0) + at(-1, 1))
    gx = (at(-1, 1) + 2.0 * at(0, 1) + at(1, 1)) - (at(-1, -1) + 2.0 * at(0, -1) + at(1, -1))
    return restore(jnp.abs(gy) + jnp.abs(gx))


def _per_map_quantile(maps: Array, q: float) -> Array:
    """Linear-interpolation quantile of each (H, W) map, shape (N, 1, 1) (`jnp.quantile`'s numbers, by selection)."""
    return ops.quantile(maps.reshape(maps.shape[0], -1).astype(jnp.float32), q, axis=-1)[:, None, None]


def _check_q(q: float, name: str) -> float:
    q = float(q)
    if not 0.0 <= q <= 1.0:
        raise UserError(f"{name}: expected a quantile in [0, 1], got {q}")
    return q


def mask_edge(label, q: float = 0.85) -> Array:
    """Pixels of the edge label G_S above its q-quantile, per image (docs/method.md §6: `mask_edge`, default 85th).

    Tie rule (ours): if the quantile equals the map's maximum (at least 1 - q of the pixels share the largest
    value, e.g. a constant map), `>` would select nothing, so `>=` is used for that map instead.
    """
    g, restore = as_maps(label, "mask_edge label")
    t = _per_map_quantile(g, _check_q(q, "mask_edge q"))
    gmax = jnp.max(g, axis=(-2, -1), keepdims=True)
    return restore(jnp.where(t >= gmax, g >= t, g > t))


def mask_flat(label, q: float = 0.15) -> Array:
    """Pixels of the edge label G_S below its q-quantile, per image (docs/method.md §6: `mask_flat`, default 15th).

    Tie rule (ours): if the quantile equals the map's minimum (many exactly flat pixels, common on synthetic
    scenes where G_S is exactly 0 on planes), `<` would select nothing, so `<=` is used for that map.
    """
    g, restore = as_maps(label, "mask_flat label")
    t = _per_map_quantile(g, _check_q(q, "mask_flat q"))
    gmin = jnp.min(g, axis=(-2, -1), keepdims=True)
    return restore(jnp.where(t <= gmin, g <= t, g < t))


def _kmeans_regions(top: Array, num_regions: int, margin: int, iterations: int, key) -> Array:
    """Regions P_n of one binary map `top` (H, W): weighted k-means on the coordinates of its 1-pixels."""
    h, w = top.shape
    rows, cols = jnp.meshgrid(jnp.arange(h, dtype=jnp.float32), jnp.arange(w, dtype=jnp.float32),
                              indexing="ij")
    pts = jnp.stack([rows.ravel(), cols.ravel()], axis=-1)  # (P, 2)
    wts = top.ravel().astype(jnp.float32)
    count = jnp.sum(wts)
    if key is None:
        # Deterministic init: the 1-pixels at evenly spaced ranks of the row-major order.
        ranks = jnp.floor((jnp.arange(num_regions) + 0.5) / num_regions * count).astype(jnp.int32)
        # The (rank + 1)-th 1-pixel in row-major order: the first index whose running count exceeds rank
        # (a search in the cumulative sum; an argsort would sort the whole map). No 1-pixels: pixel 0.
        running = jnp.cumsum(top.ravel().astype(jnp.int32))
        first = jnp.searchsorted(running, ranks + 1, side="left")
        init = pts[jnp.where(count > 0, jnp.clip(first, 0, pts.shape[0] - 1), 0)]
    else:
        p = jnp.where(count > 0, wts / jnp.maximum(count, 1.0), 1.0 / wts.shape[0])
        init = pts[jax.random.choice(key, pts.shape[0], (num_regions,), replace=False, p=p)]

    def assign(centroids):
        d2 = jnp.sum((pts[:, None, :] - centroids[None]) ** 2, axis=-1)  # (P, K)
        return jnp.argmin(d2, axis=-1)

    def lloyd(centroids, _):
        onehot = jax.nn.one_hot(assign(centroids), num_regions) * wts[:, None]  # (P, K)
        mass = jnp.sum(onehot, axis=0)
        new = (onehot.T @ pts) / jnp.maximum(mass, 1.0)[:, None]
        return jnp.where(mass[:, None] > 0, new, centroids), None  # an empty cluster keeps its centroid

    centroids, _ = jax.lax.scan(lloyd, init, None, length=iterations)
    member = (jax.nn.one_hot(assign(centroids), num_regions) * wts[:, None]).T.reshape(num_regions, h, w) > 0
    big = jnp.float32(1e9)
    rmin = jnp.min(jnp.where(member, rows, big), axis=(1, 2))
    rmax = jnp.max(jnp.where(member, rows, -big), axis=(1, 2))
    cmin = jnp.min(jnp.where(member, cols, big), axis=(1, 2))
    cmax = jnp.max(jnp.where(member, cols, -big), axis=(1, 2))
    box = ((rows[None] >= (rmin - margin)[:, None, None]) & (rows[None] <= (rmax + margin)[:, None, None])
           & (cols[None] >= (cmin - margin)[:, None, None]) & (cols[None] <= (cmax + margin)[:, None, None]))
    return box  # an empty cluster has rmin > rmax, hence an empty box


def top_fraction_mask(label, top_fraction: float = 0.05) -> Array:
    """Binarised label: the top `top_fraction` of G_S per image (>= its (1 - fraction)-quantile)."""
    g, restore = as_maps(label, "top_fraction_mask label")
    f = float(top_fraction)
    if not 0.0 < f <= 1.0:
        raise UserError(f"top_fraction: expected a fraction in (0, 1], got {top_fraction}")
    return restore(g >= _per_map_quantile(g, 1.0 - f))


def edge_regions(label, num_regions: int = 4, top_fraction: float = 0.05, margin: int = 8,
                 iterations: int = 10, key=None) -> Array:
    """The paper's edge-dense regions P_n (docs/method.md §6), as boolean masks with static shapes.

    1. Binarise G_S keeping its top `top_fraction` (>= the (1 - top_fraction)-quantile, per image).
    2. k-means (k = `num_regions` = N_g, `iterations` Lloyd steps, fixed count so it jits) on the (row, col)
       coordinates of the 1-pixels. Init: with `key`, N_g distinct 1-pixels drawn uniformly; without, the
       1-pixels at ranks (n + 0.5)/N_g of the row-major order (deterministic).
    3. P_n = the bounding box of cluster n's pixels, dilated by `margin` pixels (clipped to the image).
       An empty cluster gives an empty region.

    Our reading of the paper's "k-means on the binarised label, centroid value one": clustering the positions
    of the edge pixels, so that each P_n is a compact edge-dense area.

    `label`: (H, W) -> (N_g, H, W); (B, H, W) or (B, H, W, 1) -> (B, N_g, H, W). `key`: one PRNG key (split
    per image) or None.
    """
    g, _ = as_maps(label, "edge_regions label")
    n = int(num_regions)
    if n < 1:
        raise UserError(f"num_regions: expected >= 1, got {num_regions}")
    if int(margin) < 0 or int(iterations) < 0:
        raise UserError(f"margin and iterations must be >= 0, got {margin} and {iterations}")
    top = top_fraction_mask(g, top_fraction)
    if key is None:
        out = jax.vmap(lambda t: _kmeans_regions(t, n, int(margin), int(iterations), None))(top)
    else:
        keys = jax.random.split(key, g.shape[0])
        out = jax.vmap(lambda t, k: _kmeans_regions(t, n, int(margin), int(iterations), k))(top, keys)
    return out[0] if jnp.ndim(label) == 2 else out


def bilateral_filter(x: Array, radius: int, sigma_space: float, sigma_range: float) -> Array:
    """Edge-preserving bilateral filter of (..., H, W, C) maps (docs/method.md §6 step 1; parameters are ours).

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
