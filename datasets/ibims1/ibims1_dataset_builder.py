"""`ibims1`: iBims-1 (training set of the SDDR mixture, docs/method.md §10): laser-scanned indoor depth, 640x480.

Sources:
- Official page https://www.bgu.tum.de/lmf/ibims1/ ; the download (mediaTUM, dataserv.ub.tum.de, m1455541)
  holds `ibims1_core_mat.zip`, `ibims1_core_raw.zip`, `imagelist.txt` and `evaluation_scripts.zip`.
- The official evaluation script `evaluate_ibims.py` (T. Koch, v0.9; a copy is in github.com/bulatko/DepthART
  at mde/capsules/meter/ibims_official/evaluate_ibims.py): the image names are the lines of `imagelist.txt`;
  `<name>.mat` holds a struct `data` with `rgb`, `depth` (metres), `edges`, `calib`, `mask_invalid`,
  `mask_transp` and plane masks; the valid pixels are `mask_transp * mask_invalid * (depth != 0)`
  (mask value 1 = keep: `mask_invalid` is 0 on invalid pixels, `mask_transp` 0 on transparent ones).
  iBims-1 is indoor: there is no sky mask.
- The PNG release `ibims1_core_raw/{rgb,depth,mask_invalid,mask_transp}/<name>.png` with uint16 depth,
  metres = value * 50 / 65535: this scale is from third-party loaders (ZoeDepth, zoedepth/data/ibims.py), not
  from the official page, so a build that reads PNG depth logs a warning. The .mat file is used when present.

We store depth in metres on the valid pixels, 0 elsewhere. The release is a 100-image test benchmark with no
train/test split; the SDDR mixture trains on it, so every image of `imagelist.txt` goes to `train`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sddr_jax.errors import UserError
from sddr_jax_datasets import common

RAW_DEPTH_SCALE_M = 50.0 / 65535.0  # uint16 PNG depth -> metres (ZoeDepth's iBims loader)
MAT_FIELDS = ("rgb", "depth", "mask_invalid", "mask_transp")
RAW_FOLDERS = ("rgb", "depth", "mask_invalid", "mask_transp")


def read_mat(path: Path) -> dict[str, np.ndarray]:
    """The `data` struct fields of an iBims-1 `<name>.mat` file that we use (MATLAB v5, as scipy reads it)."""
    import scipy.io

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        mat = scipy.io.loadmat(str(path), simplify_cells=True)
    except Exception as e:  # scipy raises ValueError/NotImplementedError/OSError for foreign or v7.3 files
        raise UserError(f"{path}: not a readable MATLAB .mat file ({e})") from None
    data = mat.get("data")
    if not isinstance(data, dict):
        raise UserError(f"{path}: no struct 'data' (variables: {sorted(k for k in mat if not k.startswith('__'))})")
    missing = [f for f in MAT_FIELDS if f not in data]
    if missing:
        raise UserError(f"{path}: struct 'data' lacks fields {missing} (has {sorted(data)})")
    return {f: np.asarray(data[f]) for f in MAT_FIELDS}


def _valid_depth(depth, mask_invalid, mask_transp, path) -> np.ndarray:
    """Depth on `mask_invalid * mask_transp * (depth != 0)` (the official script's valid mask), else 0."""
    for name, m in (("mask_invalid", mask_invalid), ("mask_transp", mask_transp)):
        if m.shape != depth.shape:
            raise UserError(f"{path}: {name} has shape {m.shape}, depth {depth.shape}; they must match")
    valid = (mask_invalid != 0) & (mask_transp != 0) & (depth != 0)
    return common.check_depth(np.where(valid, depth, 0.0).astype(np.float32), path)


class Builder(common.DepthBuilder):
    """iBims-1 (Koch et al., ECCV Workshops 2018) from the manual download."""

    name = "ibims1"
    HOMEPAGE = "https://www.bgu.tum.de/lmf/ibims1/"
    DESCRIPTION = "iBims-1: 100 indoor images (640x480) with laser-scanned depth (metres), invalid/transparent masked."
    LICENSE = "See the iBims-1 page (research use)"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "<manual_dir>/imagelist.txt with ibims1_core_mat/<name>.mat, or ibims1_core_raw/{rgb,depth,mask_invalid,"
        "mask_transp}/<name>.png (the unpacked official download).")

    def _samples(self, manual_dir: Path):
        mat_dir = common.split_dir(manual_dir, "ibims1_core_mat")
        if mat_dir is None and any(manual_dir.glob("*.mat")):
            mat_dir = manual_dir
        raw_dir = common.split_dir(manual_dir, "ibims1_core_raw")
        if raw_dir is None and (manual_dir / "rgb").is_dir():
            raw_dir = manual_dir
        lists = [d / "imagelist.txt" for d in (manual_dir, mat_dir, raw_dir) if d is not None]
        imagelist = next((p for p in lists if p.is_file()), None)
        if imagelist is not None:
            names = [n for n in imagelist.read_text().split() if n]
        else:
            found = set(mat_dir.glob("*.mat")) if mat_dir else set()
            found |= set(raw_dir.glob("rgb/*.png")) if raw_dir else set()
            names = sorted({p.stem for p in found})
            common.log.warning("ibims1: no imagelist.txt in %s; using every image found (%d)", manual_dir, len(names))
        samples, raw = [], 0
        for name in names:
            mat = (mat_dir or manual_dir / "ibims1_core_mat") / f"{name}.mat"
            if raw_dir is not None and not mat.is_file():
                raw += 1
                samples.append(common.Sample(name, {f: raw_dir / f / f"{name}.png" for f in RAW_FOLDERS}))
            else:
                samples.append(common.Sample(name, {"mat": mat}))
        if raw:
            common.log.warning("ibims1: %d image(s) read from 16-bit PNG depth with metres = value * 50 / 65535, "
                               "a scale taken from third-party loaders, not the official page", raw)
        return {"train": samples}

    def _load(self, sample):
        if "mat" in sample.files:
            path = sample.files["mat"]
            data = read_mat(path)
            rgb = data["rgb"]
            if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
                raise UserError(f"{path}: data.rgb should be uint8 (H, W, 3), got {rgb.dtype} {rgb.shape}")
            depth = data["depth"].astype(np.float32)
            return rgb, _valid_depth(depth, data["mask_invalid"], data["mask_transp"], path)
        files = sample.files
        rgb = common.read_rgb(files["rgb"])
        depth = common.read_png_map(files["depth"], dtypes=(np.uint16,)).astype(np.float64) * RAW_DEPTH_SCALE_M
        masks = [common.read_png_map(files[f]) for f in ("mask_invalid", "mask_transp")]
        return rgb, _valid_depth(depth.astype(np.float32), *masks, files["depth"])
