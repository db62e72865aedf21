"""`eth3d`: the ETH3D high-resolution multi-view training scenes as RGB-D (zero-shot evaluation).

Sources: https://www.eth3d.net/datasets (per-scene archives `<scene>_dslr_jpg.7z`, `<scene>_dslr_depth.7z`),
https://www.eth3d.net/documentation (formats), and the official pipeline that wrote the GT,
github.com/ETH3D/dataset-pipeline `src/exe/ground_truth_creator.cc` (Schoeps et al., CVPR 2017).

Layout after extracting both archives of a scene into `<manual_dir>`:
  `<scene>/images/dslr_images/<image>.JPG`              the original (distorted) DSLR photos, 6048x4032
  `<scene>/ground_truth_depth/dslr_images/<image>.JPG`  GT depth: NOT a JPEG despite its name
`ground_truth_creator.cc` writes `ground_truth_depth/<image folder>/<image file name>` as the raw
float32 buffer of an (H, W) cv::Mat (`fwrite`, row-major, no header) at the resolution of the camera of
`dslr_calibration_jpg`, i.e. of the original distorted JPEG (not of the undistorted images); each value is
the camera-frame z of the nearest laser-scan point seen in at least two images (planar depth), and pixels
without one keep the initial value +infinity -> depth 0 (invalid). Only the 13 training scenes have public
GT; they form one split, `test`. Samples are named `<scene>_<image stem>`, e.g. `courtyard_DSC_0286`.
The JPEG is read without applying EXIF orientation, so pixels stay aligned with the raw depth buffer.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sddr_jax.errors import UserError
from sddr_jax_datasets import common

IMAGE_DIR = Path("images") / "dslr_images"
DEPTH_DIR = Path("ground_truth_depth") / "dslr_images"
DEPTH_DTYPE = np.dtype("<f4")  # fwrite of float on x86: little-endian (see the warning in _samples)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
TRAINING_SCENES = (
    "courtyard", "delivery_area", "electro", "facade", "kicker", "meadow", "office", "pipes", "playground",
    "relief", "relief_2", "terrace", "terrains",
)


def read_raw_depth(path, height: int, width: int) -> np.ndarray:
    """An ETH3D GT depth file (raw little-endian float32, row-major, no header) as float32 (H, W)."""
    path = common._require(path)
    need = height * width * DEPTH_DTYPE.itemsize
    size = path.stat().st_size
    if size != need:
        raise UserError(f"{path}: {size} bytes, expected {need} (raw float32 depth of the {width}x{height} "
                        "image, ETH3D ground_truth_depth format)")
    return np.fromfile(path, DEPTH_DTYPE).reshape(height, width).astype(np.float32)


class Builder(common.DepthBuilder):
    """ETH3D high-res multi-view training scenes (13 scenes, 6048x4032 DSLR photos), manual download."""

    name = "eth3d"
    HOMEPAGE = "https://www.eth3d.net/"
    DESCRIPTION = "ETH3D high-res multi-view DSLR images with laser-scan GT depth (metres, planar)."
    CITATION = ("Schoeps, Schoenberger, Galliani, Sattler, Schindler, Pollefeys, Geiger. A Multi-View "
                "Stereo Benchmark with High-Resolution Images and Multi-Camera Videos. CVPR 2017.")
    LICENSE = "See the terms on https://www.eth3d.net/ and cite Schoeps et al."
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download <scene>_dslr_jpg.7z and <scene>_dslr_depth.7z of the high-res multi-view training scenes "
        "from https://www.eth3d.net/datasets and extract both into <manual_dir> so that each scene has "
        "<manual_dir>/<scene>/images/dslr_images/*.JPG and "
        "<manual_dir>/<scene>/ground_truth_depth/dslr_images/*.JPG (raw float32 depth with the image's file "
        "name). Optional precomputed predictions: "
        "<manual_dir>/<predictor>/low_<res>/<scene>_<stem>.png and high_<res>/<scene>_<stem>.png.")

    def _samples(self, manual_dir: Path):
        common.log.warning(
            "%s: not confirmed from the ETH3D documentation (only the pipeline source was consulted): the "
            "byte order of the depth files (read as little-endian, what fwrite writes on x86) and their unit "
            "(read as metres, the laser-scan frame)", self.name)
        samples = []
        for depth_dir in sorted(manual_dir.glob(f"*/{DEPTH_DIR.as_posix()}")):
            scene_dir = depth_dir.parent.parent
            if scene_dir.name not in TRAINING_SCENES:
                common.log.warning("%s: %s is not one of the 13 training scenes with public GT; building it "
                                   "anyway", self.name, scene_dir)
            image_dir = scene_dir / IMAGE_DIR
            images = [p for p in common.sorted_glob(image_dir, "*") if p.suffix.lower() in IMAGE_SUFFIXES]
            if not images:
                raise UserError(f"{image_dir}: no images; {self.name} expects {IMAGE_DIR}/ (from "
                                f"{scene_dir.name}_dslr_jpg.7z) next to {DEPTH_DIR}/")
            for image in images:
                samples.append(common.Sample(f"{scene_dir.name}_{image.stem}",
                                             {"rgb": image, "depth": depth_dir / image.name}))
        return {"test": samples}

    def _load(self, sample):
        path = sample.files["rgb"]
        rgb = common.read_rgb(path)
        depth = read_raw_depth(sample.files["depth"], rgb.shape[0], rgb.shape[1])
        return rgb, common.check_depth(depth, sample.files["depth"], allow_inf=True)
