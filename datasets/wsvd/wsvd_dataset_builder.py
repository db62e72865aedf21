"""`wsvd`: Web Stereo Video Supervision (natural half of the SDDR mixture, docs/method.md §10).

KNOWN (cited):
- Paper (Wang, Lucey, Perazzi, Wang, 3DV 2019, arXiv:1904.11112): stereo videos scraped from YouTube; the
  authors compute disparity maps from them (FlowNet2.0) as supervision. The authors' code
  github.com/MightyChaos/wsvd_test is test code only; the dataset is distributed as YouTube ids and clip lists
  (sites.google.com/view/wsvd/home), not as frames or disparity.
- Third-party loader github.com/aycatakmaz/wsvd_dataset_loader (linked to the authors' site): videos are
  downloaded with youtube-dl as `wsvd/<youtube id>.mp4`; `wsvd_train_clip_frame_ids.pkl` and
  `wsvd_test_clip_frame_ids.pkl` are pickled lists of {'name': <id> (sometimes with a 5-character suffix),
  'clips': [{'frames': [frame indices]}, ...]}; each video frame is side-by-side stereo whose left half is the
  left view at half width (`wsvd_loader.py` takes the left half and resizes it x2 horizontally).

OUR TREATMENT (assumed):
- Each selected frame is split into halves, each resized x2 in width (bilinear, as that loader does), and the
  left view's disparity comes from OpenCV StereoSGBM with a left-right check (`sddr_jax_datasets.stereo`);
  stored depth = 1 / disparity (relative; SDDR's losses are scale-and-shift invariant, docs/method.md §8.1),
  0 = invalid. Videos whose halves are swapped (right-left) or that have a convergence shift give few or
  negative disparities; those pixels are invalid (the build warns; nothing detects a swap).
- Frames: every `frame_stride`-th frame index listed for each clip (default 30, about one per second), from
  `train` (and `test` when its list is present). Video decoding is OpenCV's (FFmpeg backend), sequential.
- The pickles are read with a restricted unpickler (builtins and numpy arrays only): they come from the web.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path

import cv2
import numpy as np

from sddr_jax.errors import UserError
from sddr_jax_datasets import common, stereo

FRAME_STRIDE = 30
CLIP_LISTS = (("train", "wsvd_train_clip_frame_ids.pkl"), ("test", "wsvd_test_clip_frame_ids.pkl"))
VIDEO_DIRS = ("wsvd", "videos", ".")
VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi")
_SAFE_GLOBALS = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
                 ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
                 ("numpy._core.multiarray", "scalar"), ("builtins", "range"), ("builtins", "set"),
                 ("builtins", "frozenset"), ("builtins", "slice")}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_clip_list(path: Path) -> list[tuple[str, list[list[int]]]]:
    """[(video name, [frame indices of each clip])] from a WSVD clip pickle."""
    try:
        data = _SafeUnpickler(io.BytesIO(Path(path).read_bytes())).load()
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except Exception as e:  # truncated, foreign or unsafe pickle
        raise UserError(f"{path}: not a readable WSVD clip list ({e})") from None
    out = []
    try:
        for entry in data:
            clips = [[int(f) for f in clip["frames"]] for clip in entry["clips"]]
            out.append((str(entry["name"]), clips))
    except (TypeError, KeyError, ValueError) as e:
        raise UserError(f"{path}: expected a list of {{'name': str, 'clips': [{{'frames': [int]}}]}} ({e!r})") from None
    return out


def _find_video(manual: Path, name: str) -> Path | None:
    for stem in (name, name[:-5]):  # the third-party loader also tries the name without a 5-character suffix
        for folder in VIDEO_DIRS:
            for ext in VIDEO_EXTS:
                p = manual / folder / f"{stem}{ext}"
                if stem and p.is_file():
                    return p
    return None


def split_side_by_side(frame_rgb: np.ndarray, path) -> tuple[np.ndarray, np.ndarray]:
    """Left and right views of a half-width side-by-side frame, each resized x2 in width (bilinear)."""
    h, w = frame_rgb.shape[:2]
    if w % 2:
        raise UserError(f"{path}: frame width {w} is odd; expected a side-by-side stereo frame")
    half = w // 2
    views = []
    for part in (frame_rgb[:, :half], frame_rgb[:, half:]):
        views.append(cv2.resize(np.ascontiguousarray(part), (2 * half, h), interpolation=cv2.INTER_LINEAR))
    return views[0], views[1]


class _VideoReader:
    """Sequential frame access (seeking is unreliable across codecs): reopens only to go backwards."""

    def __init__(self):
        self.path, self.cap, self.next_index = None, None, 0

    def frame(self, path: Path, index: int) -> np.ndarray:
        if self.path != path or index < self.next_index:
            self.close()
            self.cap = cv2.VideoCapture(str(path))
            if not self.cap.isOpened():
                self.cap = None
                raise UserError(f"{path}: not a readable video")
            self.path, self.next_index = path, 0
        while self.next_index < index:
            if not self.cap.grab():
                raise UserError(f"{path}: the video ends before frame {index} (has {self.next_index})")
            self.next_index += 1
        ok, bgr = self.cap.read()
        if not ok:
            raise UserError(f"{path}: the video ends before frame {index} (has {self.next_index})")
        self.next_index += 1
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def close(self):
        if self.cap is not None:
            self.cap.release()
        self.path, self.cap = None, None


class Builder(common.DepthBuilder):
    """WSVD (Wang et al., 3DV 2019) from downloaded videos and the clip lists; depth from SGBM at build time."""

    name = "wsvd"
    HOMEPAGE = "https://sites.google.com/view/wsvd/home"
    DESCRIPTION = ("WSVD web stereo videos (side-by-side); relative depth = 1 / disparity from OpenCV StereoSGBM "
                   "with a left-right check on sampled clip frames (0 = invalid).")
    LICENSE = "YouTube videos of their owners; research use (see the WSVD page)"
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "<manual_dir>/wsvd_train_clip_frame_ids.pkl (and wsvd_test_clip_frame_ids.pkl) with the videos as "
        "<manual_dir>/wsvd/<youtube id>.mp4 (youtube-dl, as github.com/aycatakmaz/wsvd_dataset_loader does).")

    def __init__(self, *, frame_stride: int = FRAME_STRIDE, sgbm: stereo.SGBMParams | None = None, **kwargs):
        if int(frame_stride) < 1:
            raise UserError(f"wsvd: frame_stride must be >= 1, got {frame_stride}")
        self.frame_stride = int(frame_stride)
        self.sgbm = sgbm or stereo.SGBMParams()
        self._reader = _VideoReader()
        super().__init__(**kwargs)

    def _samples(self, manual_dir: Path):
        common.log.warning("wsvd: the clip-list format, the video file names and the half-width side-by-side "
                           "frames (left half = left view) come from a third-party loader, not the authors")
        common.log.warning("wsvd: no disparity is shipped; depth = 1 / disparity from OpenCV StereoSGBM with a "
                           "left-right check (our choice, %s); swapped (right-left) videos are not detected",
                           self.sgbm)
        out = {}
        for split, list_name in CLIP_LISTS:
            path = manual_dir / list_name
            if split == "train" or path.is_file():
                out[split] = self._split_samples(manual_dir, path)
        return out

    def _split_samples(self, manual_dir: Path, clip_list: Path) -> list[common.Sample]:
        samples, missing = [], []
        for name, clips in read_clip_list(clip_list):
            video = _find_video(manual_dir, name)
            if video is None:
                missing.append(name)
                continue
            frames = sorted({f for clip in clips for f in clip[::self.frame_stride]})
            for f in frames:
                samples.append(common.Sample(f"{video.stem}_{f:06d}", {"video": video}))
        if missing:  # YouTube videos disappear; the loader's list of valid ids exists for that reason
            common.log.warning("wsvd: %d video(s) of %s not found under %s (e.g. %s); their clips are skipped",
                               len(missing), clip_list.name, manual_dir, missing[:3])
        return samples

    def _load(self, sample):
        video = sample.files["video"]
        index = int(sample.name.rsplit("_", 1)[1])
        left, right = split_side_by_side(self._reader.frame(video, index), video)
        disp = stereo.sgbm_disparity(left, right, self.sgbm)
        return left, common.check_depth(common.inverse(disp), f"{video} frame {index}")
