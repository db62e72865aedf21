"""`unrealstereo4k`: UnrealStereo4K (training set, docs/method.md §10): 3840x2160 stereo with float32 disparity.

Sources (github.com/fabiotosi92/SMD-Nets, the dataset's official repository):
- Download: `scripts/download_data.sh` fetches `UnrealStereo4K_0000{0..8}.zip` and unzips each in place.
- Layout: `filenames/train.txt` (and `val.txt`, `test.txt`): one line per stereo pair, `<seq>/Image0/<frame>.png
  <seq>/Image1/<frame>.png <seq>/Disp0/<frame>.npy <seq>/Disp1/<frame>.npy` with five-digit sequence and frame
  names (`00000/Image0/00000.png`); `lib/data/Loader.py`: Disp0 is aligned with Image0 (left), Disp1 with Image1.
- Format: `lib/utils.py` `gt_loader`: `np.load` of the `.npy` disparity (pixels, at 3840x2160: the loader
  multiplies it by the resize ratio); `gt[np.isinf(gt)] = 0` ("Remove invalid values"), and `Loader.sampling`
  drops disparity 0. So inf and 0 are invalid.

We store relative depth = 1 / disparity for both views (samples `<seq>_<frame>_<view>`); disparity <= 0 or inf
is invalid (0); NaN is an error. Focal length and baseline are not needed: the losses are scale-shift invariant.

Not confirmed (warned at build time): the top folder each zip unpacks to (`<seq>/` as in the file lists, or
`UnrealStereo4K_<seq>/`; both are found); the split: every frame is used for training, the SMD-Nets file lists
(which hold out some frames for val/test) are not applied.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sddr_jax.errors import UserError
from sddr_jax_datasets import common


class Builder(common.DepthBuilder):
    """UnrealStereo4K (Tosi et al., CVPR 2021, SMD-Nets) from the manual download."""

    name = "unrealstereo4k"
    HOMEPAGE = "https://github.com/fabiotosi92/SMD-Nets"
    DESCRIPTION = "UnrealStereo4K synthetic 4K stereo pairs; disparity stored as relative depth (1/disp)."
    LICENSE = "MIT (per the SMD-Nets release; check the dataset page)"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Unzip UnrealStereo4K_0000N.zip (SMD-Nets scripts/download_data.sh) into <manual_dir>: "
        "<manual_dir>/<NNNNN>/Image0/<frame>.png with Disp0/<frame>.npy (and Image1/Disp1 for the right view).")

    def _samples(self, manual_dir: Path):
        common.log.warning("unrealstereo4k: every frame is used for training (SMD-Nets' filenames/{train,val,test}"
                           ".txt split is not applied); the folder each zip unpacks to is not documented")
        samples = []
        for view in (0, 1):
            for img in common.sorted_glob(manual_dir, f"*/Image{view}/*.png"):
                seq = img.parents[1].name
                samples.append(common.Sample(f"{seq}_{img.stem}_{view}", {
                    "rgb": img, "disp": img.parents[1] / f"Disp{view}" / f"{img.stem}.npy"}))
        return {"train": sorted(samples, key=lambda s: s.name)}

    def _load(self, sample):
        rgb = common.read_rgb(sample.files["rgb"])
        path = sample.files["disp"]
        disp = common.read_npy(path)
        if np.isnan(disp).any():
            raise UserError(f"{path}: disparity has {int(np.isnan(disp).sum())} NaN values (expected finite or inf)")
        if (disp < 0).any():
            raise UserError(f"{path}: disparity has {int((disp < 0).sum())} negative values")
        # inf is SMD-Nets' invalid value (gt_loader sets it to 0); common.inverse maps inf and 0 to 0.
        return rgb, common.check_depth(common.inverse(disp), path)
