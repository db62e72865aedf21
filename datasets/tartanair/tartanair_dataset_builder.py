"""`tartanair`: TartanAir (training set, docs/method.md §10): left/right images with float32 depth `.npy` (metres)."""
from __future__ import annotations

from pathlib import Path

from sddr_jax_datasets import common


class Builder(common.DepthBuilder):
    """TartanAir (Wang et al., IROS 2020) from the manual download."""

    name = "tartanair"
    HOMEPAGE = "https://theairlab.org/tartanair-dataset/"
    DESCRIPTION = "TartanAir simulated environments: RGB and metric depth (640x480)."
    LICENSE = "CC BY 4.0"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "<manual_dir>/<env>/<Easy|Hard>/<P000>/image_left/<NNNNNN>_left.png with "
        "depth_left/<NNNNNN>_left_depth.npy (and the same for _right).")

    def _samples(self, manual_dir: Path):
        samples = []
        for side in ("left", "right"):
            for img in common.sorted_glob(manual_dir, f"*/*/P*/image_{side}/*_{side}.png"):
                seq, level, env = img.parents[1].name, img.parents[2].name, img.parents[3].name
                samples.append(common.Sample(f"{env}_{level}_{seq}_{img.stem}", {
                    "rgb": img, "depth": img.parents[1] / f"depth_{side}" / f"{img.stem}_depth.npy"}))
        return {"train": sorted(samples, key=lambda s: s.name)}

    def _load(self, sample):
        rgb = common.read_rgb(sample.files["rgb"])
        return rgb, common.check_depth(common.read_npy(sample.files["depth"]), sample.files["depth"])
