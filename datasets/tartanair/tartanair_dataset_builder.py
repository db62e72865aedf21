"""`tartanair`: TartanAir (training set, docs/method.md §10): left/right images with float depth `.npy` (metres).

Sources (github.com/castacks/tartanair_tools):
- `README.md` "Data directory structure": `ROOT/<env>/<Easy|Hard>/P<NNN>/image_left/<NNNNNN>_left.png`,
  `depth_left/<NNNNNN>_left_depth.npy`, and the same for `right`.
- `data_type.md` (copy read: princeton-vl/DROID-SLAM `thirdparty/tartanair_tools/data_type.md`): 640x480 RGB PNG;
  depth in metres as an NPY array; the sky has a large finite depth (e.g. 10000), not inf.
- The per-environment zips unpack with the environment folder twice, `<env>/<env>/<Easy|Hard>/P<NNN>/`
  (DROID-SLAM's TartanAir test split lists `abandonedfactory/abandonedfactory/Easy/P011`); both layouts are read.

Stored depth = the `.npy` as is (metres; sky keeps its large value, so it is valid, far depth). Samples
`<env>_<Easy|Hard>_P<NNN>_<NNNNNN>_<side>`. Split `train` (every trajectory found).
"""
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
            imgs = common.sorted_glob(manual_dir, f"*/*/P*/image_{side}/*_{side}.png") + common.sorted_glob(
                manual_dir, f"*/*/*/P*/image_{side}/*_{side}.png")  # <env>/[<env>/]<level>/P<NNN>
            for img in imgs:
                seq, level, env = img.parents[1].name, img.parents[2].name, img.parents[3].name
                samples.append(common.Sample(f"{env}_{level}_{seq}_{img.stem}", {
                    "rgb": img, "depth": img.parents[1] / f"depth_{side}" / f"{img.stem}_depth.npy"}))
        return {"train": sorted(samples, key=lambda s: s.name)}

    def _load(self, sample):
        rgb = common.read_rgb(sample.files["rgb"])
        return rgb, common.check_depth(common.read_npy(sample.files["depth"]), sample.files["depth"])
