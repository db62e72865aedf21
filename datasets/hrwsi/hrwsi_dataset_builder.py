"""`hrwsi`: HR-WSI web stereo images (training set, docs/method.md §10).

Sources:
- Release: github.com/KexianHust/Structure-Guided-Ranking-Loss (Xian et al., CVPR 2020); its `README.md` says
  only "Code and data will come soon" and documents no file format, so the layout comes from loaders of the
  download: midas_hkrm `HRWSI` (train `train/imgs` + `train/gts`, test `val/imgs` + `val/gts`; "Ground truth:
  disparity", read as a greyscale image and mapped to [0, 1]) and a loader with `size = {'train': 20378,
  'val': 400}` that globs `<split>/imgs/*.jpg` with `gts/<stem>.png`. GBDF trains on HR-WSI as well.

We store relative depth = 255 / disparity where the disparity is > 0 and `valid_masks/<stem>.png` (when present)
is non-zero, else 0 (invalid). The losses are scale-and-shift invariant, so the unknown disparity scale does not
matter.

Not confirmed (warned at build time): the mask folder name `valid_masks` and its convention (non-zero = valid),
that `gts` holds disparity (larger = nearer) with 0 = unknown.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sddr_jax.errors import UserError
from sddr_jax_datasets import common


class Builder(common.DepthBuilder):
    """HR-WSI (Xian et al., CVPR 2020) from the manual download."""

    name = "hrwsi"
    HOMEPAGE = "https://github.com/KexianHust/Structure-Guided-Ranking-Loss"
    DESCRIPTION = "HR-WSI high-resolution web stereo images with disparity GT (stored as relative depth)."
    LICENSE = "Research use only (see the project page)"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "<manual_dir>/<train|val>/imgs/<stem>.jpg, gts/<stem>.png (8-bit disparity), "
        "valid_masks/<stem>.png (optional).")

    def _samples(self, manual_dir: Path):
        common.log.warning("hrwsi: layout from third-party loaders (the release documents none); assumed: gts = "
                           "disparity with 0 = unknown, optional valid_masks/<stem>.png with non-zero = valid")
        out = {}
        for split, folder in (("train", "train"), ("validation", "val")):
            imgs = common.sorted_glob(manual_dir / folder / "imgs", "*.jpg") + common.sorted_glob(
                manual_dir / folder / "imgs", "*.png")
            if imgs:
                out[split] = [common.Sample(p.stem, {
                    "rgb": p, "disp": manual_dir / folder / "gts" / f"{p.stem}.png",
                    "mask": manual_dir / folder / "valid_masks" / f"{p.stem}.png"}) for p in imgs]
        if not out:
            out["train"] = []
        return out

    def _load(self, sample):
        rgb = common.read_rgb(sample.files["rgb"])
        disp = common.read_png_map(sample.files["disp"]).astype(np.float32)
        if sample.files["mask"].exists():
            mask = common.read_png_map(sample.files["mask"], dtypes=(np.uint8,))
            if mask.shape != disp.shape:
                raise UserError(f"{sample.files['mask']}: shape {mask.shape} != disparity {disp.shape}")
            disp = np.where(mask > 0, disp, 0.0)
        depth = common.inverse(disp / 255.0)
        return rgb, common.check_depth(depth, sample.files["disp"])
