"""`diml`: the DIML/CVL RGB-D official test set (docs/method.md §9.3): colour + filled depth (uint16 PNG, mm -> m)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from sddr_jax_datasets import common


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
    DESCRIPTION = "DIML/CVL RGB-D dataset, official test set; depth = depth_filled / 1000 (m)."
    LICENSE = "Research use only (DIML/CVL licence on the dataset page)"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "<manual_dir>[/test]/<HR|LR>/<scene>/color/<stem>_c.png with "
        "<manual_dir>[/test]/<HR|LR>/<scene>/depth_filled/<stem>_depth_filled.png (uint16, mm).")

    def _samples(self, manual_dir: Path):
        base = common.split_dir(manual_dir, "test", "Test") or manual_dir
        root = common.split_dir(base, self.builder_config.quality, self.builder_config.quality.lower()) or base
        samples = []
        for img in common.sorted_glob(root, "*/color/*_c.png"):
            stem = img.name[:-len("_c.png")]
            samples.append(common.Sample(stem, {
                "rgb": img, "depth": img.parents[1] / "depth_filled" / f"{stem}_depth_filled.png"}))
        return {"test": samples}

    def _load(self, sample):
        rgb = common.read_rgb(sample.files["rgb"])
        depth = common.read_png_map(sample.files["depth"], dtypes=(np.uint16,)).astype(np.float32) / 1000.0
        return rgb, common.check_depth(depth, sample.files["depth"])
