"""`booster`: the Booster stereo dataset (non-Lambertian, transparent and mirror surfaces) as RGB-D.

Dataset: P. Zama Ramirez, F. Tosi, M. Poggi, S. Salti, S. Mattoccia, L. Di Stefano, "Open Challenges in Deep
Stereo: the Booster Dataset", CVPR 2022 (https://cvlab-unibo.github.io/booster-web/).

Layout and formats, as read by the authors' own code (CVLAB-Unibo/Depth4ToM-code: `utils.py`,
`evaluate_mono.py`, `datasets/booster/train_stereo.txt`) and shown on the dataset page (CVLAB-Unibo/booster-web,
`_includes/home.html`), per scene of the balanced set:

    <Scene>/camera_00/im<k>.png   left images, one per lighting condition k (im0, im1, ...)
    <Scene>/disp_00.npy           float GT disparity of the left view (pixels); 0 = no GT
    <Scene>/calib_00-02.xml       OpenCV FileStorage: `proj_matL` (f_x = [0, 0]), `baselineLR` (millimetres)
    <Scene>/mask_00.png           occlusion mask of the left view (not used: depth evaluation keeps every GT pixel)
    <Scene>/mask_cat.png          material classes; the authors' evaluation takes 2, 3 as ToM (transparent or
                                  mirror) and 0, 1 as other materials (not stored: the record schema has no mask)

Depth (metres) = f_x * baselineLR / 1000 / disparity where disparity > 0, else 0 (invalid), as in
`evaluate_mono.py` (its evaluation additionally clips GT to 1 mm .. 10 m; we keep every positive value).
Samples are named `<Scene>_im<k>`. GT is public for the training split only (the test split is an online
benchmark), so the split stored here is `train` (config `all`: every lighting condition; `im0`: one image per
scene).
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import cv2
import numpy as np
import tensorflow_datasets as tfds

from sddr_jax.errors import UserError
from sddr_jax_datasets import common

BASELINE_UNIT_TO_M = 1e-3  # `baselineLR` is in millimetres (Depth4ToM-code utils.read_calib_xml: factor 0.001)
_IMAGE = re.compile(r"^im(\d+)\.png$")


@dataclasses.dataclass
class BoosterConfig(tfds.core.BuilderConfig):
    all_lights: bool = True


def read_calib(path) -> tuple[float, float]:
    """(f_x in pixels, baseline in metres) from a Booster `calib_00-02.xml` (OpenCV FileStorage)."""
    path = common._require(path)
    try:
        fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    except cv2.error as e:
        raise UserError(f"{path}: not a readable OpenCV calibration file ({e})") from None
    try:
        if not fs.isOpened():
            raise UserError(f"{path}: not a readable OpenCV calibration file")
        proj = fs.getNode("proj_matL").mat()
        baseline_node = fs.getNode("baselineLR")
        baseline = None if baseline_node.empty() else float(baseline_node.real())
    finally:
        fs.release()
    if proj is None or proj.ndim != 2 or proj.shape[0] < 3 or proj.shape[1] < 3:
        raise UserError(f"{path}: expected a 3x3 or 3x4 matrix `proj_matL`, got "
                        f"{None if proj is None else proj.shape}")
    fx = float(proj[0, 0])
    if baseline is None or not (np.isfinite(fx) and fx > 0 and np.isfinite(baseline) and baseline > 0):
        raise UserError(f"{path}: expected positive `proj_matL`[0, 0] and `baselineLR`, got f_x={fx}, "
                        f"baselineLR={baseline}")
    return fx, baseline * BASELINE_UNIT_TO_M


def disparity_to_depth(disp: np.ndarray, fx: float, baseline_m: float) -> np.ndarray:
    """Depth (m) = f_x * B / d where d > 0 (finite), else 0 (invalid)."""
    return common.inverse(disp, fx * baseline_m)


class Builder(common.DepthBuilder):
    """Booster balanced training set (GT disparity + calibration) from the manual download."""

    name = "booster"
    BUILDER_CONFIGS = [
        BoosterConfig(name="all", description="every lighting condition im<k> of each scene", all_lights=True),
        BoosterConfig(name="im0", description="one image (im0) per scene", all_lights=False),
    ]
    DEFAULT_CONFIG_NAME = "all"
    HOMEPAGE = "https://cvlab-unibo.github.io/booster-web/"
    DESCRIPTION = ("Booster (CVPR 2022) balanced training scenes: transparent and specular surfaces; depth from "
                   "disp_00.npy and calib_00-02.xml.")
    CITATION = ("@inproceedings{ramirez2022booster, title={Open Challenges in Deep Stereo: the Booster Dataset}, "
                "author={Zama Ramirez, Pierluigi and Tosi, Fabio and Poggi, Matteo and Salti, Samuele and "
                "Mattoccia, Stefano and Di Stefano, Luigi}, booktitle={CVPR}, year={2022}}")
    LICENSE = "See the dataset page (research use; cite Ramirez et al. 2022)"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download and unzip the Booster training set so that each scene is a folder "
        "<manual_dir>[/train][/balanced]/<Scene>/ with camera_00/im<k>.png, disp_00.npy and calib_00-02.xml. "
        "Optional precomputed predictions: <manual_dir>/<predictor>/low_<res>/<Scene>_im<k>.png and "
        "high_<res>/<Scene>_im<k>.png.")

    def _samples(self, manual_dir: Path):
        patterns = ("*/disp_00.npy", "*/*/disp_00.npy", "*/*/*/disp_00.npy")  # <Scene>, balanced/, train/balanced/
        disps = sorted({p for pattern in patterns for p in manual_dir.glob(pattern)})
        disps = [p for p in disps if "unbalanced" not in p.relative_to(manual_dir).parts]
        if any(p.is_dir() for p in (*manual_dir.glob("unbalanced"), *manual_dir.glob("*/unbalanced"))):
            common.log.warning("booster: skipping the unbalanced/ scenes (their calibration file names are not "
                               "confirmed); only balanced/ scenes are built")
        samples = []
        for disp in disps:
            scene = disp.parent
            images = sorted((p for p in (scene / "camera_00").glob("im*.png") if _IMAGE.match(p.name)),
                            key=lambda p: int(_IMAGE.match(p.name).group(1)))
            if not images:
                raise UserError(f"{scene / 'camera_00'}: no left images im<k>.png for the GT {disp}")
            if not self.builder_config.all_lights:
                images = images[:1]
            for image in images:
                samples.append(common.Sample(f"{scene.name}_{image.stem}", {
                    "rgb": image, "disp": disp, "calib": scene / "calib_00-02.xml"}))
        return {"train": samples}

    def _load(self, sample):
        rgb = common.read_rgb(sample.files["rgb"])
        disp = common.read_npy(sample.files["disp"])
        if np.isnan(disp).any():
            raise UserError(f"{sample.files['disp']}: disparity has {int(np.isnan(disp).sum())} NaN values")
        fx, baseline = read_calib(sample.files["calib"])
        depth = common.check_depth(disparity_to_depth(disp, fx, baseline), sample.files["disp"])
        return rgb, depth
