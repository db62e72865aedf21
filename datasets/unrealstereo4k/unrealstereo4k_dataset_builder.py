"""`unrealstereo4k`: UnrealStereo4K (training set, docs/method.md §10): 3840x2160 stereo with float32 disparity.

We store relative depth = 1 / disparity (`Disp0/<frame>.npy` for `Image0`, `Disp1` for `Image1`);
non-positive disparity is invalid. Focal length and baseline are not needed: losses are scale-shift
invariant.
"""
from __future__ import annotations

from pathlib import Path

from sddr_jax_datasets import common


class Builder(common.DepthBuilder):
    """UnrealStereo4K (Tosi et al., CVPR 2021, SMD-Nets) from the manual download."""

    name = "unrealstereo4k"
    HOMEPAGE = "https://github.com/fabiotosi92/SMD-Nets"
    DESCRIPTION = "UnrealStereo4K synthetic 4K stereo pairs; disparity stored as relative depth (1/disp)."
    LICENSE = "MIT (per the SMD-Nets release; check the dataset page)"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "<manual_dir>/UnrealStereo4K_<NNNNN>|<NNNNN>/Image0/<frame>.png with Disp0/<frame>.npy "
        "(and Image1/Disp1 for the right view).")

    def _samples(self, manual_dir: Path):
        samples = []
        for view in (0, 1):
            for img in common.sorted_glob(manual_dir, f"*/Image{view}/*.png"):
                seq = img.parents[1].name
                samples.append(common.Sample(f"{seq}_{img.stem}_{view}", {
                    "rgb": img, "disp": img.parents[1] / f"Disp{view}" / f"{img.stem}.npy"}))
        return {"train": sorted(samples, key=lambda s: s.name)}

    def _load(self, sample):
        rgb = common.read_rgb(sample.files["rgb"])
        disp = common.read_npy(sample.files["disp"])
        common.check_depth(disp, sample.files["disp"])  # NaN/inf/negative disparity is an error
        return rgb, common.check_depth(common.inverse(disp), sample.files["disp"])
