"""`diode`: the DIODE validation split (771 images, indoor + outdoor, docs/method.md §9.3).

Sources (github.com/diode-dataset/diode-devkit):
- `README.md`: `val.tar.gz` (2.6 GB); RGB `*.png` (1024x768), depth `*_depth.npy` at the same resolution,
  validity mask `*_depth_mask.npy` "where 1 denotes valid sensor return and 0 otherwise".
- `diode.py`: paths `<data_root>/<split>/<indoors|outdoor>/scene_<x>/scan_<y>/<stem>` + `.png`, `_depth.npy`
  (squeezed from (H, W, 1)), `_depth_mask.npy`; the split folder is `val`.

Depth = `<stem>_depth.npy` where the mask is 1, else 0 (invalid).

Not confirmed (warned at build time): the unit (metres: the DIODE paper, arXiv:1908.00463; the devkit text does
not state it; `diode.py` plots 0.5..300, consistent with metres).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from sddr_jax.errors import UserError
from sddr_jax_datasets import common


@dataclasses.dataclass
class DiodeConfig(tfds.core.BuilderConfig):
    scenes: tuple[str, ...] = ("indoors", "outdoor")


class Builder(common.DepthBuilder):
    """DIODE (Vasiljevic et al. 2019) validation split from the manual download."""

    name = "diode"
    BUILDER_CONFIGS = [
        DiodeConfig(name="all", description="indoor and outdoor validation images", scenes=("indoors", "outdoor")),
        DiodeConfig(name="indoors", description="indoor validation images", scenes=("indoors",)),
        DiodeConfig(name="outdoor", description="outdoor validation images", scenes=("outdoor",)),
    ]
    DEFAULT_CONFIG_NAME = "all"
    HOMEPAGE = "https://diode-dataset.org/"
    DESCRIPTION = "DIODE dense indoor/outdoor depth, validation split (1024x768)."
    LICENSE = "MIT (DIODE)"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Extract val.tar.gz: <manual_dir>/val/<indoors|outdoor>/scene_*/scan_*/<stem>.png with "
        "<stem>_depth.npy and <stem>_depth_mask.npy.")

    def _samples(self, manual_dir: Path):
        common.log.warning("diode: depth unit taken as metres (DIODE paper); the devkit does not state it")
        root = common.split_dir(manual_dir, "val") or manual_dir
        samples = []
        for kind in self.builder_config.scenes:
            for img in common.sorted_glob(root / kind, "scene_*/scan_*/*.png"):
                samples.append(common.Sample(img.stem, {
                    "rgb": img, "depth": img.with_name(f"{img.stem}_depth.npy"),
                    "mask": img.with_name(f"{img.stem}_depth_mask.npy")}))
        return {"validation": samples}

    def _load(self, sample):
        rgb = common.read_rgb(sample.files["rgb"])
        depth = common.read_npy(sample.files["depth"])
        mask = common.read_npy(sample.files["mask"])
        if mask.shape != depth.shape:
            raise UserError(f"{sample.files['mask']}: mask shape {mask.shape} != depth shape {depth.shape} "
                            f"of {sample.files['depth']}")
        depth = common.check_depth(depth, sample.files["depth"])
        return rgb, np.where(mask > 0, depth, 0.0).astype(np.float32)
