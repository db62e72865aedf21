"""Shared pieces of the sddr-jax TFDS builders (docs/method.md §9.2, §9.3, §10): features, file readers, the base builder.

Every builder writes ArrayRecord files with the same features, chosen so that neither writing nor reading
needs TensorFlow (tfds' `Image` feature does):

| feature | tfds feature | content |
|---|---|---|
| `name` | `Text` | the sample's name, e.g. `artroom1_l`; matches the file stem of precomputed predictions |
| `rgb` | `Tensor((), object)` | PNG bytes, uint8 RGB |
| `depth` | `Tensor((None, None), float32, zlib)` | ground truth, larger = farther; 0 marks invalid pixels |
| `low`, `high` | `Tensor((), object)` | PNG bytes of the precomputed base predictions, or b'' when absent |

Depth is stored as float32 (zlib-compressed inside the record), not as a 16-bit PNG: it is exact (the
Middlebury and Hypersim protocols need the float values) and decodes with numpy alone.
"""
from __future__ import annotations

import abc
import dataclasses
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import tensorflow_datasets as tfds

from sddr_jax import io
from sddr_jax.errors import UserError

log = logging.getLogger("sddr_jax.datasets")

PNG_COMPRESSION = 3  # zlib level for stored PNGs: close to the best size at a fraction of the time of 9


def features() -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        "name": tfds.features.Text(),
        "rgb": tfds.features.Tensor(shape=(), dtype=np.object_),
        "depth": tfds.features.Tensor(shape=(None, None), dtype=np.float32, encoding="zlib"),
        "low": tfds.features.Tensor(shape=(), dtype=np.object_),
        "high": tfds.features.Tensor(shape=(), dtype=np.object_),
    })


# ----------------------------------------------------------------------------------------------------------
# File readers. Each raises UserError naming the file and what was expected.


def _require(path: Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    return path


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of a uint8 RGB (H, W, 3) or uint8/uint16 single-channel (H, W) image."""
    arr = np.asarray(image)
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:
        raise UserError(f"could not encode an image of shape {arr.shape} and dtype {arr.dtype} as PNG")
    return buf.tobytes()


def decode_image(data: bytes, what: str, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    arr = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if arr is None:
        raise UserError(f"{what}: not a decodable image")
    return arr


def read_rgb(path) -> np.ndarray:
    """uint8 RGB (H, W, 3) from a PNG/JPEG file (grey images are expanded, alpha dropped)."""
    path = _require(path)
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise UserError(f"{path}: not a readable image (expected an 8-bit RGB PNG or JPEG)")
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    if arr.dtype != np.uint8:
        raise UserError(f"{path}: expected an 8-bit image, got dtype {arr.dtype}")
    if arr.ndim == 2:
        return np.repeat(arr[..., None], 3, axis=2)
    if arr.shape[2] == 4:
        arr = arr[..., :3]
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def read_png_map(path, dtypes=(np.uint8, np.uint16)) -> np.ndarray:
    """A single-channel PNG map (H, W) in one of `dtypes` (a 3-channel grey PNG is accepted if R=G=B)."""
    path = _require(path)
    arr = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise UserError(f"{path}: not a readable PNG")
    if arr.ndim == 3:
        if arr.shape[2] >= 3 and np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2]):
            arr = arr[..., 0]
        else:
            raise UserError(f"{path}: expected a single-channel map, got shape {arr.shape}")
    if arr.dtype not in tuple(np.dtype(d) for d in dtypes):
        raise UserError(f"{path}: expected dtype in {[np.dtype(d).name for d in dtypes]}, got {arr.dtype}")
    return arr


def read_npy(path) -> np.ndarray:
    path = _require(path)
    try:
        arr = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise UserError(f"{path}: not a readable .npy array ({e})") from None
    arr = np.asarray(arr)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise UserError(f"{path}: expected an (H, W) or (H, W, 1) array, got shape {arr.shape}")
    return arr.astype(np.float32)


def read_pfm(path, return_scale: bool = False):
    """A PFM file as float32 (H, W) or (H, W, 3) (`sddr_jax.io.read_pfm` with either channel count)."""
    return io.read_pfm(_require(path), channels=None, return_scale=return_scale)


def read_middlebury_calib(path) -> dict[str, Any]:
    """calib.txt of the Middlebury scenes: cam0/cam1 as 3x3 matrices, the rest as floats."""
    return io.read_middlebury_calib(_require(path), parse_values=True)


# --- OpenEXR (MVS-Synth depth) through the OpenEXR library ---------------------------------------------------
# OpenCV's pip wheels are built without OpenEXR; the `OpenEXR` package (the Academy Software Foundation's
# bindings) reads every compression it supports, scanline and tiled.

EXR_COMPRESSIONS = ("NO", "RLE", "ZIPS", "ZIP", "PIZ", "PXR24", "B44", "B44A", "DWAA", "DWAB")


def read_exr(path, channel: str | None = None) -> np.ndarray:
    """The named channel (default: the first of Y, Z, R, D present, else the first) of an OpenEXR file
    (single-part, scanline or tiled, any compression the library supports) as float32 (H, W)."""
    import OpenEXR

    path = _require(path)
    try:
        with OpenEXR.File(str(path)) as f:
            if len(f.parts) != 1:
                raise UserError(f"{path}: a multi-part EXR ({len(f.parts)} parts); expected one image")
            channels = f.channels()
            names = list(channels)
            want = channel if channel is not None else next((c for c in ("Y", "Z", "R", "D") if c in names),
                                                            names[0] if names else None)
            if want not in channels:
                raise UserError(f"{path}: no channel {want!r} (channels: {names})")
            pixels = np.asarray(channels[want].pixels)
    except UserError:
        raise
    except Exception as e:  # OpenEXR raises its own errors for truncated / foreign files
        raise UserError(f"{path}: not a readable OpenEXR file ({e})") from None
    if pixels.ndim != 2:
        raise UserError(f"{path}: channel {want!r} has shape {pixels.shape}, expected (H, W)")
    return pixels.astype(np.float32)


def write_exr(path, array: np.ndarray, channel: str = "Y", compression: str = "ZIP") -> None:
    """Write a float32 (H, W) scanline EXR with one channel (`compression` one of `EXR_COMPRESSIONS`)."""
    import OpenEXR

    if compression not in EXR_COMPRESSIONS:
        raise UserError(f"write_exr: compression must be one of {EXR_COMPRESSIONS}, got {compression!r}")
    arr = np.ascontiguousarray(np.asarray(array, np.float32))
    header = {"compression": getattr(OpenEXR, f"{compression}_COMPRESSION"), "type": OpenEXR.scanlineimage}
    with OpenEXR.File(header, {channel: arr}) as f:
        f.write(str(path))


# ----------------------------------------------------------------------------------------------------------
# Validation and precomputed predictions.


def check_depth(depth: np.ndarray, path, *, allow_nan: bool = False, allow_inf: bool = False) -> np.ndarray:
    """Float32 (H, W) depth with invalid pixels as 0.

    NaN and inf are errors unless the format uses them to mark missing values (`allow_nan`, `allow_inf`),
    in which case they become 0 (invalid). Negative values are errors; at least one pixel must be valid.
    """
    d = np.asarray(depth, np.float32)
    if d.ndim != 2:
        raise UserError(f"{path}: expected an (H, W) depth map, got shape {d.shape}")
    nan, inf = np.isnan(d), np.isinf(d)
    if nan.any() and not allow_nan:
        raise UserError(f"{path}: depth has {int(nan.sum())} NaN values (this format should have none)")
    if inf.any() and not allow_inf:
        raise UserError(f"{path}: depth has {int(inf.sum())} infinite values (this format should have none)")
    d = np.where(nan | inf, 0.0, d).astype(np.float32)
    if (d < 0).any():
        raise UserError(f"{path}: depth has {int((d < 0).sum())} negative values")
    if not (d > 0).any():
        raise UserError(f"{path}: depth has no valid (> 0) pixel")
    return d


def inverse(disparity: np.ndarray, numerator: float = 1.0) -> np.ndarray:
    """numerator / disparity where disparity > 0 (finite), else 0 (invalid): relative depth with the default 1,
    metric depth with numerator = f_x * baseline."""
    disp = np.asarray(disparity, np.float32)
    ok = np.isfinite(disp) & (disp > 0)
    return np.where(ok, np.float32(numerator) / np.where(ok, disp, 1.0), 0.0).astype(np.float32)


_PRED_DIR = re.compile(r"^(low|high)_(\d+)$")


@dataclasses.dataclass(frozen=True)
class PredictionDirs:
    """The official demo layout: `<root>/<predictor>/low_<res>/<name>.png` and `high_<res>/<name>.png`."""

    predictor: str
    low: Path
    high: Path


def find_prediction_dirs(manual_dir, predictor: str | None = None, max_depth: int = 3) -> PredictionDirs | None:
    """Finds one `low_<res>/` + `high_<res>/` pair below `manual_dir` (None when there is none).

    With several predictors (parent folders holding such a pair), `predictor` names the one to use.
    """
    root = Path(manual_dir)
    pairs: dict[Path, dict[str, list[Path]]] = {}
    for dirpath, dirnames, _ in os.walk(root):
        depth = len(Path(dirpath).relative_to(root).parts)
        if depth >= max_depth:
            dirnames[:] = []
        for d in dirnames:
            m = _PRED_DIR.match(d)
            if m:
                pairs.setdefault(Path(dirpath), {}).setdefault(m.group(1), []).append(Path(dirpath) / d)
    found = {p: v for p, v in pairs.items() if "low" in v and "high" in v}
    if not found:
        return None
    if predictor is not None:
        found = {p: v for p, v in found.items() if p.name == predictor}
        if not found:
            raise UserError(f"{root}: no low_<res>/ and high_<res>/ folders under a folder named {predictor!r}")
    if len(found) > 1:
        names = sorted(str(p.relative_to(root)) for p in found)
        raise UserError(f"{root}: several precomputed predictions {names}; choose one with --predictor NAME")
    parent, v = next(iter(found.items()))
    for kind in ("low", "high"):
        if len(v[kind]) > 1:
            raise UserError(f"{parent}: several {kind}_<res>/ folders {sorted(p.name for p in v[kind])}; keep one")
    return PredictionDirs(parent.name, v["low"][0], v["high"][0])


def read_prediction_png(path) -> bytes:
    """The PNG bytes of a precomputed prediction, checked to be a single-channel 8/16-bit map."""
    read_png_map(path)
    return Path(path).read_bytes()


# ----------------------------------------------------------------------------------------------------------
# The base builder.


@dataclasses.dataclass(frozen=True)
class Sample:
    """One example to build: its name and the files its loader reads."""

    name: str
    files: dict[str, Path]


class DepthBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of the sddr-jax builders: lists samples from the manual directory, loads, checks and encodes them.

    Subclasses define `_samples(manual_dir) -> {split: [Sample]}` and `_load(sample) -> (rgb, depth)` with
    rgb uint8 (H, W, 3) and depth float32 (H, W), larger = farther, 0 = invalid.

    Builder kwargs (also `sddr-jax datasets build` flags):
      skip_corrupt: skip samples that fail to load (each is logged with its file; the count is reported in
        `self.skipped` and printed); by default the first failure stops the build with an error naming the file.
      predictor: which `<predictor>/low_<res>, high_<res>` folders to store when several are present.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    HOMEPAGE = ""
    DESCRIPTION = ""
    CITATION = ""
    LICENSE = ""

    def __init__(self, *, skip_corrupt: bool = False, predictor: str | None = None, **kwargs):
        self.skip_corrupt = bool(skip_corrupt)
        self.predictor = predictor
        self.skipped: dict[str, list[str]] = {}
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=self.DESCRIPTION + (f"\n\nLicence: {self.LICENSE}" if self.LICENSE else ""),
            features=features(),
            homepage=self.HOMEPAGE or None,
            citation=self.CITATION or None,
        )

    # --- to be defined by each dataset ---
    @abc.abstractmethod
    def _samples(self, manual_dir: Path) -> dict[str, list[Sample]]:
        ...

    @abc.abstractmethod
    def _load(self, sample: Sample) -> tuple[np.ndarray, np.ndarray]:
        ...

    def _allow_predictions(self) -> bool:
        return True

    # --- shared machinery ---
    def _split_generators(self, dl_manager):
        manual = Path(dl_manager.manual_dir)
        if not manual.is_dir():
            raise UserError(f"manual_dir {manual}: not a directory. {self.name}: {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        splits = self._samples(manual)
        for split, samples in splits.items():
            if not samples:
                raise UserError(f"manual_dir {manual}: found no {self.name} samples for split '{split}'. "
                                f"Expected layout: {self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
            names = [s.name for s in samples]
            if len(set(names)) != len(names):
                dup = sorted({n for n in names if names.count(n) > 1})[:5]
                raise UserError(f"manual_dir {manual}: duplicate sample names {dup} in split '{split}'")
        preds = find_prediction_dirs(manual, self.predictor) if self._allow_predictions() else None
        return {split: self._generate_examples(split, samples, preds) for split, samples in splits.items()}

    def _generate_examples(self, split: str, samples: list[Sample], preds: PredictionDirs | None):
        skipped = self.skipped.setdefault(split, [])
        for sample in samples:
            try:
                example = self._example(sample, preds)
            except (UserError, OSError, ValueError, KeyError) as e:
                if not self.skip_corrupt:
                    raise UserError(f"{self.name} sample {sample.name}: {e} "
                                    "(pass --skip_corrupt to skip corrupt samples and report their count)") from None
                log.warning("%s: skipping corrupt sample %s: %s", self.name, sample.name, e)
                print(f"{self.name}: skipping corrupt sample {sample.name}: {e}", file=sys.stderr)
                skipped.append(f"{sample.name}: {e}")
                continue
            yield sample.name, example
        if skipped:
            print(f"{self.name}: skipped {len(skipped)} corrupt sample(s) in split '{split}'", file=sys.stderr)

    def _example(self, sample: Sample, preds: PredictionDirs | None) -> dict[str, Any]:
        rgb, depth = self._load(sample)
        where = ", ".join(str(p) for p in sample.files.values())
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise UserError(f"{where}: expected a uint8 RGB image, got shape {rgb.shape} dtype {rgb.dtype}")
        if depth.shape != rgb.shape[:2]:
            raise UserError(f"{where}: image is {rgb.shape[1]}x{rgb.shape[0]} but depth is "
                            f"{depth.shape[1]}x{depth.shape[0]} (width x height); they must match")
        low = high = b""
        if preds is not None:
            low = read_prediction_png(preds.low / f"{sample.name}.png")
            high = read_prediction_png(preds.high / f"{sample.name}.png")
        return {"name": sample.name, "rgb": encode_png(rgb), "depth": depth.astype(np.float32),
                "low": low, "high": high}


def sorted_glob(root: Path, pattern: str) -> list[Path]:
    return sorted(Path(root).glob(pattern))


def split_dir(manual: Path, *names: str) -> Path | None:
    """The first existing `manual/<name>` among `names` (case variants are common in downloads)."""
    for n in names:
        if (manual / n).is_dir():
            return manual / n
    return None
