"""Procedural RGB-D scenes (numpy, seeded): the embedded data set that exercises every part of sddr-jax.

No spec section: the paper trains on real data (docs/method.md §10) that these machines cannot download. A scene is a
2.5-D layered world rendered with a z-buffer: a tilted background plane (floor + wall), tilted planar
polygons, boxes (three visible faces with different normals and shading), discs (spherical caps), and thin
structures (poles, sagging wires, branching twigs) one to a few pixels wide. Surfaces carry textures
(stripes, checkers, blotches, painted decals) whose edges lie *inside* surfaces, so texture edges do not
coincide with depth edges, and some objects are "camouflaged" (same texture as what is behind them), so
depth edges without colour edges exist too. That makes edge quality (ORD, D3R, boundary F1) measurable
against an exact ground truth.

Depth is metric-like (about 1 to 20 units), finite and > 0 at every pixel, a multiple of 2**-11. Rendering uses OpenCV's polygon
and line rasterisers on the object's bounding box, so a 512x512 scene costs a few tens of milliseconds.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple

import cv2
import numpy as np

from sddr_jax.errors import UserError


DEPTH_STEP_INV = 2048.0  # depth values are multiples of 1/2048


@dataclasses.dataclass(frozen=True)
class SceneConfig:
    """Object counts (inclusive ranges) and depth range of a procedural scene."""

    num_planes: tuple[int, int] = (1, 3)
    num_boxes: tuple[int, int] = (1, 3)
    num_discs: tuple[int, int] = (1, 3)
    num_poles: tuple[int, int] = (1, 3)
    num_wires: tuple[int, int] = (1, 3)
    num_branches: tuple[int, int] = (0, 2)
    num_decals: tuple[int, int] = (2, 5)  # texture-only shapes painted on surfaces (no depth change)
    camouflage_prob: float = 0.25  # an object reuses the background texture: depth edge, weak colour edge
    near: float = 1.0
    far: float = 20.0
    noise_sigma: float = 2.0  # sensor noise on RGB, in 0..255 units


class Scene(NamedTuple):
    rgb: np.ndarray  # (H, W, 3) uint8
    depth: np.ndarray  # (H, W) float32, > 0 everywhere


def _size_hw(size) -> tuple[int, int]:
    if isinstance(size, (int, np.integer)):
        h = w = int(size)
    else:
        try:
            h, w = (int(s) for s in size)
        except (TypeError, ValueError):
            raise UserError(f"size: expected an int or (height, width), got {size!r}") from None
    if h < 16 or w < 16:
        raise UserError(f"size: expected at least 16x16 pixels, got {h}x{w}")
    return h, w


class _Canvas:
    """z-buffered RGB-D canvas; objects are drawn with a per-pixel depth and colour inside a mask."""

    def __init__(self, h: int, w: int):
        self.h, self.w = h, w
        self.depth = np.full((h, w), np.inf, np.float32)
        self.rgb = np.zeros((h, w, 3), np.float32)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        self.xx, self.yy = xx / max(w - 1, 1), yy / max(h - 1, 1)  # normalised coordinates in [0, 1]

    def draw(self, mask: np.ndarray, depth: np.ndarray, rgb: np.ndarray, box: tuple[int, int, int, int]):
        """Z-test and write inside `box` = (y0, y1, x0, x1); mask/depth/rgb are given on the box."""
        y0, y1, x0, x1 = box
        zb = self.depth[y0:y1, x0:x1]
        win = mask & (depth < zb) & (depth > 0)
        zb[win] = depth[win]
        self.rgb[y0:y1, x0:x1][win] = rgb[win]


def _texture(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray, base: np.ndarray) -> np.ndarray:
    """A colour texture on normalised coordinates: stripes, checkers, smooth blotches or plain."""
    kind = rng.integers(0, 4)
    # The second colour differs clearly from the base, so texture edges are real colour edges.
    other = np.clip(base + rng.choice([-1.0, 1.0], 3) * rng.uniform(0.25, 0.5, 3), 0.0, 1.0)
    if kind == 0:  # stripes at a random angle
        angle, freq = rng.uniform(0, np.pi), rng.uniform(6, 30)
        t = (np.sin((np.cos(angle) * xx + np.sin(angle) * yy) * freq * 2 * np.pi) > 0).astype(np.float32)
    elif kind == 1:  # checkerboard
        freq = rng.uniform(4, 20)
        t = ((np.floor(xx * freq) + np.floor(yy * freq)) % 2).astype(np.float32)
    elif kind == 2:  # smooth blotches (a few random sinusoids): gradients with no hard edges
        t = np.zeros_like(xx)
        for _ in range(3):
            fx, fy, ph = rng.uniform(1, 8), rng.uniform(1, 8), rng.uniform(0, 2 * np.pi)
            t += np.sin(fx * 2 * np.pi * xx + fy * 2 * np.pi * yy + ph)
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
    else:
        t = np.zeros_like(xx)
    return base * (1 - t[..., None]) + other * t[..., None]


def _plane_depth(rng, xx, yy, d0: float, tilt: float) -> np.ndarray:
    """Depth of a tilted plane, d0 at the image centre, gradients up to `tilt` per unit image distance."""
    gx, gy = rng.uniform(-tilt, tilt, 2)
    return (d0 + gx * (xx - 0.5) + gy * (yy - 0.5)).astype(np.float32)


def _shade(rgb: np.ndarray, factor: float | np.ndarray) -> np.ndarray:
    f = np.asarray(factor, np.float32)
    return np.clip(rgb * (f[..., None] if f.ndim else f), 0.0, 1.0)


def _box_of(points: np.ndarray, h: int, w: int, pad: int = 2) -> tuple[int, int, int, int] | None:
    x0, y0 = np.floor(points.min(axis=0)).astype(int) - pad
    x1, y1 = np.ceil(points.max(axis=0)).astype(int) + pad
    x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if x1 <= x0 or y1 <= y0:
        return None
    return int(y0), int(y1), int(x0), int(x1)


def _poly_mask(points: np.ndarray, box) -> np.ndarray:
    y0, y1, x0, x1 = box
    m = np.zeros((y1 - y0, x1 - x0), np.uint8)
    pts = np.round((points - [x0, y0]) * 16).astype(np.int32)  # 4 fractional bits: sub-pixel outlines
    cv2.fillPoly(m, [pts], 1, lineType=cv2.LINE_8, shift=4)
    return m.astype(bool)


def _random_colour(rng) -> np.ndarray:
    return rng.uniform(0.05, 0.95, 3).astype(np.float32)


def generate_scene(seed: int, size=512, config: SceneConfig | None = None) -> Scene:
    """Render one procedural RGB-D scene.

    Args:
      seed: any non-negative int; the same (seed, size, config) always gives the same scene.
      size: an int (square) or (height, width), at least 16.
      config: object counts and depth range; `SceneConfig()` by default.

    Returns:
      `Scene(rgb (H, W, 3) uint8, depth (H, W) float32)`, depth finite and > 0 everywhere.
    """
    cfg = config or SceneConfig()
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"seed: expected a non-negative int, got {seed!r}")
    if not 0 < cfg.near < cfg.far:
        raise UserError(f"config: expected 0 < near < far, got near={cfg.near}, far={cfg.far}")
    h, w = _size_hw(size)
    rng = np.random.default_rng(int(seed))
    cv = _Canvas(h, w)
    near, far = cfg.near, cfg.far
    span = far - near
    scale = min(h, w)

    def count(r):
        return int(rng.integers(r[0], r[1] + 1))

    # Background: a wall plane and a floor plane meeting at a horizon (a crease: slope change, no jump).
    horizon = rng.uniform(0.45, 0.8)
    wall_d = far - rng.uniform(0, 0.15) * span
    wall = _plane_depth(rng, cv.xx, cv.yy, wall_d, 0.1 * span)
    floor = wall + (cv.yy - horizon) * (-rng.uniform(0.5, 0.9) * span)  # floor comes closer towards the bottom
    bg_depth = np.where(cv.yy < horizon, wall, np.minimum(wall, floor)).astype(np.float32)
    bg_depth = np.clip(bg_depth, near + 0.3 * span, None)
    bg_base = _random_colour(rng)
    bg_tex = _texture(rng, cv.xx * rng.uniform(0.5, 2), cv.yy * rng.uniform(0.5, 2), bg_base)
    floor_tex = _texture(rng, cv.xx, cv.yy, _random_colour(rng))
    bg_rgb = np.where((cv.yy < horizon)[..., None], bg_tex, floor_tex)
    cv.draw(np.ones((h, w), bool), bg_depth, _shade(bg_rgb, 0.6 + 0.4 * (1 - (bg_depth - near) / span)),
            (0, h, 0, w))

    def surface_rgb(xs, ys):
        """Texture of a new object: its own, or (camouflage) the background's, sampled in place."""
        if rng.uniform() < cfg.camouflage_prob:
            yi = np.clip((ys * (h - 1)).astype(int), 0, h - 1)
            xi = np.clip((xs * (w - 1)).astype(int), 0, w - 1)
            return bg_rgb[yi, xi]
        return _texture(rng, xs * rng.uniform(0.5, 3), ys * rng.uniform(0.5, 3), _random_colour(rng))

    # Decals: texture-only shapes on the background (colour edges without depth edges).
    for _ in range(count(cfg.num_decals)):
        c = rng.uniform([0, 0], [w, h])
        r = rng.uniform(0.03, 0.12) * scale
        n = int(rng.integers(3, 8))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        pts = c + np.stack([np.cos(ang), np.sin(ang)], 1) * r * rng.uniform(0.6, 1.0, (n, 1))
        box = _box_of(pts, h, w)
        if box is None:
            continue
        y0, y1, x0, x1 = box
        m = _poly_mask(pts, box)
        # Painted flush on the background: same depth, only a colour change.
        cv.rgb[y0:y1, x0:x1][m] = _shade(np.broadcast_to(_random_colour(rng), (int(m.sum()), 3)), 0.9)

    # Objects: drawn in random order; the z-buffer resolves occlusion.
    def plane_object():
        c = rng.uniform([0.1 * w, 0.1 * h], [0.9 * w, 0.9 * h])
        r = rng.uniform(0.08, 0.3) * scale
        n = int(rng.integers(3, 7))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        pts = c + np.stack([np.cos(ang), np.sin(ang)], 1) * r * rng.uniform(0.5, 1.0, (n, 1))
        box = _box_of(pts, h, w)
        if box is None:
            return
        y0, y1, x0, x1 = box
        xs, ys = cv.xx[y0:y1, x0:x1], cv.yy[y0:y1, x0:x1]
        d = _plane_depth(rng, xs, ys, near + rng.uniform(0.1, 0.75) * span, 0.6 * span)
        shade = rng.uniform(0.5, 1.0)
        cv.draw(_poly_mask(pts, box), d, _shade(surface_rgb(xs, ys), shade), box)

    def box_object():
        # Front face rectangle + top and side parallelograms: three planes, three shadings, shared edges.
        bw, bh = rng.uniform(0.08, 0.25, 2) * scale
        x, y = rng.uniform(0.05 * w, 0.85 * w), rng.uniform(0.2 * h, 0.9 * h)
        dx, dy = rng.uniform(0.2, 0.5) * bw * rng.choice([-1, 1]), -rng.uniform(0.2, 0.5) * bh
        d_front = near + rng.uniform(0.1, 0.7) * span
        depth_extent = rng.uniform(0.03, 0.1) * span
        front = np.array([[x, y], [x + bw, y], [x + bw, y + bh], [x, y + bh]])
        top = np.array([[x, y], [x + bw, y], [x + bw + dx, y + dy], [x + dx, y + dy]])
        sx = x + bw if dx > 0 else x
        side = np.array([[sx, y], [sx + dx, y + dy], [sx + dx, y + bh + dy], [sx, y + bh]])
        tex_base = _random_colour(rng)
        for pts, shade, kind in ((top, 1.0, "top"), (side, 0.55, "side"), (front, 0.8, "front")):
            box = _box_of(pts, h, w)
            if box is None:
                continue
            y0, y1, x0, x1 = box
            xs, ys = cv.xx[y0:y1, x0:x1], cv.yy[y0:y1, x0:x1]
            px, py = xs * (w - 1), ys * (h - 1)
            if kind == "front":
                d = np.full_like(xs, d_front)
            elif kind == "top":  # recedes towards the top edge
                d = d_front + depth_extent * np.clip((y - py) / max(-dy, 1e-3), 0, 1)
            else:  # recedes away from the front face
                d = d_front + depth_extent * np.clip((px - sx) / dx, 0, 1)
            rgb = _texture(rng, xs * 2, ys * 2, tex_base) if kind == "front" else np.broadcast_to(
                tex_base, xs.shape + (3,))
            cv.draw(_poly_mask(pts, box), d.astype(np.float32), _shade(rgb, shade), box)

    def disc_object():
        # A spherical cap seen head-on: an ellipse whose depth bulges towards the camera.
        c = rng.uniform([0.05 * w, 0.05 * h], [0.95 * w, 0.95 * h])
        ax = rng.uniform(0.03, 0.15, 2) * scale
        box = _box_of(np.array([c - ax, c + ax]), h, w)
        if box is None:
            return
        y0, y1, x0, x1 = box
        xs, ys = cv.xx[y0:y1, x0:x1], cv.yy[y0:y1, x0:x1]
        u = (xs * (w - 1) - c[0]) / ax[0]
        v = (ys * (h - 1) - c[1]) / ax[1]
        rho2 = u * u + v * v
        mask = rho2 <= 1.0
        bulge = np.sqrt(np.clip(1 - rho2, 0, 1))
        d = near + rng.uniform(0.05, 0.7) * span - rng.uniform(0.01, 0.05) * span * bulge
        rgb = _shade(surface_rgb(xs, ys), 0.45 + 0.55 * bulge)  # Lambert-like: brighter at the centre
        cv.draw(mask, d.astype(np.float32), rgb, box)

    def line_object(pts: np.ndarray, width: int, d_start: float, d_end: float, colour: np.ndarray):
        """A polyline `pts` (N, 2) of `width` pixels, depth interpolated along its length."""
        box = _box_of(pts, h, w, pad=width + 2)
        if box is None:
            return
        y0, y1, x0, x1 = box
        m = np.zeros((y1 - y0, x1 - x0), np.uint8)
        t = np.zeros((y1 - y0, x1 - x0), np.float32)  # arc-length parameter painted along the line
        seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        cum = np.concatenate([[0.0], np.cumsum(seg)]) / max(float(seg.sum()), 1e-6)
        for i in range(len(pts) - 1):
            p, q = (pts[i] - [x0, y0]) * 16, (pts[i + 1] - [x0, y0]) * 16
            p, q = tuple(int(v) for v in np.round(p)), tuple(int(v) for v in np.round(q))
            cv2.line(m, p, q, 1, thickness=width, lineType=cv2.LINE_8, shift=4)
            cv2.line(t, p, q, float(0.5 * (cum[i] + cum[i + 1])), thickness=width, lineType=cv2.LINE_8, shift=4)
        d = (d_start + (d_end - d_start) * t).astype(np.float32)
        rgb = np.broadcast_to(colour, d.shape + (3,))
        cv.draw(m.astype(bool), d, rgb, box)

    def pole_object():
        x = rng.uniform(0.02, 0.98) * w
        y_top, y_bot = rng.uniform(-0.1, 0.5) * h, rng.uniform(0.6, 1.1) * h
        lean = rng.uniform(-0.1, 0.1) * w
        d = near + rng.uniform(0.05, 0.6) * span
        width = int(rng.integers(1, max(2, scale // 100) + 2))
        line_object(np.array([[x + lean, y_top], [x, y_bot]]), width, d, d + rng.uniform(-0.02, 0.02) * span,
                    _shade(_random_colour(rng), rng.uniform(0.3, 1.0)))

    def wire_object():
        # A sagging wire (catenary-like parabola) across the image, one or two pixels wide.
        xa, xb = rng.uniform(-0.1, 0.4) * w, rng.uniform(0.6, 1.1) * w
        ya, yb = rng.uniform(0.05, 0.6, 2) * h
        sag = rng.uniform(0.02, 0.2) * h
        s = np.linspace(0, 1, 24)
        pts = np.stack([xa + (xb - xa) * s, ya + (yb - ya) * s + 4 * sag * s * (1 - s)], 1)
        da = near + rng.uniform(0.05, 0.6) * span
        line_object(pts, int(rng.integers(1, 3)), da, da + rng.uniform(-0.1, 0.1) * span,
                    _shade(_random_colour(rng), rng.uniform(0.1, 0.6)))

    def branch_object():
        # A twig: recursive segments that thin out and come slightly closer at each level.
        d0 = near + rng.uniform(0.1, 0.6) * span
        colour = _shade(_random_colour(rng), rng.uniform(0.2, 0.7))
        stack = [(rng.uniform([0, 0.3 * h], [w, 1.1 * h]), -np.pi / 2 + rng.uniform(-0.5, 0.5),
                  rng.uniform(0.15, 0.35) * scale, max(1, scale // 128) + 1, d0, 0)]
        while stack:
            p, ang, length, width, d, level = stack.pop()
            q = p + length * np.array([np.cos(ang), np.sin(ang)])
            d_end = d - 0.01 * span
            line_object(np.array([p, q]), int(width), d, d_end, colour)
            if level < 3:
                for turn in (-1, 1):
                    if rng.uniform() < 0.8:
                        stack.append((q, ang + turn * rng.uniform(0.3, 0.9), length * rng.uniform(0.5, 0.75),
                                      max(1, width - 1), d_end, level + 1))

    makers = ([plane_object] * count(cfg.num_planes) + [box_object] * count(cfg.num_boxes)
              + [disc_object] * count(cfg.num_discs) + [pole_object] * count(cfg.num_poles)
              + [wire_object] * count(cfg.num_wires) + [branch_object] * count(cfg.num_branches))
    for i in rng.permutation(len(makers)):
        makers[i]()

    # Depth fog and sensor noise on the colour only (depth stays exact).
    fog = 0.15 * (cv.depth - near) / span
    rgb = cv.rgb * (1 - fog[..., None]) + 0.8 * fog[..., None]
    rgb = rgb * 255.0 + rng.normal(0.0, cfg.noise_sigma, rgb.shape)
    rgb = np.clip(np.round(rgb), 0, 255).astype(np.uint8)
    # Quantised to multiples of 2**-11: exact in float32, and the zero low mantissa bits let the stored
    # depth compress about 3x (this quantised map *is* the ground truth).
    depth = (np.round(np.clip(cv.depth, near, far) * DEPTH_STEP_INV) / DEPTH_STEP_INV).astype(np.float32)
    return Scene(rgb=rgb, depth=depth)


def depth_edges(depth: np.ndarray, rel_threshold: float = 0.05) -> np.ndarray:
    """Occlusion boundaries of a depth map: pixels whose 4-neighbour relative depth jump exceeds the threshold.

    Used by tests and the docs to show that texture edges and depth edges differ. `depth` is (H, W).
    """
    d = np.asarray(depth, np.float32)
    if d.ndim != 2:
        raise UserError(f"depth: expected an (H, W) map, got shape {d.shape}")
    e = np.zeros(d.shape, bool)
    jx = np.abs(np.diff(d, axis=1)) / np.minimum(d[:, 1:], d[:, :-1]) > rel_threshold
    jy = np.abs(np.diff(d, axis=0)) / np.minimum(d[1:], d[:-1]) > rel_threshold
    e[:, 1:] |= jx
    e[:, :-1] |= jx
    e[1:] |= jy
    e[:-1] |= jy
    return e
