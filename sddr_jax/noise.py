"""Noise model D ~ D* + eps_cons + eps_edge and the simulated predictor (docs/method.md §7).

Synthesis mode (rng-keyed, jittable, static shapes):

* `local_inconsistency_noise`: patches of `patch` x `patch` pixels with stride `patch / 2` (spec: 64 / 32);
  inside each patch the non-edge pixels are split into connected components (8-connectivity) and each
  component gets its own affine map a D* + b, a ~ 1 + U(-k_a, k_a), b ~ U(-k_b, k_b) range(D*); the maps are
  averaged over the overlapping patches, edge pixels keep D*.
* `edge_deformation_noise`: down/up sampling at the predictor's inference resolution plus K Gaussian bumps
  whose centres lie in a band around the edges of D*.

Fitting mode: `fit_local_inconsistency` (per-component least squares, jittable) and `fit_edge_deformation`
(bump amplitudes, centres and widths by gradient descent with optax; eager loop of jitted steps).

Simulated predictor (the embedded synthetic default): `simulated_predict(gt, size, key)` is the prediction of
a predictor trained at `train_res` and run at `size`; `simulate_prediction(gt, key)` returns the (low, high)
pair.

Approximations vs docs/method.md §7 (which is itself our reconstruction: the paper gives no numbers):
1. Connected components are computed by a fixed number of label-propagation steps (3x3 min of pixel indices,
   then two pointer jumps) inside each patch, so they jit. A component whose two parts are not joined after
   `cc_iterations` steps (long snakes) gets two transforms: slightly more inconsistency, never less.
2. The patch tiling is padded so that every pixel lies in exactly (patch / stride)^2 patches (four for the
   spec's stride = patch / 2); the spec's tiling leaves border pixels in fewer patches.
3. Edges: `sobel_abs` of the min-max normalised D* (replicate border, so the image frame is not an edge)
   strictly above its `edge_quantile`-quantile (0.9); a map whose gradient is zero almost everywhere therefore
   has only its true edges marked.
4. Bumps are rendered in a window of radius ceil(4 sigma_max) around their centres (truncation below
   exp(-8) = 3.4e-4 of the amplitude).

Maps: (H, W), (B, H, W) or (B, H, W, 1) (the `edges` map convention); results keep the input layout.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sddr_jax import edges, ops
from sddr_jax.errors import UserError
from sddr_jax.ops import fill_invalid, minmax_normalize

Array = jax.Array


# ----------------------------------------------------------------------------------------------------
# helpers


def depth_edges(depth, edge_quantile: float = 0.9) -> Array:
    """Edge map of D* used by the noise model: Sobel magnitude of min-max D* (replicate border) > its
    `edge_quantile`-quantile, per map."""
    d, restore = edges.as_maps(depth, "depth_edges depth")
    return restore(_edges3(fill_invalid(d.astype(jnp.float32), axis=(-2, -1)), float(edge_quantile)))


def _edges3(d: Array, q: float) -> Array:
    # Replicate border: with zero padding the image frame itself would be an edge.
    g = edges.sobel_abs(minmax_normalize(d, axis=(-2, -1)), border="replicate")
    t = ops.quantile(g.reshape(g.shape[0], -1), q, axis=-1)[:, None, None]  # jnp.quantile's numbers, no sort
    return g > t


def _resize(x: Array, hw: Sequence[int]) -> Array:
    """Linear resize of (N, H, W) maps (antialiased when shrinking, like a predictor's input resampling)."""
    return jax.image.resize(x, (x.shape[0], int(hw[0]), int(hw[1])), method="linear", antialias=True)


# ----------------------------------------------------------------------------------------------------
# connected components inside patches


def _phase_components(nonedge: Array, patch: int, stride: int, iterations: int, shift=(0, 0)):
    """Components of `nonedge` (H, W) inside the patches of every tiling phase, all phases at once.

    Phase (oy, ox) in range(0, patch, stride)^2 puts patch borders at rows y with (y + pt) % patch == 0,
    pt = (patch - oy - shift[0]) % patch (columns likewise); `shift` (traced ints in [0, stride)) moves the
    whole tiling. Returns (labels (P, H, W) int32, row offsets (P,), column offsets (P,)): a label is the flat
    index of a pixel of the component (the smallest once converged), edge pixels get the sentinel H * W.
    8-connected label propagation restricted to the patch (a fixed number of 3x3-min steps, each followed
    by two pointer jumps), in image coordinates, so no padding and static shapes for any phase.
    """
    h, w = nonedge.shape
    big = h * w
    pts, pls = [], []
    for oy in range(0, patch, stride):
        for ox in range(0, patch, stride):
            pts.append((patch - oy - shift[0]) % patch)
            pls.append((patch - ox - shift[1]) % patch)
    pt, pl = jnp.stack([jnp.asarray(v, jnp.int32) for v in pts]), jnp.stack([jnp.asarray(v, jnp.int32) for v in pls])
    by = (jnp.arange(h)[None] + pt[:, None]) // patch  # (P, H) block row of each image row
    bx = (jnp.arange(w)[None] + pl[:, None]) // patch  # (P, W)
    n_ph = len(pts)

    def shift_map(x, dy, dx, fill):  # x[..., i + dy, j + dx], `fill` outside the image
        pad = jnp.pad(x, ((0, 0), (1, 1), (1, 1)), constant_values=fill)
        return pad[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    ne = jnp.broadcast_to(nonedge, (n_ph, h, w))
    dirs = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx]
    allowed = []
    for dy, dx in dirs:  # the neighbour is a non-edge pixel of the same patch
        same_y = shift_map(jnp.broadcast_to(by[:, :, None], (n_ph, h, w)), dy, dx, -1) == by[:, :, None]
        same_x = shift_map(jnp.broadcast_to(bx[:, None, :], (n_ph, h, w)), dy, dx, -1) == bx[:, None, :]
        allowed.append(same_y & same_x & shift_map(ne, dy, dx, False) & ne)
    # While propagating, a label is an index into the (P * (H * W + 1),) table of all phases' labels: phase
    # p's pixels at p * (H * W + 1) + flat index, its sentinel right after them. The pointer jumps are then one
    # un-batched gather with clipped indices: XLA:CPU runs that 4-5x faster than `take_along_axis` over the
    # phase axis (more under vmap), with the same labels.
    offs = _phase_offsets(n_ph, big)[:, None, None]
    sentinel = (offs + big).reshape(n_ph, 1)
    init = jnp.where(ne, jnp.arange(big, dtype=jnp.int32).reshape(1, h, w), big) + offs
    top = jnp.iinfo(jnp.int32).max  # above every label: outside the image never wins the minimum

    def step(lab, _):
        pad = jnp.pad(lab, ((0, 0), (1, 1), (1, 1)), constant_values=top)
        m = lab
        for (dy, dx), ok in zip(dirs, allowed):
            m = jnp.where(ok, jnp.minimum(m, pad[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]), m)
        for _ in range(2):  # pointer jumping: follow the label to its pixel's label
            table = jnp.concatenate([m.reshape(n_ph, big), sentinel], axis=1).reshape(-1)
            m = table.at[m.reshape(-1)].get(mode="clip").reshape(n_ph, h, w)
        return m, None

    lab, _ = jax.lax.scan(step, init, None, length=iterations)
    return lab - offs, pt, pl


def _phase_offsets(n_ph: int, big: int) -> Array:
    """Where phase p's H * W labels (and its sentinel, at H * W) start in a flat table of all phases."""
    return jnp.arange(n_ph, dtype=jnp.int32) * (big + 1)


def _tiling_weight(pos: Array, patch: int, overlap: int) -> Array:
    """Weight of a pixel at position `pos` inside its patch: a partition of unity over the `overlap` phases.

    One phase (stride = patch): 1. Several: sin^2(pi (pos + 1/2) / patch), whose shifts by patch / overlap
    sum to overlap / 2 (normalised here), so the per-patch transforms fade in and out instead of jumping at
    every stride multiple.
    """
    if overlap == 1:
        return jnp.ones(pos.shape, jnp.float32)
    return jnp.sin(jnp.pi * (pos.astype(jnp.float32) + 0.5) / patch) ** 2 / (overlap / 2.0)


def _check_patch(patch: int, stride: int | None, hw) -> tuple[int, int]:
    patch = int(patch)
    stride = patch // 2 if stride is None else int(stride)
    if patch < 2 or stride < 1 or patch % stride:
        raise UserError(f"patch / stride: expected patch >= 2 and a stride dividing it, "
                        f"got {patch} / {stride}")
    return patch, stride


# ----------------------------------------------------------------------------------------------------
# local inconsistency noise


def _local_inconsistency3(d: Array, key, k_a: float, k_b: float, patch: int, stride: int, q: float,
                          iterations: int, random_phase: bool = True) -> Array:
    """eps_cons of one map d (H, W)."""
    nonedge = ~_edges3(d[None], q)[0]
    rng = jnp.max(d) - jnp.min(d)
    h, w = d.shape
    kp, ka, kb = jax.random.split(key, 3)
    shift = jax.random.randint(kp, (2,), 0, stride) if random_phase else (0, 0)
    lab, pt, pl = _phase_components(nonedge, patch, stride, iterations, shift)
    n_ph = lab.shape[0]
    a_tab = 1.0 + k_a * jax.random.uniform(ka, (n_ph, h * w + 1), minval=-1.0, maxval=1.0)
    b_tab = k_b * rng * jax.random.uniform(kb, (n_ph, h * w + 1), minval=-1.0, maxval=1.0)
    flat = (lab.reshape(n_ph, -1) + _phase_offsets(n_ph, h * w)[:, None]).reshape(-1)
    a = a_tab.reshape(-1).at[flat].get(mode="clip").reshape(lab.shape)  # one flat gather (see above)
    b = b_tab.reshape(-1).at[flat].get(mode="clip").reshape(lab.shape)
    overlap = patch // stride
    wy = _tiling_weight((jnp.arange(h)[None] + pt[:, None]) % patch, patch, overlap)  # (P, H)
    wx = _tiling_weight((jnp.arange(w)[None] + pl[:, None]) % patch, patch, overlap)  # (P, W)
    acc = jnp.sum(wy[:, :, None] * wx[:, None, :] * ((a - 1.0) * d + b), axis=0)
    return jnp.where(nonedge, acc, 0.0)


def local_inconsistency_noise(depth, key, k_a: float = 0.1, k_b: float = 0.05, patch: int = 64,
                              stride: int | None = None, edge_quantile: float = 0.9,
                              cc_iterations: int = 12, random_phase: bool = True) -> Array:
    """eps_cons = D' - D* in synthesis mode (docs/method.md §7). Jittable; one key, split per map.

    depth: D* as (H, W), (B, H, W) or (B, H, W, 1). k_a: relative scale jitter (a ~ 1 + U(-k_a, k_a));
    k_b: shift jitter as a fraction of range(D*) (b ~ U(-k_b, k_b) range); patch, stride: tiling in pixels
    (default stride = patch / 2); edge_quantile: edge threshold (pixels above keep D*, eps = 0 there);
    cc_iterations: label-propagation steps for the connected components (see the module notes).
    random_phase: the tiling is shifted by a random (dy, dx) in [0, stride) per map (default), so patch
    borders fall at other places in every example; False puts them at multiples of the stride.
    With overlapping phases (stride < patch) each patch's transform is weighted by a sin^2 window that
    sums to one over the phases, so the noise has no step at patch borders.
    """
    d, restore = edges.as_maps(depth, "local_inconsistency_noise depth")
    patch, stride = _check_patch(patch, stride, d.shape[-2:])
    return restore(_local_inconsistency_batch(d, key, float(k_a), float(k_b), patch, stride,
                                              float(edge_quantile), int(cc_iterations), bool(random_phase)))


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6, 7, 8))
def _local_inconsistency_batch(d, key, k_a, k_b, patch, stride, q, iterations, random_phase):
    d = fill_invalid(d.astype(jnp.float32), axis=(-2, -1))
    keys = jax.random.split(key, d.shape[0])
    return jax.vmap(lambda x, k: _local_inconsistency3(x, k, k_a, k_b, patch, stride, q, iterations,
                                                       random_phase))(d, keys)


def fit_local_inconsistency(prediction, depth, patch: int = 64, stride: int | None = None,
                            edge_quantile: float = 0.9, cc_iterations: int = 12) -> Array:
    """Fitting mode of eps_cons (docs/method.md §7, step 4): D' with (a, b) per component solved by least squares so that
    a D* + b matches `prediction`; averaged over patches, edge pixels keep D*. Returns D' (input layout).
    Jittable.
    """
    d, restore = edges.as_maps(depth, "fit_local_inconsistency depth")
    p, _ = edges.as_maps(prediction, "fit_local_inconsistency prediction")
    if p.shape != d.shape:
        raise UserError(f"fit_local_inconsistency: prediction and depth must have one shape, got "
                        f"{tuple(p.shape)} and {tuple(d.shape)}")
    patch, stride = _check_patch(patch, stride, d.shape[-2:])
    return restore(_fit_local_batch(d, p, patch, stride, float(edge_quantile), int(cc_iterations)))


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _fit_local_batch(d, p, patch, stride, q, iterations):
    d = fill_invalid(d.astype(jnp.float32), axis=(-2, -1))
    p = fill_invalid(p.astype(jnp.float32), axis=(-2, -1))

    def one(x: Array, y: Array) -> Array:
        nonedge = ~_edges3(x[None], q)[0]
        labs, _, _ = _phase_components(nonedge, patch, stride, iterations)
        h, w = x.shape
        nseg = h * w + 1
        acc = jnp.zeros_like(x)
        for lab in labs:
            lab = lab.ravel()

            def ssum(v):
                return jax.ops.segment_sum(v.ravel(), lab, num_segments=nseg)

            n = ssum(jnp.ones_like(x))
            mx, my = ssum(x) / jnp.maximum(n, 1), ssum(y) / jnp.maximum(n, 1)
            sxx = ssum(x * x) - n * mx * mx
            sxy = ssum(x * y) - n * mx * my
            # a component too flat to fit a scale gets a = 1 and the mean offset
            a = jnp.where(sxx > 1e-12 * jnp.maximum(n, 1), sxy / jnp.where(sxx > 0, sxx, 1.0), 1.0)
            b = my - a * mx
            acc = acc + (a[lab] * x.ravel() + b[lab]).reshape(h, w)
        return jnp.where(nonedge, acc / labs.shape[0], x)

    return jax.vmap(one)(d, p)


# ----------------------------------------------------------------------------------------------------
# edge deformation noise


def render_bumps(hw: Sequence[int], centers: Array, amplitudes: Array, sigmas: Array, radius: int) -> Array:
    """Sum_k A_k exp(-|p - mu_k|^2 / (2 sigma_k^2)) on an (H, W) grid, each bump in a (2r+1)^2 window.

    centers (K, 2) float (row, col), amplitudes (K,), sigmas (K,). Differentiable in all three (the window is
    placed at the rounded centre, without gradient). Jittable; `hw` and `radius` static.
    """
    h, w = int(hw[0]), int(hw[1])
    r = int(radius)
    mu = jnp.stack([jnp.clip(centers[:, 0], 0, h - 1), jnp.clip(centers[:, 1], 0, w - 1)], -1)
    c = jnp.round(jax.lax.stop_gradient(mu)).astype(jnp.int32)  # (K, 2)
    off = jnp.arange(-r, r + 1)
    py = c[:, 0, None, None] + off[None, :, None]  # (K, 2r+1, 1)
    px = c[:, 1, None, None] + off[None, None, :]  # (K, 1, 2r+1)
    d2 = (py - mu[:, 0, None, None]) ** 2 + (px - mu[:, 1, None, None]) ** 2
    val = amplitudes[:, None, None] * jnp.exp(-d2 / (2.0 * sigmas[:, None, None] ** 2))
    canvas = jnp.zeros((h + 2 * r, w + 2 * r), val.dtype)
    py_b = jnp.broadcast_to(py + r, val.shape)
    px_b = jnp.broadcast_to(px + r, val.shape)
    canvas = canvas.at[py_b.ravel(), px_b.ravel()].add(val.ravel())
    return canvas[r:r + h, r:r + w]


def _edge_band(nonedge_edges: Array, band: int) -> Array:
    """Edges (H, W) dilated by `band` pixels (square structuring element)."""
    if band <= 0:
        return nonedge_edges
    x = nonedge_edges.astype(jnp.float32)[None, :, :, None]
    y = jax.lax.reduce_window(x, 0.0, jax.lax.max, (1, 2 * band + 1, 2 * band + 1, 1), (1, 1, 1, 1), "SAME")
    return y[0, :, :, 0] > 0


def _sample_bumps(key, band: Array, num: int, amp: float, sigma_range: Sequence[float]):
    h, w = band.shape
    kc, kj, ka, ks = jax.random.split(key, 4)
    wts = band.ravel().astype(jnp.float32)
    has = jnp.sum(wts) > 0
    p = jnp.where(has, wts / jnp.maximum(jnp.sum(wts), 1.0), 1.0 / wts.shape[0])
    idx = jax.random.choice(kc, h * w, (num,), p=p)
    centers = jnp.stack([idx // w, idx % w], -1).astype(jnp.float32)
    centers = centers + jax.random.uniform(kj, (num, 2), minval=-0.5, maxval=0.5)
    amps = amp * jax.random.uniform(ka, (num,), minval=-1.0, maxval=1.0) * has
    sig = jax.random.uniform(ks, (num,), minval=float(sigma_range[0]), maxval=float(sigma_range[1]))
    return centers, amps, sig


def _radius(sigma_range: Sequence[float]) -> int:
    lo, hi = float(sigma_range[0]), float(sigma_range[1])
    if not 0 < lo <= hi:
        raise UserError(f"sigma_range: expected 0 < min <= max, got {tuple(sigma_range)}")
    return int(math.ceil(4.0 * hi))


def edge_deformation_noise(depth, key, down_size: int | None = None, num_bumps: int = 64,
                           amplitude: float = 0.05,
                           sigma_range: Sequence[float] = (1.0, 3.0), band: int = 2,
                           edge_quantile: float = 0.9) -> Array:
    """eps_edge = D_r + sum of bumps - D* in synthesis mode (docs/method.md §7). Jittable; one key, split per map.

    down_size: the predictor's inference resolution; D_r = D* resized (linear, antialiased) to (down_size,
    down_size) and back (None: D_r = D*). num_bumps: K. amplitude: A_k ~ U(-1, 1) amplitude range(D*).
    sigma_range: sigma_k ~ U(min, max) pixels. band: centres are drawn uniformly from the edge pixels of D*
    dilated by `band` pixels, plus U(-0.5, 0.5) jitter (no edges: no bumps).
    """
    d, restore = edges.as_maps(depth, "edge_deformation_noise depth")
    radius = _radius(sigma_range)
    sr = (float(sigma_range[0]), float(sigma_range[1]))
    ds = None if down_size is None else int(down_size)
    return restore(_edge_deformation_batch(d, key, ds, int(num_bumps),
                                           float(amplitude), sr, int(band), float(edge_quantile), radius))


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5, 6, 7, 8))
def _edge_deformation_batch(d, key, down_size, num_bumps, amplitude, sigma_range, band, edge_quantile,
                            radius):
    d = fill_invalid(d.astype(jnp.float32), axis=(-2, -1))
    h, w = d.shape[-2:]
    dr = d if down_size is None else _resize(_resize(d, (down_size, down_size)), (h, w))
    emap = _edges3(d, float(edge_quantile))
    keys = jax.random.split(key, d.shape[0])

    def bumps(x, e, k):
        c, a, s = _sample_bumps(k, _edge_band(e, band), num_bumps, amplitude * (jnp.max(x) - jnp.min(x)),
                                sigma_range)
        return render_bumps((h, w), c, a, s, radius)

    return dr + jax.vmap(bumps)(d, emap, keys) - d


def psnr(x, y) -> float:
    """PSNR in dB of x against reference y, peak = range(y)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    mse = np.mean((x - y) ** 2)
    peak = float(y.max() - y.min()) or 1.0
    return float("inf") if mse == 0 else float(10.0 * np.log10(peak ** 2 / mse))


def fit_edge_deformation(prediction, depth, key, down_size: int | None = None, num_bumps: int = 256,
                         sigma_range: Sequence[float] = (0.5, 4.0), steps: int = 300,
                         learning_rate: float = 0.05,
                         band: int = 2, edge_quantile: float = 0.9, align: bool = True) -> dict:
    """Fitting mode of eps_edge (docs/method.md §7): bumps (A, mu, sigma) fitted by Adam so that D_r + bumps ~
    prediction.

    prediction, depth: (H, W) maps (host or device arrays; one image). `align`: first map the prediction to
    D*'s scale by least squares (predictions are relative). Centres start at band pixels drawn with
    probability proportional to the residual |prediction - D_r|, amplitudes at the residual there, sigma at
    the mid-range. Returns {"centers" (K, 2), "amplitudes" (K,), "sigmas" (K,), "fitted" (H, W), "target" (H,
    W), "psnr_before" (D_r vs target), "psnr" (fit vs target), "losses" (steps,)}. The paper fits K = 50,000
    bumps and reports PSNR > 40 dB on Middlebury2021; the defaults here are for small maps.
    """
    d = jnp.asarray(depth, jnp.float32)
    p = jnp.asarray(prediction, jnp.float32)
    if d.ndim != 2 or p.shape != d.shape:
        raise UserError(f"fit_edge_deformation: expected two (H, W) maps of one shape, got "
                        f"{tuple(p.shape)} and {tuple(d.shape)}")
    if int(steps) < 1 or int(num_bumps) < 1:
        raise UserError(f"fit_edge_deformation: steps and num_bumps must be >= 1, "
                        f"got {steps} and {num_bumps}")
    d = fill_invalid(d, axis=(-2, -1))
    p = fill_invalid(p, axis=(-2, -1))
    h, w = d.shape
    if align:
        pc, dc = p - jnp.mean(p), d - jnp.mean(d)
        a = jnp.sum(pc * dc) / jnp.maximum(jnp.sum(pc * pc), 1e-12)
        p = a * pc + jnp.mean(d)
    dr = d if down_size is None else _resize(_resize(d[None], (down_size, down_size)), (h, w))[0]
    resid = p - dr
    bnd = _edge_band(_edges3(d[None], float(edge_quantile))[0], int(band))
    wts = (bnd * jnp.abs(resid)).ravel()
    wts = jnp.where(jnp.sum(wts) > 0, wts, jnp.ones_like(wts))
    idx = jax.random.choice(key, h * w, (int(num_bumps),), p=wts / jnp.sum(wts))
    lo, hi = float(sigma_range[0]), float(sigma_range[1])
    radius = _radius(sigma_range)
    params = {"mu": jnp.stack([idx // w, idx % w], -1).astype(jnp.float32),
              "amp": resid.ravel()[idx] / 2.0,
              "raw_sigma": jnp.zeros((int(num_bumps),), jnp.float32)}

    def model(pr):
        sig = lo + (hi - lo) * jax.nn.sigmoid(pr["raw_sigma"])
        return dr + render_bumps((h, w), pr["mu"], pr["amp"], sig, radius), sig

    def loss_fn(pr):
        return jnp.mean((model(pr)[0] - p) ** 2)

    opt = optax.adam(float(learning_rate))

    @jax.jit
    def run(pr):
        def body(carry, _):
            pr, st = carry
            val, g = jax.value_and_grad(loss_fn)(pr)
            upd, st = opt.update(g, st, pr)
            return (optax.apply_updates(pr, upd), st), val

        (pr, _), vals = jax.lax.scan(body, (pr, opt.init(pr)), None, length=int(steps))
        return pr, vals

    params, vals = run(params)
    fitted, sig = model(params)
    return {"centers": np.asarray(params["mu"]), "amplitudes": np.asarray(params["amp"]),
            "sigmas": np.asarray(sig),
            "fitted": np.asarray(fitted), "target": np.asarray(p), "psnr_before": psnr(dr, p),
            "psnr": psnr(fitted, p), "losses": np.asarray(vals)}


# ----------------------------------------------------------------------------------------------------
# the simulated predictor


def inconsistency_level(size: int, train_res: int, level_cap: float = 3.0) -> float:
    """Inconsistency level of a predictor trained at `train_res`, run at `size`.

    clip(size / train_res - 1, 0, level_cap): 0 at or below the training resolution.
    """
    return float(min(max(size / train_res - 1.0, 0.0), level_cap))


def _highpass(x: Array, sigma: float) -> Array:
    """x - Gaussian blur of x (replicate border) for (N, H, W) maps: the texture detail of an image."""
    r = max(1, int(math.ceil(3.0 * sigma)))
    t = np.arange(-r, r + 1, dtype=np.float32)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k = jnp.asarray(k / k.sum())
    p = jnp.pad(x, ((0, 0), (r, r), (r, r)), mode="edge")
    blur = sum(k[i] * p[:, i:i + x.shape[1], r:r + x.shape[2]] for i in range(2 * r + 1))
    p = jnp.pad(blur, ((0, 0), (0, 0), (r, r)), mode="edge")
    blur = sum(k[i] * p[:, :, i:i + x.shape[2]] for i in range(2 * r + 1))
    return x - blur


def simulated_predict(gt, size: int, key, *, rgb=None, train_res: int = 448, detail_ratio: float = 1.0,
                      k_a: float = 0.15, k_b: float = 0.08, level_cap: float = 3.0, patch_ratio: float = 1.0,
                      edge_quantile: float = 0.9, cc_iterations: int = 12, num_bumps: int = 32,
                      bump_amplitude: float = 0.03, bump_sigma: Sequence[float] = (1.0, 3.0),
                      bump_band: int = 2, texture: float = 0.0, texture_sigma: float = 1.5,
                      random_phase: bool = True) -> Array:
    """A simulated base predictor trained at `train_res`, run on the (square-resized) image at `size`.

    gt: ground-truth depth (B, H, W, 1) or (H, W); returns (B, size, size, 1) (or (size, size)), min-max
    normalised to [0, 1] per image, in depth space (like LeReS). Jittable (`size` static). Model:
    1. D* = gt resized to size x size (linear, antialiased): what the predictor can see.
    2. Blur: docs/method.md §7's down/up sampling at the inference resolution is step 1 plus the final resize back to the
       image size by the caller; `detail_ratio` < 1 adds a decoder that resolves only that fraction of its
       input (D* resized to round(size * detail_ratio) and back). Default 1.0.
    3. Local inconsistency (docs/method.md §7) with level L = clip(size / train_res - 1, 0, level_cap): k_a L, k_b L,
       patches of round(patch_ratio * train_res) pixels (the receptive field of a predictor trained at
       train_res; clipped to size), edges of D* keep their value. Zero at size <= train_res: a predictor is
       globally consistent at its training resolution and locally inconsistent above it, more so the larger
       size is. The tiling's phase is drawn from `key` (`random_phase`), so its patch borders move with the
       example.
    4. Mild edge deformation: `num_bumps` Gaussian bumps near the edges of D*, amplitude
       U(-1, 1) * bump_amplitude * range, sigma ~ U(bump_sigma) pixels.
    5. Texture copy (`texture` > 0, needs `rgb` (B, H, W, 3) in [0, 1]): the high-pass detail of the grey
       image (grey minus its Gaussian blur of `texture_sigma` px, at `size`) times texture * min(L, 1) *
       range(D*) is added away from the depth edges (edges of D* dilated by 1 px): the false edges that
       real high-resolution predictions copy from the colour image; none at or below train_res.
    The sharper / less consistent trade-off therefore follows size / train_res. All numbers are our choices.
    """
    d, _ = edges.as_maps(gt, "simulated_predict gt")
    size = int(size)
    if size < 8:
        raise UserError(f"simulated_predict size: expected >= 8, got {size}")
    if int(train_res) < 1:
        raise UserError(f"simulated_predict train_res: expected >= 1, got {train_res}")
    _radius(bump_sigma)
    grey = None
    if float(texture) > 0:
        if rgb is None:
            raise UserError("simulated_predict: texture > 0 needs the colour image (rgb=)")
        rgb = jnp.asarray(rgb, jnp.float32)
        if rgb.ndim == 3:
            rgb = rgb[None]
        if rgb.ndim != 4 or rgb.shape[-1] != 3 or rgb.shape[:3] != d.shape:
            raise UserError(f"simulated_predict rgb: expected {tuple(d.shape) + (3,)} to match gt, "
                            f"got {tuple(rgb.shape)}")
        grey = rgb @ jnp.asarray([0.299, 0.587, 0.114], jnp.float32)
    out = _simulated_predict_maps(d, grey, key, size, int(train_res), float(detail_ratio), float(k_a), float(k_b),
                                  float(level_cap), float(patch_ratio), float(edge_quantile),
                                  int(cc_iterations),
                                  int(num_bumps), float(bump_amplitude),
                                  (float(bump_sigma[0]), float(bump_sigma[1])), int(bump_band),
                                  float(texture), float(texture_sigma), bool(random_phase))
    return out[0] if jnp.ndim(gt) == 2 else (out[..., None] if jnp.ndim(gt) == 4 else out)


@functools.partial(jax.jit, static_argnums=tuple(range(3, 19)))
def _simulated_predict_maps(d, grey, key, size, train_res, detail_ratio, k_a, k_b, level_cap, patch_ratio,
                            edge_quantile, cc_iterations, num_bumps, bump_amplitude, bump_sigma, bump_band,
                            texture, texture_sigma, random_phase):
    d = fill_invalid(d.astype(jnp.float32), axis=(-2, -1))
    kc, ke = jax.random.split(key)
    ds = _resize(d, (size, size))
    det = max(2, int(round(size * detail_ratio)))
    out = _resize(_resize(ds, (det, det)), (size, size)) if det < size else ds
    level = inconsistency_level(size, train_res, level_cap)
    if level > 0:
        patch = max(4, min(size, int(round(patch_ratio * train_res))))
        patch -= patch % 2
        out = out + local_inconsistency_noise(ds, kc, k_a * level, k_b * level, patch, patch // 2,
                                              edge_quantile, cc_iterations, random_phase)
    if num_bumps > 0 and bump_amplitude > 0:
        out = out + edge_deformation_noise(ds, ke, None, num_bumps, bump_amplitude, bump_sigma, bump_band,
                                           edge_quantile)
    if texture > 0 and level > 0:
        near_edge = jax.vmap(lambda e: _edge_band(e, 1))(_edges3(ds, edge_quantile))
        detail = _highpass(_resize(grey, (size, size)), texture_sigma)
        rng = jnp.max(ds, axis=(-2, -1), keepdims=True) - jnp.min(ds, axis=(-2, -1), keepdims=True)
        out = out + jnp.where(near_edge, 0.0, texture * min(level, 1.0) * rng * detail)
    return minmax_normalize(out, axis=(-2, -1))


def simulate_prediction(gt, key, *, low_res: int | None = None, high_res: int | None = None,
                        train_res: int | None = None, **kwargs) -> tuple[Array, Array]:
    """(low, high) simulated base predictions of ground truth `gt`, at gt's size, min-max normalised.

    gt: (B, H, W, 1) or (H, W) (also (B, H, W)).
    low = `simulated_predict` at `low_res` (default max(8, H // 4)), with train_res = low_res by default:
    blurry, globally consistent, mildly deformed edges.
    high = at `high_res` (default H): sharp, locally inconsistent at level high_res / train_res - 1 (cap 3).
    Each is resized back to (H, W) (linear) and min-max normalised. kwargs go to `simulated_predict`.
    Jittable. At small maps (H < 256) pass `low_res` explicitly: H // 4 becomes very blurry.
    """
    d, restore = edges.as_maps(gt, "simulate_prediction gt")
    h, w = d.shape[-2:]
    low_res = max(8, h // 4) if low_res is None else int(low_res)
    high_res = h if high_res is None else int(high_res)
    train_res = low_res if train_res is None else int(train_res)
    kl, kh = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)  # the label pass folds 2, 3, ... per window
    low = simulated_predict(d, low_res, kl, train_res=train_res, **kwargs)
    high = simulated_predict(d, high_res, kh, train_res=train_res, **kwargs)
    low = minmax_normalize(_resize(low, (h, w)) if (low_res, low_res) != (h, w) else low, axis=(-2, -1))
    high = minmax_normalize(_resize(high, (h, w)) if (high_res, high_res) != (h, w) else high, axis=(-2, -1))
    return restore(low), restore(high)
