"""`hypersim`: Hypersim frames with the GBDF protocol (docs/method.md §9.3).

Sources:
- Layout: github.com/apple/ml-hypersim `code/python/tools/scene_generate_images_tonemap.py`:
  `<scene>/images/scene_<cam>_final_hdf5/frame.NNNN.color.hdf5` and
  `<scene>/images/scene_<cam>_geometry_hdf5/frame.NNNN.render_entity_id.hdf5`, each an HDF5 file with one
  array `dataset`; `depth_meters` beside them (GBDF's `utils/hypersim.py` derives its path the same way).
- GT: `frame.NNNN.depth_meters.hdf5` holds Euclidean distances in metres to the camera's optical centre, not
  planar depth (ml-hypersim `README.md`, "depth_meters", as quoted by the loaders that convert it); NaN = no
  geometry -> invalid. GBDF (github.com/YuiNsky/Gradient-based-depth-map-fusion `utils/hypersim.py`) evaluates
  on this distance (NaN -> 0, 0 = invalid); its distance-to-depth helper `convetDep` is not called.
- RGB: the linear HDR `color.hdf5` tone-mapped as ml-hypersim's `scene_generate_images_tonemap.py` does:
  brightness = 0.3 R + 0.59 G + 0.11 B over pixels with `render_entity_id != -1` (all pixels when the file is
  absent: our fallback), scale = 0.8^(2.2) / p90 (0 if p90 < 1e-4, 1 if no valid pixel), rgb = clip((scale *
  linear)^(1/2.2), 0, 1).
- Test list: GBDF evaluates 286 frames of `scene_cam_00` (`utils/hypersim.py`, `num = 286`), distributed as a
  subset download in the same layout (its `README.md`); the subset's folder names need not be `ai_XXX_YYY`, so
  every `<scene>/images/...` folder is read. Put the list in `<manual_dir>/test_list.txt` (one sample per line,
  `ai_001_010/cam_00/0000`, the sample name `ai_001_010_cam_00_0000` or a path to a `.color.hdf5`); without
  it every frame found is built.

Known difference (warned at build time): GBDF's own loader tone-maps with gamma 0.5/2.2 (not 1/2.2), divides by
the image maximum instead of clipping and truncates to uint8; we store ml-hypersim's official tone mapping, so the
RGB given to a predictor differs from GBDF's.
"""
from __future__ import annotations

import re
from pathlib import Path

import h5py
import numpy as np

from sddr_jax.errors import UserError
from sddr_jax_datasets import common

TONEMAP_GAMMA = 1.0 / 2.2
TONEMAP_PERCENTILE = 90
TONEMAP_TARGET = 0.8
# A frame of the test list: at the start of the line or after a "/" (a path such as
# /data/ai_001_010/images/scene_cam_00_final_hdf5/frame.0000.color.hdf5).
_FRAME = re.compile(r"(?:^|/)(ai_\d+_\d+)[/_](?:scene_)?cam_(\d+)(?:_final_hdf5)?[/_](?:frame\.)?(\d+)")


def parse_frame(line: str) -> str | None:
    """The sample name `ai_XXX_YYY_cam_CC_NNNN` of a test-list line (`ai_001_010/cam_00/0000`, the sample name
    itself, or a path ending in `frame.NNNN.color.hdf5`), or None."""
    m = _FRAME.search(line.strip().replace("\\", "/").replace("/images/", "/"))
    return _name(*m.groups()) if m else None


def tonemap(rgb_linear: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Hypersim's tone mapping of a linear (H, W, 3) image to uint8 sRGB-like RGB."""
    rgb = np.asarray(rgb_linear, np.float64)
    mask = np.ones(rgb.shape[:2], bool) if valid is None else valid
    if not mask.any():
        scale = 1.0
    else:
        brightness = 0.3 * rgb[..., 0] + 0.59 * rgb[..., 1] + 0.11 * rgb[..., 2]
        current = np.percentile(brightness[mask], TONEMAP_PERCENTILE)
        scale = 0.0 if current < 1e-4 else TONEMAP_TARGET ** (1.0 / TONEMAP_GAMMA) / current
    out = np.power(np.maximum(scale * rgb, 0.0), TONEMAP_GAMMA)
    return np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)


def _read_h5(path: Path) -> np.ndarray:
    path = common._require(path)
    try:
        with h5py.File(path, "r") as f:
            if "dataset" not in f:
                raise UserError(f"{path}: expected an HDF5 file with a 'dataset' array (Hypersim layout)")
            return np.asarray(f["dataset"])
    except OSError as e:
        raise UserError(f"{path}: not a readable HDF5 file ({e})") from None


def _name(scene: str, cam: str, frame: str) -> str:
    return f"{scene}_cam_{int(cam):02d}_{int(frame):04d}"


class Builder(common.DepthBuilder):
    """Hypersim (Roberts et al., ICCV 2021) evaluation frames from the manual download."""

    name = "hypersim"
    HOMEPAGE = "https://github.com/apple/ml-hypersim"
    DESCRIPTION = "Hypersim photorealistic synthetic scenes: tone-mapped RGB and Euclidean distance (m)."
    LICENSE = "CC BY-SA 3.0 (Apple ml-hypersim)"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "<manual_dir>/<ai_XXX_YYY>/images/scene_cam_CC_final_hdf5/frame.NNNN.color.hdf5 and "
        "scene_cam_CC_geometry_hdf5/frame.NNNN.depth_meters.hdf5 (+ frame.NNNN.render_entity_id.hdf5); "
        "optional <manual_dir>/test_list.txt (GBDF's 286-frame list).")

    def _samples(self, manual_dir: Path):
        common.log.warning("hypersim: RGB uses ml-hypersim's tone mapping (gamma 1/2.2, clip); GBDF's loader uses "
                           "gamma 0.5/2.2 and max-normalisation, so its inputs differ from these")
        found = {}
        for color in common.sorted_glob(manual_dir, "*/images/scene_cam_*_final_hdf5/frame.*.color.hdf5"):
            scene = color.parents[2].name
            cam = color.parent.name[len("scene_cam_"):-len("_final_hdf5")]
            frame = color.name.split(".")[1]
            geo = color.parents[1] / f"scene_cam_{cam}_geometry_hdf5"
            found[_name(scene, cam, frame)] = common.Sample(_name(scene, cam, frame), {
                "rgb": color, "depth": geo / f"frame.{frame}.depth_meters.hdf5",
                "entity": geo / f"frame.{frame}.render_entity_id.hdf5"})
        test_list = manual_dir / "test_list.txt"
        if not test_list.exists():
            return {"test": list(found.values())}
        samples = []
        for i, line in enumerate(test_list.read_text().splitlines()):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name = parse_frame(line)
            if name is None:
                raise UserError(f"{test_list}:{i + 1}: cannot parse {line!r} (expected ai_001_010/cam_00/0000)")
            if name not in found:
                raise UserError(f"{test_list}:{i + 1}: frame {name} is listed but its color.hdf5 was not found "
                                f"under {manual_dir}")
            samples.append(found[name])
        return {"test": samples}

    def _load(self, sample):
        color = _read_h5(sample.files["rgb"])
        if color.ndim != 3 or color.shape[2] != 3:
            raise UserError(f"{sample.files['rgb']}: expected an (H, W, 3) color image, got shape {color.shape}")
        valid = None
        if sample.files["entity"].exists():
            valid = _read_h5(sample.files["entity"]) != -1
            if valid.shape != color.shape[:2]:
                raise UserError(f"{sample.files['entity']}: shape {valid.shape} does not match the image "
                                f"{color.shape[:2]} of {sample.files['rgb']}")
        rgb = tonemap(np.nan_to_num(color.astype(np.float32), nan=0.0), valid)
        distance = _read_h5(sample.files["depth"]).astype(np.float32)
        return rgb, common.check_depth(distance, sample.files["depth"], allow_nan=True)
