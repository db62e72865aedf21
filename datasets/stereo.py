"""Disparity from a rectified stereo pair at build time, for training sets that ship stereo views but no depth
(`holopix50k`, `wsvd`; docs/method.md §10).

The matcher is OpenCV's semi-global block matching (`cv2.StereoSGBM`, Hirschmüller, PAMI 2008); nothing here
matches pixels itself. Two passes give a disparity for each view (the right view's by matching the mirrored
pair), and a left-right consistency check keeps a left pixel only where the right view's disparity at its
match agrees. Invalid pixels are 0.

Parameters (`SGBMParams`) are ours, chosen from OpenCV's documentation of `StereoSGBM::create`: P1 = 8·3·b²,
P2 = 32·3·b² (the values its sample uses), uniqueness ratio 10 (documented range 5-15), speckle window 100
(50-200) with range 2 (1-2, in pixels), 3-way mode (faster, same cost). OpenCV's own approximate check
(`disp12MaxDiff`) is off: ours is the explicit two-pass check with a 1-pixel tolerance.
"""
from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

from sddr_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class SGBMParams:
    """Knobs of `sgbm_disparity` (all ours; see the module docstring)."""

    max_disparity_fraction: float = 0.125  # search range = this * image width, rounded up to a multiple of 16
    min_num_disparities: int = 16
    block_size: int = 5
    uniqueness_ratio: int = 10
    speckle_window_size: int = 100
    speckle_range: int = 2
    lr_tolerance_px: float = 1.0  # left-right check: |d_L(x) - d_R(x - d_L(x))| <= this

    def num_disparities(self, width: int) -> int:
        n = max(self.min_num_disparities, math.ceil(self.max_disparity_fraction * width / 16.0) * 16)
        return int(n)


def _matcher(params: SGBMParams, num_disparities: int):
    b = params.block_size
    return cv2.StereoSGBM_create(
        minDisparity=0, numDisparities=num_disparities, blockSize=b, P1=8 * 3 * b * b, P2=32 * 3 * b * b,
        disp12MaxDiff=-1, uniquenessRatio=params.uniqueness_ratio, speckleWindowSize=params.speckle_window_size,
        speckleRange=params.speckle_range, mode=cv2.STEREO_SGBM_MODE_SGBM_3WAY)


def left_right_check(disp_left: np.ndarray, disp_right: np.ndarray, tolerance: float) -> np.ndarray:
    """disp_left where it is > 0 and the right view's disparity at the match x - d_L (rounded) is > 0 and within
    `tolerance` of it; 0 elsewhere (float32, (H, W)). Both inputs are positive disparities of a rectified
    pair (x_right = x_left - d)."""
    dl = np.asarray(disp_left, np.float32)
    dr = np.asarray(disp_right, np.float32)
    h, w = dl.shape
    cols = np.arange(w, dtype=np.float32)[None, :]
    xr = np.rint(cols - dl).astype(np.int64)
    inside = (dl > 0) & (xr >= 0) & (xr < w)
    rows = np.broadcast_to(np.arange(h)[:, None], (h, w))
    d_at_match = dr[rows, np.clip(xr, 0, w - 1)]
    ok = inside & (d_at_match > 0) & (np.abs(dl - d_at_match) <= tolerance)
    return np.where(ok, dl, 0.0).astype(np.float32)


def sgbm_disparity(left: np.ndarray, right: np.ndarray, params: SGBMParams = SGBMParams()) -> np.ndarray:
    """Disparity (pixels, float32 (H, W)) of the left view of a rectified uint8 RGB pair; 0 = invalid (no
    match, filtered as a speckle, or failing the left-right check)."""
    if left.shape != right.shape or left.ndim != 3 or left.dtype != np.uint8:
        raise UserError(f"stereo pair: expected two uint8 (H, W, 3) images of one shape, got {left.shape} "
                        f"{left.dtype} and {right.shape} {right.dtype}")
    gl = cv2.cvtColor(left, cv2.COLOR_RGB2GRAY)
    gr = cv2.cvtColor(right, cv2.COLOR_RGB2GRAY)
    n = params.num_disparities(left.shape[1])
    matcher = _matcher(params, n)
    # SGBM returns fixed-point int16 with 4 fractional bits; invalid = (minDisparity - 1) * 16 = -16.
    dl = matcher.compute(gl, gr).astype(np.float32) / 16.0
    # The right view's disparity: match the mirrored pair (mirrored right as the reference), mirror back.
    dr = matcher.compute(np.ascontiguousarray(gr[:, ::-1]), np.ascontiguousarray(gl[:, ::-1]))
    dr = dr[:, ::-1].astype(np.float32) / 16.0
    return left_right_check(np.maximum(dl, 0.0), np.maximum(dr, 0.0), params.lr_tolerance_px)
