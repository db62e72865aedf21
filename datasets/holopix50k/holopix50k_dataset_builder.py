"""`holopix50k`: Holopix50k in-the-wild stereo pairs (natural half of the SDDR mixture, docs/method.md §10).

KNOWN (cited):
- github.com/LeiaInc/holopix50k `README.md` / `scripts/download_holopix50k.sh`: 49,368 image pairs from the
  Holopix mobile platform, downloaded with gsutil from gs://holopix50k-dataset/Holopix50k into
  `<DOWNLOAD_PATH>/Holopix50k/{train,val,test}`; `holopix50k_ids/holopix50k_{train,val,test}_ids.txt` list the
  pair ids per split. The dataset ships RGB pairs only: no disparity, depth or calibration.
- Third-party loaders (not the official repository): each split holds `left/` and `right/` folders with
  `<id>_left.jpg` and `<id>_right.jpg` (a Holopix50k layout-detection script replaces `_left.jpg` by
  `_right.jpg`; other loaders read `<split>/left` and `<split>/right`). The build warns that this comes from
  third parties.

OUR TREATMENT (assumed; SDDR publishes nothing about how its natural-scene GT was made):
- Disparity of the left view from OpenCV's StereoSGBM with a left-right consistency check
  (`sddr_jax_datasets.stereo`, parameters documented there), invalid = 0; stored depth = 1 / disparity
  (relative). SDDR's losses (`sddr_jax/losses.py`, docs/method.md §8.1) normalise prediction and target per
  image by median and mean absolute deviation, so they are invariant to the scale (and shift) of the depth;
  1/disparity is depth up to the unknown focal·baseline scale only if the pair is rectified with zero
  disparity at infinity. Pairs with a convergence shift (negative disparities) get those pixels invalid.
- Splits: `train`, `validation` (`val/`) and `test`, each as found; the training mixture reads `train`.
"""
from __future__ import annotations

from pathlib import Path

from sddr_jax.errors import UserError
from sddr_jax_datasets import common, stereo

SPLITS = (("train", "train"), ("validation", "val"), ("test", "test"))
IMAGE_EXTS = (".jpg", ".jpeg", ".png")


def _pairs(folder: Path) -> list[common.Sample]:
    samples = []
    for left in sorted(p for p in (folder / "left").iterdir() if p.suffix.lower() in IMAGE_EXTS):
        stem = left.stem[:-len("_left")] if left.stem.endswith("_left") else left.stem
        right = folder / "right" / f"{stem}_right{left.suffix}"
        if not right.exists() and (folder / "right" / left.name).exists():
            right = folder / "right" / left.name
        samples.append(common.Sample(stem, {"left": left, "right": right}))
    return samples


class Builder(common.DepthBuilder):
    """Holopix50k (Hua et al., CVPR Workshops 2020) from the manual download; depth from SGBM at build time."""

    name = "holopix50k"
    HOMEPAGE = "https://leiainc.github.io/holopix50k/"
    DESCRIPTION = ("Holopix50k in-the-wild stereo pairs; relative depth = 1 / disparity from OpenCV StereoSGBM "
                   "with a left-right check (computed at build time; 0 = invalid).")
    LICENSE = "See https://leiainc.github.com/holopix50k/LICENSE"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "<manual_dir>[/Holopix50k]/<train|val|test>/left/<id>_left.jpg with right/<id>_right.jpg "
        "(scripts/download_holopix50k.sh of github.com/LeiaInc/holopix50k).")

    def __init__(self, *, sgbm: stereo.SGBMParams | None = None, **kwargs):
        self.sgbm = sgbm or stereo.SGBMParams()
        super().__init__(**kwargs)

    def _samples(self, manual_dir: Path):
        root = common.split_dir(manual_dir, "Holopix50k", "holopix50k") or manual_dir
        common.log.warning("holopix50k: the file names <split>/left/<id>_left.jpg and right/<id>_right.jpg come "
                           "from third-party loaders; the official repository documents only <split>/ folders")
        common.log.warning("holopix50k: no depth is shipped; depth = 1 / disparity from OpenCV StereoSGBM with a "
                           "left-right check (our choice, %s); pairs are assumed rectified with zero disparity at "
                           "infinity (not documented)", self.sgbm)
        out = {}
        for split, folder in SPLITS:
            if (root / folder / "left").is_dir():
                out[split] = _pairs(root / folder)
        if not out:
            out["train"] = []
        return out

    def _load(self, sample):
        left = common.read_rgb(sample.files["left"])
        right = common.read_rgb(sample.files["right"])
        if left.shape != right.shape:
            raise UserError(f"{sample.files['right']}: {right.shape[1]}x{right.shape[0]} but the left view "
                            f"{sample.files['left']} is {left.shape[1]}x{left.shape[0]}; a pair must match")
        disp = stereo.sgbm_disparity(left, right, self.sgbm)
        return left, common.check_depth(common.inverse(disp), sample.files["left"])
