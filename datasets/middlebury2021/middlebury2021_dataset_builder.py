"""`middlebury2021`: the Middlebury 2021 stereo scenes as RGB-D (docs/method.md §9.2).

GT depth = f_x * baseline / (disp / |scale| + doffs) from `disp{0,1}.pfm` (rows flipped: PFM is bottom-up)
and `calib.txt` (f_x = first entry of `cam0`); infinite disparity gives depth 0 (invalid). Views are named
`<scene>_l` (im0/disp0) and `<scene>_r` (im1/disp1) as in the official demo's prediction files.

Configs: `float` (default: the exact float depth in millimetres; `sddr-jax evaluate` applies the legacy
uint8 cast itself when asked, which is the spec's default for parity) and `legacy_uint8` (the official
script's path baked into the records: depth cast to uint8, i.e. fractions truncated and values >= 256
wrapped modulo 256; the cast is idempotent, so evaluating these records with the legacy flag is harmless).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from sddr_jax.errors import UserError
from sddr_jax_datasets import common


@dataclasses.dataclass
class MiddleburyConfig(tfds.core.BuilderConfig):
    legacy_uint8: bool = True


def disparity_to_depth(disp: np.ndarray, scale: float, calib: dict) -> np.ndarray:
    """Depth (calib units, mm) from a Middlebury disparity map; inf disparity -> 0."""
    f = float(calib["cam0"][0, 0])
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = f * float(calib["baseline"]) / (disp / abs(scale) + float(calib["doffs"]))
    return np.where(np.isfinite(depth) & (depth > 0), depth, 0.0).astype(np.float32)


def legacy_uint8(depth: np.ndarray) -> np.ndarray:
    """The official script's uint8 cast: truncation and wrap-around modulo 256, returned as float32."""
    return (np.floor(depth).astype(np.int64) % 256).astype(np.float32)


class Builder(common.DepthBuilder):
    """Middlebury 2021 (24 scenes x 2 views, 1920x1080) from the manual download."""

    name = "middlebury2021"
    BUILDER_CONFIGS = [
        MiddleburyConfig(name="float", description="exact float GT depth (mm)", legacy_uint8=False),
        MiddleburyConfig(name="legacy_uint8", description="GT cast to uint8 as the official script does",
                         legacy_uint8=True),
    ]
    DEFAULT_CONFIG_NAME = "float"
    HOMEPAGE = "https://vision.middlebury.edu/stereo/data/scenes2021/"
    DESCRIPTION = "Middlebury 2021 mobile stereo scenes; depth from PFM disparity and calib.txt."
    LICENSE = "Research use; cite Scharstein et al. (see the dataset page)"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download and unzip the 2021 dataset so that each scene is a folder <manual_dir>[/data]/<scene>/ "
        "with im0.png, im1.png, disp0.pfm, disp1.pfm and calib.txt. Optional precomputed predictions: "
        "<manual_dir>/<predictor>/low_<res>/<scene>_l.png and high_<res>/<scene>_l.png.")

    def _samples(self, manual_dir: Path):
        calibs = sorted(set(manual_dir.glob("*/calib.txt")) | set(manual_dir.glob("*/*/calib.txt")))
        samples = []
        for calib in calibs:
            scene = calib.parent
            for view, suffix in ((0, "l"), (1, "r")):
                if view == 1 and not (scene / "disp1.pfm").exists() and not (scene / "im1.png").exists():
                    continue  # scenes without a right-view GT contribute one view only
                samples.append(common.Sample(f"{scene.name}_{suffix}", {
                    "rgb": scene / f"im{view}.png", "disp": scene / f"disp{view}.pfm", "calib": calib}))
        return {"test": samples}

    def _load(self, sample):
        return load_view(sample.files, self.builder_config.legacy_uint8)


def load_view(files, legacy: bool) -> tuple[np.ndarray, np.ndarray]:
    """(rgb, depth) of one view from its files {"rgb", "disp" (PFM), "calib"}; with `legacy` the uint8 cast.
    Shared with the Middlebury 2014 builder (same formats)."""
    rgb = common.read_rgb(files["rgb"])
    disp, scale = common.read_pfm(files["disp"], return_scale=True)
    if disp.ndim != 2:
        raise UserError(f"{files['disp']}: expected a single-channel PFM (Pf), got 3 channels")
    if np.isnan(disp).any():
        raise UserError(f"{files['disp']}: disparity has {int(np.isnan(disp).sum())} NaN values")
    calib = common.read_middlebury_calib(files["calib"])
    depth = common.check_depth(disparity_to_depth(disp, scale, calib), files["disp"])
    return rgb, legacy_uint8(depth) if legacy else depth
