"""`irs`: IRS indoor robotics stereo (training set, docs/method.md §10): left views with EXR disparity.

Layout and formats, from the official repository github.com/HKBU-HPML/IRS:
- `README.md` ("Dataset"): the download unpacks to `IRSDataset/{Home,Office,Restaurant,Store}`; the training
  configs read the split lists `lists/IRSDataset_TRAIN.list` and `lists/IRSDataset_TEST.list`.
- `lists/irs_test.list`: one stereo pair per line, `<Cat>/<Scene>/l_<N>.png <Cat>/<Scene>/r_<N>.png
  <Cat>/<Scene>/d_<N>.exr <Cat>/<Scene>/n_<N>.exr` (left image, right image, disparity of the left view,
  surface normal), relative to `IRSDataset/`. There is one disparity per pair, so only left views are stored.
- `dataloader/IRSLoader.py`: `d_<N>.exr` is used as read (no vertical flip; only .pfm/.npy are flipped, though
  `disp2pcd.py` flips its example EXR); fx = fy = 480 px for the 960x540 images.
- `dataloader/scripts/EXRloader.py`: a one-channel EXR is read from channel `G` (a multi-channel one as R, G, B,
  which IRSLoader.py could not train on, so disparity files are one-channel). We read `G`, else the single
  channel there is; an R, G, B disparity file is an error naming it.
- `dataloader/scripts/disp2pcd.py`: depth = focus_length * baseline / disp with focus_length = 480 and
  baseline = 0.1 (metres).

We store metric depth = FOCAL_PX * BASELINE_M / disparity (metres) where the disparity is finite and > 0,
else 0 (invalid). The focal length and baseline come from the repository's code, not from its README or the
paper, so the build logs a warning; the losses are scale-shift invariant, so a wrong constant only rescales.

Split: `train` = the entries of `IRSDataset_TRAIN.list` when the manual directory has it (beside the data,
or in `lists/` / `list/`). Without it, every frame under `<Cat>/<Scene>/` is used except those of a test list
(`IRSDataset_TEST.list`, or `irs_test.list` copied from the repository) when one is present, with a warning.
"""
from __future__ import annotations

from pathlib import Path

from sddr_jax.errors import UserError
from sddr_jax_datasets import common

FOCAL_PX = 480.0  # IRSLoader.py fx (960x540 images)
BASELINE_M = 0.1  # disp2pcd.py baseline
TRAIN_LISTS = ("IRSDataset_TRAIN.list",)
TEST_LISTS = ("IRSDataset_TEST.list", "irs_test.list")


def _find_list(manual: Path, root: Path, names) -> Path | None:
    for folder in (manual, manual / "lists", manual / "list", root, root / "lists", root / "list"):
        for name in names:
            if (folder / name).is_file():
                return folder / name
    return None


def _read_list(path: Path) -> list[tuple[str, str]]:
    """(left image, disparity) paths of each line of an IRS list (columns: left right disp [normal])."""
    pairs = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        cols = line.split()
        if not cols:
            continue
        if len(cols) < 3:
            raise UserError(f"{path}:{lineno}: expected 'left right disparity [normal]', got {line!r}")
        pairs.append((cols[0], cols[2]))
    return pairs


def _sample(root: Path, left: str, disp: str) -> common.Sample:
    rel = Path(left)
    frame = rel.stem[2:] if rel.stem.startswith("l_") else rel.stem
    return common.Sample("_".join((*rel.parent.parts, frame)), {"rgb": root / rel, "disp": root / disp})


class Builder(common.DepthBuilder):
    """IRS (Wang et al., ICME 2021, arXiv:1912.09678) from the manual download."""

    name = "irs"
    HOMEPAGE = "https://github.com/HKBU-HPML/IRS"
    DESCRIPTION = "IRS synthetic indoor stereo (960x540): left views, depth = 480 px * 0.1 m / disparity (EXR)."
    LICENSE = "See the IRS repository and download page"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "<manual_dir>[/IRSDataset]/<Home|Office|Restaurant|Store>/<Scene>/l_<NNNNN>.png with d_<NNNNN>.exr "
        "(r_/n_ files are not used), and the split list IRSDataset_TRAIN.list beside them or in lists/.")

    def _samples(self, manual_dir: Path):
        root = common.split_dir(manual_dir, "IRSDataset") or manual_dir
        common.log.warning("irs: focal length %g px and baseline %g m come from the IRS repository's code "
                           "(IRSLoader.py, disp2pcd.py), not from its README or paper", FOCAL_PX, BASELINE_M)
        common.log.warning("irs: unconfirmed: disparity <= 0 or non-finite is taken as invalid (no invalid value "
                           "is documented), and d_*.exr is used unflipped as IRSLoader.py does (disp2pcd.py "
                           "flips its own example file)")
        train_list = _find_list(manual_dir, root, TRAIN_LISTS)
        if train_list is not None:
            return {"train": [_sample(root, left, disp) for left, disp in _read_list(train_list)]}
        lefts = [p.relative_to(root).as_posix() for p in common.sorted_glob(root, "*/*/l_*.png")]
        test_list = _find_list(manual_dir, root, TEST_LISTS)
        if test_list is not None:
            test = {left for left, _ in _read_list(test_list)}
            lefts = [p for p in lefts if p not in test]
            common.log.warning("irs: no %s in %s; using every frame not in the test list %s",
                               TRAIN_LISTS[0], manual_dir, test_list)
        else:
            common.log.warning("irs: no %s or test list in %s; using every frame (no official split applied)",
                               TRAIN_LISTS[0], manual_dir)
        samples = []
        for left in lefts:
            rel = Path(left)
            samples.append(_sample(root, left, (rel.parent / f"d_{rel.stem[2:]}.exr").as_posix()))
        return {"train": samples}

    def _load(self, sample):
        rgb = common.read_rgb(sample.files["rgb"])
        path = sample.files["disp"]
        try:
            disp = common.read_exr(path, channel="G")  # IRS's EXRloader reads G of a one-channel file
        except UserError as e:
            if "no channel 'G'" not in str(e):
                raise
            disp = common.read_exr(path)  # another single channel; R, G, B files are rejected there
        return rgb, common.check_depth(common.inverse(disp, FOCAL_PX * BASELINE_M), path)
