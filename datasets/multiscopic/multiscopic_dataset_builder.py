"""`multiscopic`: the Multiscopic test set (100 scenes x 5 views) with the GBDF protocol (docs/method.md §9.3).

"Depth" = max(disp) - disp of each 8-bit disparity PNG; pixels with disp = 0 are invalid (stored as 0).
The GBDF loaders also drop pixels whose GT is 0 (disp = max), which our 0 = invalid convention matches.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sddr_jax_datasets import common


class Builder(common.DepthBuilder):
    """Multiscopic synthetic test set (Yuan et al., IROS 2021) from the manual download."""

    name = "multiscopic"
    DESCRIPTION = "Multiscopic vision dataset, test split: 5 views per scene with 8-bit disparity."
    LICENSE = "Research use (see the dataset page)"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Unzip the test split so that <manual_dir>/test/<scene>/ holds view0.png..view4.png and "
        "disp0.png..disp4.png (8-bit disparity). Samples are named <scene>_view<k>.")

    def _samples(self, manual_dir: Path):
        root = common.split_dir(manual_dir, "test", "Test") or manual_dir
        samples = []
        for img in common.sorted_glob(root, "*/view[0-9].png"):
            k = img.stem[len("view"):]
            samples.append(common.Sample(f"{img.parent.name}_view{k}",
                                          {"rgb": img, "disp": img.parent / f"disp{k}.png"}))
        return {"test": samples}

    def _load(self, sample):
        rgb = common.read_rgb(sample.files["rgb"])
        disp = common.read_png_map(sample.files["disp"], dtypes=(np.uint8,)).astype(np.float32)
        depth = np.where(disp != 0, disp.max() - disp, 0.0).astype(np.float32)
        return rgb, common.check_depth(depth, sample.files["disp"])
