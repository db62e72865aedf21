"""`mvs_synth`: MVS-Synth (training set, docs/method.md §10): GTA-V frames with EXR depth (inf = sky -> invalid).

Sources:
- Release: https://phuang17.github.io/DeepMVS/mvs-synth.html (Huang et al., CVPR 2018), `GTAV_1080`, `GTAV_720`
  or `GTAV_540`. The page itself could not be read through our search tool; the layout is that of loaders and a
  conversion report of the download: `GTAV_<res>/num_images.json`, `<NNNN>/images/<FFFF>.png`,
  `<NNNN>/depths/<FFFF>.exr` (32-bit float, channel `Y`), `<NNNN>/poses/<FFFF>.json`; 120 sequences x 100 frames
  (Hugging Face ZhengGuangze/MVS-Synth_vlbm report; loaders globbing `GTAV_1080`/`GTAV_540` the same way).

Depth is read from `depths/<frame>.exr` with the OpenEXR library (every compression it supports, scanline or
tiled; channel `Y` first); `.npy` or `.pfm` depth files with the same stem are accepted too (e.g. after a
conversion). inf -> 0 (invalid).

Not confirmed (warned at build time): that inf marks the sky (no value is documented), and the depth unit (GTA-V
world units, about metres); neither matters for the scale-shift-invariant losses beyond the invalid mask.
"""
from __future__ import annotations

from pathlib import Path

from sddr_jax.errors import UserError
from sddr_jax_datasets import common

_READERS = {".exr": common.read_exr, ".npy": common.read_npy, ".pfm": common.read_pfm}


class Builder(common.DepthBuilder):
    """MVS-Synth (Huang et al., CVPR 2018, DeepMVS) from the manual download."""

    name = "mvs_synth"
    HOMEPAGE = "https://phuang17.github.io/DeepMVS/mvs-synth.html"
    DESCRIPTION = "MVS-Synth: 120 GTA-V sequences x 100 frames, RGB + depth (EXR)."
    LICENSE = "Research/non-commercial use only (GTA-V content; see the dataset page)"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "<manual_dir>[/GTAV_<res>]/<NNNN>/images/<FFFF>.png with depths/<FFFF>.exr (poses/ are not used).")

    def _samples(self, manual_dir: Path):
        common.log.warning("mvs_synth: inf depth is taken as sky (invalid) and the depth unit as GTA-V's (about "
                           "metres); the dataset page was not readable to confirm either")
        imgs = sorted(set(manual_dir.glob("*/images/*.png")) | set(manual_dir.glob("*/*/images/*.png")))
        samples = []
        for img in imgs:
            seq = img.parents[1]
            prefix = f"{seq.parent.name}_" if seq.parent != manual_dir else ""
            depth = next((seq / "depths" / f"{img.stem}{ext}" for ext in _READERS
                          if (seq / "depths" / f"{img.stem}{ext}").exists()), seq / "depths" / f"{img.stem}.exr")
            samples.append(common.Sample(f"{prefix}{seq.name}_{img.stem}", {"rgb": img, "depth": depth}))
        return {"train": samples}

    def _load(self, sample):
        rgb = common.read_rgb(sample.files["rgb"])
        path = sample.files["depth"]
        reader = _READERS.get(path.suffix)
        if reader is None:
            raise UserError(f"{path}: unsupported depth format (expected .exr, .npy or .pfm)")
        depth = reader(path)
        if depth.ndim != 2:
            raise UserError(f"{path}: expected a single-channel depth map, got shape {depth.shape}")
        return rgb, common.check_depth(depth, path, allow_inf=True)
