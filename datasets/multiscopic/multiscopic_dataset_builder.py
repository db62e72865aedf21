"""`multiscopic`: the Multiscopic synthetic test set (100 scenes x 5 views) with the GBDF protocol (docs/method.md §9.3).

Sources (each fact, where it comes from):
- Release: the project page https://sites.google.com/view/multiscopic (linked from the IROS 2021 paper's code,
  github.com/weihaosky/SMVmatching `README.md`). Its own description of the test files could not be read
  through our search tool, so the layout below is the one of the evaluation code that defines the protocol.
- Layout: GBDF (Dai et al., AAAI 2023), github.com/YuiNsky/Gradient-based-depth-map-fusion, `README.md`
  ("download the test dataset, rename it as `multiscopic`") and `utils/multiscopic.py`: the test scenes are
  `multiscopic/test_b/<scene>/view{0..4}.png` with `disp{0..4}.png`, 500 images (100 scenes x 5 views).
  SMVmatching's `README.md` / `dataloader/datalist.py` show the release's other splits as
  `TRAIN|TEST|EVAL/SyntheData/<scene>/view<k>.png` with six-digit scene folders (`000001`); we accept those
  folders too.
- Format and GT: GBDF's `utils/multiscopic.py` reads `disp<k>.png` with `cv2.imread(path)[:, :, 0]` (8 bits,
  channel 0 of OpenCV's BGR), marks disp = 0 invalid and uses depth = max(disp) - disp; its error also drops
  pixels whose depth is 0 (disp = max). We store exactly that, 0 = invalid.

Not confirmed (logged as a warning at build time): that `disp<k>.png` is 8-bit (a 16-bit file is refused with
an error; GBDF's `cv2.imread` would silently scale it to 8 bits), and the folder name `test_b` (from GBDF's code,
not from the release).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from sddr_jax.errors import UserError
from sddr_jax_datasets import common

TEST_DIRS = ("test_b", "TEST", "test", "Test")  # GBDF's name first, then the release's split names


def read_disparity(path: Path) -> np.ndarray:
    """`disp<k>.png` as GBDF reads it: 8-bit, channel 0 (B of OpenCV's BGR) of a colour PNG."""
    path = common._require(path)
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise UserError(f"{path}: not a readable PNG")
    if arr.dtype != np.uint8:
        raise UserError(f"{path}: expected an 8-bit disparity PNG (GBDF reads 8 bits), got {arr.dtype}")
    return arr[..., 0] if arr.ndim == 3 else arr


class Builder(common.DepthBuilder):
    """Multiscopic synthetic test set (Yuan et al., IROS 2021) from the manual download."""

    name = "multiscopic"
    HOMEPAGE = "https://sites.google.com/view/multiscopic"
    DESCRIPTION = "Multiscopic vision dataset, test split: 5 views per scene with 8-bit disparity (GBDF protocol)."
    LICENSE = "Research use (see the dataset page)"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download the test set from https://sites.google.com/view/multiscopic so that "
        "<manual_dir>/test_b/<scene>/ holds view0.png..view4.png and disp0.png..disp4.png (8-bit disparity), "
        "as GBDF's utils/multiscopic.py reads it (TEST/, test/ and a SyntheData/ level are accepted too). "
        "Samples are named <scene>_view<k>.")

    def _samples(self, manual_dir: Path):
        common.log.warning("multiscopic: layout test_b/<scene>/{view,disp}<k>.png and 8-bit disparity come from "
                           "GBDF's evaluation code (utils/multiscopic.py), not from the release's own description")
        root = common.split_dir(manual_dir, *TEST_DIRS) or manual_dir
        root = common.split_dir(root, "SyntheData") or root
        samples = []
        for img in common.sorted_glob(root, "*/view[0-9].png"):
            k = img.stem[len("view"):]
            samples.append(common.Sample(f"{img.parent.name}_view{k}",
                                          {"rgb": img, "disp": img.parent / f"disp{k}.png"}))
        return {"test": samples}

    def _load(self, sample):
        rgb = common.read_rgb(sample.files["rgb"])
        disp = read_disparity(sample.files["disp"]).astype(np.float32)
        depth = np.where(disp != 0, disp.max() - disp, 0.0).astype(np.float32)
        return rgb, common.check_depth(depth, sample.files["disp"])
