"""`vdw`: Video Depth in the Wild (natural half of the SDDR mixture, docs/method.md §10).

KNOWN (cited):
- Project page github.com/RaymondWang987/VDW (`_includes/construction.html`, `_includes/download.html`): stereo
  movies, animations, documentaries and web videos split into sequences; disparity of the left and right views
  from the optical-flow model GMFlow with a forward-backward consistency check (valid masks for training);
  "the ground truth of each video is normalized by its minimum and maximum disparity ... discretized into 65,535
  intervals"; sky set to the minimum disparity. 14,203 training videos (2.24 M frames), a 90-video test set;
  released on application (CC BY-NC-SA 4.0); the public toolkits regenerate it from the stereo videos.
- Toolkit github.com/RaymondWang987/VDW_Dataset_Toolkits `README.md`: a processed sequence is
  `<NNNNNN>/{left,right}/` (frames), `{left,right}_gt/` (disparity), `{left,right}_mask/` (valid mask);
  `process/extract_frames.py` names frames `frame_%06d.png` from 0 at the full frame rate;
  `gmflow-main/evaluate_gray.py` writes `*_gt/frame_%06d.png` as uint16 = 65535 * (d - min) / (max - min) over
  the sequence, sky = 0, and the masks as 255 * occlusion (255 = inconsistent); `check/savemask.py` copies them.
- NVDS's evaluation `vdw_test_metric.py` (github.com/RaymondWang987/NVDS): gt = png / 65535, valid = (mask !=
  255) & (gt > 0).

OUR TREATMENT (assumed):
- Stored depth = 1 / (png / 65535) on the official valid pixels (mask != 255 and gt > 0), else 0 (sky is
  therefore invalid, as for the other sets with infinite depth). The stored disparity is affine in the true one
  with a per-video shift we cannot undo (the minimum disparity is not shipped), so 1/disparity is depth up to
  scale only where that minimum is near 0; SDDR's scale-and-shift invariant losses (docs/method.md §8.1) absorb
  the scale, not this shift. The build warns.
- Frames: every `frame_stride`-th frame of each sequence (default 30, about one per second at the videos' 24-30
  fps: consecutive frames are near duplicates), left view only (the view NVDS evaluates; `views="both"` adds the
  right view). All sequences go to `train`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from sddr_jax.errors import UserError
from sddr_jax_datasets import common

FRAME_STRIDE = 30
GT_SCALE = 65535.0
MASK_INVALID = 255


class Builder(common.DepthBuilder):
    """VDW (Wang et al., "Neural Video Depth Stabilizer", ICCV 2023) from the processed sequences."""

    name = "vdw"
    HOMEPAGE = "https://raymondwang987.github.io/VDW/"
    DESCRIPTION = ("VDW stereo-video frames with GMFlow disparity (uint16, per-video min-max normalised), stored as "
                   "relative depth 1 / disparity on the consistency-valid, non-sky pixels.")
    LICENSE = "CC BY-NC-SA 4.0 (academic research only; released on application)"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "<manual_dir>/<NNNNNN>/left/frame_<FFFFFF>.png with left_gt/frame_<FFFFFF>.png (uint16 disparity) and "
        "left_mask/frame_<FFFFFF>.png (255 = invalid); the same for right (VDW_Dataset_Toolkits output).")

    def __init__(self, *, frame_stride: int = FRAME_STRIDE, views: str = "left", **kwargs):
        if int(frame_stride) < 1:
            raise UserError(f"vdw: frame_stride must be >= 1, got {frame_stride}")
        if views not in ("left", "both"):
            raise UserError(f"vdw: views must be 'left' or 'both', got {views!r}")
        self.frame_stride = int(frame_stride)
        self.views = ("left",) if views == "left" else ("left", "right")
        super().__init__(**kwargs)

    def _samples(self, manual_dir: Path):
        common.log.warning("vdw: ground truth is per-video min-max normalised disparity (shift unknown); stored "
                           "depth = 65535 / value assumes the minimum disparity of each video is about 0")
        samples = []
        for seq in sorted(p for p in manual_dir.iterdir() if (p / "left").is_dir()):
            for view in self.views:
                frames = common.sorted_glob(seq / view, "frame_*.png")
                for frame in frames[::self.frame_stride]:
                    files = {"rgb": frame, "gt": seq / f"{view}_gt" / frame.name,
                             "mask": seq / f"{view}_mask" / frame.name}
                    samples.append(common.Sample(f"{seq.name}_{frame.stem[len('frame_'):]}_{view}", files))
        return {"train": samples}

    def _load(self, sample):
        files = sample.files
        rgb = common.read_rgb(files["rgb"])
        gt = common.read_png_map(files["gt"], dtypes=(np.uint16,))
        mask = common.read_png_map(files["mask"], dtypes=(np.uint8,))
        if mask.shape != gt.shape:
            raise UserError(f"{files['mask']}: shape {mask.shape} != disparity {gt.shape}")
        disp = np.where(mask != MASK_INVALID, gt.astype(np.float32) / GT_SCALE, 0.0)
        return rgb, common.check_depth(common.inverse(disp), files["gt"])
