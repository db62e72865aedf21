"""`middlebury2014`: the Middlebury 2014 full-resolution stereo scenes as RGB-D (zero-shot evaluation).

Source: https://vision.middlebury.edu/stereo/data/scenes2014/ (Scharstein et al., GCPR 2014). Each scene
with ground truth comes as `<Scene>-perfect/` and `<Scene>-imperfect/` (perfect / imperfect rectification),
each with `calib.txt`, `im0.png`, `im1.png` (plus `im1E.png`, `im1L.png`: other exposure / lighting of view
1), `disp0.pfm`, `disp1.pfm` (GT disparity of view 0 and view 1, PFM, rows bottom-up) and `disp{0,1}y.pfm`.
The file list and the 23 scenes with GT (10 "train" + 13 "additional"; the 15 test scenes have none) are as
in torchvision's `Middlebury2014Stereo` (torchvision/datasets/_stereo_matching.py), which downloads
`scenes2014/zip/<Scene>-{perfect,imperfect}.zip`.

GT depth (mm) = f_x * baseline / (disp + doffs), with `baseline` (mm), `doffs` and f_x = `cam0[0, 0]`
from `calib.txt`; an infinite disparity marks an unknown value and becomes depth 0 (invalid). This is the
2021 format, so the conversion is `middlebury2021.disparity_to_depth`. Only the `-perfect` folders are
built: their images are exactly rectified, so `disp0` is the horizontal disparity of `im0`. Views are
named `<Scene>_l` (im0/disp0) and `<Scene>_r` (im1/disp1), as for Middlebury 2021; all scenes with GT form
one split, `test`.

Configs as for `middlebury2021`: `float` (default, exact depth in mm) and `legacy_uint8` (the SDDR script's
uint8 cast baked in).
"""
from __future__ import annotations

from pathlib import Path

from sddr_jax_datasets import common
from sddr_jax_datasets.middlebury2021.middlebury2021_dataset_builder import (
    MiddleburyConfig, load_view)

# Scenes of the 2014 page with public GT (torchvision's "train" and "additional" lists).
SCENES_WITH_GT = (
    "Adirondack", "Jadeplant", "Motorcycle", "Piano", "Pipes", "Playroom", "Playtable", "Recycle",
    "Shelves", "Vintage",
    "Backpack", "Bicycle1", "Cable", "Classroom1", "Couch", "Flowers", "Mask", "Shopvac", "Sticks",
    "Storage", "Sword1", "Sword2", "Umbrella",
)
PERFECT_SUFFIX = "-perfect"
MAX_SEARCH_DEPTH = 3  # <manual>/[Middlebury2014/][train|additional/]<Scene>-perfect/calib.txt


class Builder(common.DepthBuilder):
    """Middlebury 2014 (23 scenes with GT x 2 views, about 3000x2000) from the manual download."""

    name = "middlebury2014"
    BUILDER_CONFIGS = [
        MiddleburyConfig(name="float", description="exact float GT depth (mm)", legacy_uint8=False),
        MiddleburyConfig(name="legacy_uint8", description="GT cast to uint8 as the SDDR script does",
                         legacy_uint8=True),
    ]
    DEFAULT_CONFIG_NAME = "float"
    HOMEPAGE = "https://vision.middlebury.edu/stereo/data/scenes2014/"
    DESCRIPTION = "Middlebury 2014 stereo scenes (perfect rectification); depth from PFM disparity."
    CITATION = ("Scharstein, Hirschmueller, Kitajima, Krathwohl, Nesic, Wang, Westling. High-resolution "
                "stereo datasets with subpixel-accurate ground truth. GCPR 2014.")
    LICENSE = "Research use; cite Scharstein et al. (see the dataset page)"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Download and unzip the 2014 scenes with ground truth (scenes2014/zip/<Scene>-perfect.zip) so that "
        "each is a folder <manual_dir>[/<any>[/<any>]]/<Scene>-perfect/ with im0.png, im1.png, disp0.pfm, "
        "disp1.pfm and calib.txt (-imperfect folders are ignored). Optional precomputed predictions: "
        "<manual_dir>/<predictor>/low_<res>/<Scene>_l.png and high_<res>/<Scene>_l.png.")

    def _samples(self, manual_dir: Path):
        common.log.warning(
            "%s: not confirmed from the official page (not reachable when this builder was written): the "
            "file list, 'inf = unknown disparity' and the 23 scenes with GT follow torchvision's "
            "Middlebury2014Stereo; whether recent refinement papers (PRO, PatchRefiner V2) use both views or "
            "only im0 is unconfirmed (this builder stores both)", self.name)
        calibs = sorted({p for k in range(1, MAX_SEARCH_DEPTH + 1)
                         for p in manual_dir.glob("/".join(["*"] * k) + "/calib.txt")
                         if p.parent.name.endswith(PERFECT_SUFFIX)})
        samples = []
        for calib in calibs:
            folder = calib.parent
            scene = folder.name[: -len(PERFECT_SUFFIX)]
            if scene not in SCENES_WITH_GT:
                common.log.warning("%s: %s is not one of the 23 scenes with GT listed for 2014; building it "
                                   "anyway", self.name, folder)
            for view, suffix in ((0, "l"), (1, "r")):
                samples.append(common.Sample(f"{scene}_{suffix}", {
                    "rgb": folder / f"im{view}.png", "disp": folder / f"disp{view}.pfm", "calib": calib}))
        return {"test": samples}

    def _load(self, sample):
        return load_view(sample.files, self.builder_config.legacy_uint8)
