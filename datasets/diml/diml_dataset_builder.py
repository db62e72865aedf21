"""`diml`: the DIML/CVL RGB-D official indoor test set (docs/method.md §9.3): colour + filled depth (uint16 mm -> m).

Sources:
- Release: https://dimlrgbd.github.io/ (Cho et al., arXiv:2110.11590). The page and its test-set readme could
  not be read through our search tool; the facts below come from loaders of the downloaded test set.
- Layout: ZoeDepth's `zoedepth/data/diml_indoor_test.py` (isl-org/ZoeDepth; copy read: hologerry/ZoeDepth):
  `<root>/{HR,LR}/<scene>/color/<stem>_c.png` with `<scene>/depth_filled/<stem>_depth_filled.png`, root
  `.../diml/indoor/test`; prs-eth/graph-super-resolution `scripts/create_diml_npy.py`: `DIML/test/HR/<scene>/
  color/*.png` -> `depth_filled/<stem without _c>_depth_filled.png`, fits in uint16.
- Units: ZoeDepth reads the depth PNG as uint16 and divides by 1000 ("mm to meters").

Not confirmed (warned at build time): the unit (mm) and that 0 marks missing depth (the filled maps should have
none; a 0 is stored as invalid); both come from third-party loaders, not from the official readme.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from sddr_jax_datasets import common

DEPTH_SCALE = 1000.0  # uint16 millimetres -> metres (ZoeDepth's diml_indoor_test.py)


@dataclasses.dataclass
class DimlConfig(tfds.core.BuilderConfig):
    quality: str = "HR"


class Builder(common.DepthBuilder):
    """DIML/CVL RGB-D test set (Cho et al. 2021) from the manual download."""

    name = "diml"
    BUILDER_CONFIGS = [
        DimlConfig(name="hr", description="high-resolution test images (HR/)", quality="HR"),
        DimlConfig(name="lr", description="low-resolution test images (LR/)", quality="LR"),
    ]
    DEFAULT_CONFIG_NAME = "hr"
    HOMEPAGE = "https://dimlrgbd.github.io/"
    DESCRIPTION = "DIML/CVL RGB-D dataset, official indoor test set; depth = depth_filled / 1000 (m)."
    LICENSE = "Research use only (DIML/CVL licence on the dataset page)"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "<manual_dir>[/indoor][/test]/<HR|LR>/<scene>/color/<stem>_c.png with "
        "<scene>/depth_filled/<stem>_depth_filled.png (uint16, mm).")

    def _samples(self, manual_dir: Path):
        common.log.warning("diml: depth unit (uint16 mm) and 0 = missing are taken from third-party loaders "
                           "(ZoeDepth diml_indoor_test.py), not from the official test-set readme")
        base = common.split_dir(manual_dir, "indoor", "Indoor") or manual_dir
        base = common.split_dir(base, "test", "Test") or base
        quality = self.builder_config.quality
        root = common.split_dir(base, quality, quality.lower()) or base
        samples = []
        for img in common.sorted_glob(root, "*/color/*_c.png"):
            stem = img.name[:-len("_c.png")]
            samples.append(common.Sample(stem, {
                "rgb": img, "depth": img.parents[1] / "depth_filled" / f"{stem}_depth_filled.png"}))
        return {"test": samples}

    def _load(self, sample):
        rgb = common.read_rgb(sample.files["rgb"])
        depth = common.read_png_map(sample.files["depth"], dtypes=(np.uint16,)).astype(np.float32) / DEPTH_SCALE
        return rgb, common.check_depth(depth, sample.files["depth"])
