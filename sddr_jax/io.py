"""Reading and writing depth maps by file extension, with atomic writes.

Formats: `.npy` (float32), `.png` (8- or 16-bit, single channel), `.pfm` (float32, single channel),
`.tif` / `.tiff` (float32 via OpenCV). Readers return float32 (H, W) arrays WITHOUT rescaling (the official
demo reads 16-bit PNGs as raw float32 values; docs/method.md §5.1). Writers never overwrite an existing file unless
overwrite=True and write through a temporary file + os.replace, so a crash never leaves half a file.

PNG output follows the official demo (docs/method.md §5.1 step 5): min-max normalise, multiply by 65535 (or 255 for
8-bit), truncate to an unsigned integer.
"""
from __future__ import annotations

import glob
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from sddr_jax.errors import UserError

READ_EXTENSIONS = (".npy", ".png", ".pfm", ".tif", ".tiff")
WRITE_EXTENSIONS = READ_EXTENSIONS


def _ext(path: Path) -> str:
    return path.suffix.lower()


def _single_channel(a: np.ndarray, path: Path) -> np.ndarray:
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 2:
        channels = a.shape[-1] if a.ndim == 3 else None
        detail = f"{channels} channels" if channels else f"shape {a.shape}"
        raise UserError(f"{path}: expected a single-channel depth map, got {detail}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise UserError(f"{path}: empty depth map of shape {a.shape}")
    return a


def read_pfm(path: str | os.PathLike, *, channels: int | None = 1, return_scale: bool = False):
    """A PFM file as float32, top row first (PFM stores rows bottom-up): (H, W) for 'Pf', (H, W, 3) for 'PF'.

    channels: 1 (default) refuses a 3-channel 'PF' file with a clear error (depth maps are single-channel);
    None accepts both. Comment lines (#) and a size split over lines are accepted. With `return_scale`,
    returns `(array, abs(scale))`: the header's scale factor (its sign is the byte order).
    """
    p = Path(path)
    with open(p, "rb") as f:
        header = f.readline().strip()
        if header not in (b"Pf", b"PF"):
            raise UserError(f"{p}: not a PFM file (header {header[:8]!r}, expected b'Pf' or b'PF')")
        c = 1 if header == b"Pf" else 3
        if channels is not None and c != channels:
            raise UserError(f"{p}: expected a single-channel depth map, got a 3-channel PFM")
        w, h, scale = _pfm_size_and_scale(f, p)
        if w < 1 or h < 1:
            raise UserError(f"{p}: PFM size {w}x{h} is empty")
        dtype = "<f4" if scale < 0 else ">f4"
        data = f.read()
    need = w * h * c
    if len(data) < need * 4:
        raise UserError(f"{p}: PFM data truncated ({len(data)} bytes for {w}x{h}x{c} float32 values)")
    a = np.frombuffer(data, dtype, count=need).reshape((h, w, 3) if c == 3 else (h, w))
    a = np.flipud(a).astype(np.float32)
    return (a, abs(scale)) if return_scale else a


def _pfm_size_and_scale(f, p: Path) -> tuple[int, int, float]:
    """(width, height, scale) of a PFM header, read after its first line: the size may follow comment lines
    (#) or be split over two lines."""
    dims: list[bytes] = []
    while len(dims) < 2:
        line = f.readline()
        if not line:
            break
        if not line.lstrip().startswith(b"#"):
            dims += line.split()
    try:
        return int(dims[0]), int(dims[1]), float(f.readline().strip())
    except (ValueError, IndexError):
        raise UserError(f"{p}: malformed PFM header (size {b' '.join(dims)[:40]!r})") from None


def write_pfm(path: str | os.PathLike, array: Any, *, overwrite: bool = False) -> Path:
    """Write a float32 (H, W) map as a little-endian 'Pf' PFM (scale -1, bottom row first), atomically."""
    a = np.asarray(array, np.float32)
    if a.ndim != 2:
        raise UserError(f"write_pfm {path}: expected an (H, W) array, got shape {a.shape}")
    data = _pfm_bytes(a)
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), overwrite=overwrite)


def _pfm_bytes(a: np.ndarray) -> bytes:
    h, w = a.shape
    header = f"Pf\n{w} {h}\n-1.0\n".encode("ascii")
    return header + np.flipud(a).astype("<f4").tobytes()


def parse_middlebury_calib(text: str) -> dict[str, str]:
    """Middlebury `calib.txt` content -> {name: value string} (lines `name=value`; the first one wins)."""
    calib: dict[str, str] = {}
    for line in text.splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            calib.setdefault(k.strip(), v.strip())
    return calib


def read_middlebury_calib(path: str | os.PathLike, *, parse_values: bool = False) -> dict[str, Any]:
    """A Middlebury `calib.txt` file: {name: value string}, or with `parse_values` the camera matrices
    (`cam0`, `cam1`) as 3x3 float64 arrays and every other value as a float where it is one (then `cam0`,
    `baseline` and `doffs` are required)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"Middlebury calib file not found: {p}")
    calib: dict[str, Any] = parse_middlebury_calib(p.read_text(encoding="utf-8"))
    if not parse_values:
        return calib
    for key, value in list(calib.items()):
        if key.startswith("cam"):
            rows = value.strip("[]").split(";")
            try:
                calib[key] = np.array([[float(v) for v in r.split()] for r in rows], np.float64)
            except ValueError:
                raise UserError(f"{p}: malformed {key} matrix {value!r}") from None
        else:
            try:
                calib[key] = float(value)
            except ValueError:
                pass
    for key in ("cam0", "baseline", "doffs"):
        if key not in calib:
            raise UserError(f"{p}: missing '{key}' (expected Middlebury calib.txt with cam0, doffs, baseline)")
    return calib


# ----------------------------------------------------------------------------------------------------
# Bounds checked before anything is allocated

# A decoded depth map costs 4 bytes per pixel, and every pipeline holds several float32 copies of it: the
# default limit keeps one map under 1/64 of the machine's memory (about 100 megapixels on a 24 GiB machine).
_BYTES_PER_PIXEL_BUDGET = 64
MAX_PIXELS_ENV = "SDDR_JAX_MAX_PIXELS"


def total_memory_bytes() -> int:
    """Physical memory of this machine (8 GiB when the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def max_pixels() -> int:
    """The largest image (H * W) any reader accepts: $SDDR_JAX_MAX_PIXELS, else memory / 64 bytes."""
    env = os.environ.get(MAX_PIXELS_ENV)
    if env:
        try:
            value = int(env)
        except ValueError:
            raise UserError(f"${MAX_PIXELS_ENV}: expected a pixel count, got {env!r}") from None
        if value < 1:
            raise UserError(f"${MAX_PIXELS_ENV}: expected a positive pixel count, got {value}")
        return value
    return total_memory_bytes() // _BYTES_PER_PIXEL_BUDGET


def check_image_size(height: int, width: int, what: str) -> None:
    """UserError when an (H, W) image exceeds `max_pixels()` (checked from headers, before decoding)."""
    limit = max_pixels()
    if int(height) * int(width) > limit:
        raise UserError(f"{what}: too large: {height}x{width} = {int(height) * int(width):,} pixels "
                        f"(limit {limit:,}, from this machine's memory; set ${MAX_PIXELS_ENV} to change it)")


def _npy_header(p: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of a .npy file from its header, without reading the data."""
    try:
        with open(p, "rb") as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, OSError, EOFError) as e:
        raise UserError(f"{p}: not a readable .npy array ({e})") from None
    return tuple(int(s) for s in shape), np.dtype(dtype)


def check_depth_dtype(dtype: Any, what: str) -> None:
    """Depth maps are real numbers: bool, integer and float dtypes pass; complex, object, string and
    structured dtypes are refused (a complex map would silently lose its imaginary part)."""
    dt = np.dtype(dtype)
    if dt == np.bool_ or np.issubdtype(dt, np.integer) or np.issubdtype(dt, np.floating):
        return
    kind = "complex" if np.issubdtype(dt, np.complexfloating) else "non-numeric"
    raise UserError(f"{what}: expected a real-valued depth map (bool, integer or float), got {kind} dtype {dt}")


def _header_size(p: Path, ext: str) -> tuple[int, int] | None:
    """(H, W) declared by a depth file's header, or None where the format has none we read cheaply."""
    if ext == ".npy":
        shape, dtype = _npy_header(p)
        check_depth_dtype(dtype, str(p))
        dims = [s for s in shape if s != 1] or [1, 1]
        return (dims[0], dims[1]) if len(dims) == 2 else (int(np.prod(shape)), 1)
    if ext == ".pfm":
        with open(p, "rb") as f:
            f.readline()
            try:
                w, h, _ = _pfm_size_and_scale(f, p)
            except UserError:
                return None  # read_pfm reports what is wrong with the file
        return h, w
    try:
        return _pil_size(p)
    except UserError:
        return None


def read_depth(path: str | os.PathLike) -> np.ndarray:
    """Read a single-channel depth map as float32 (H, W), by extension (.npy, .png, .pfm, .tif/.tiff).

    PNG values are returned raw (no rescaling of 8/16-bit integers), like the official demo.
    Raises FileNotFoundError for a missing file, UserError for an unreadable file, a wrong channel count, a
    complex or non-numeric dtype, or a declared size above `max_pixels()` (read from the header first, so a
    huge declared size never allocates).
    """
    p = Path(path)
    ext = _ext(p)
    if ext not in READ_EXTENSIONS:
        raise UserError(
            f"{p}: unsupported depth file extension {ext!r}; use one of {', '.join(READ_EXTENSIONS)}"
        )
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such depth file")
    if p.is_dir():
        raise UserError(f"{p}: is a directory, expected a depth map file")
    hw = _header_size(p, ext)
    if hw is not None:
        check_image_size(*hw, str(p))
    if ext == ".npy":
        try:
            a = np.load(p, allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise UserError(f"{p}: not a readable .npy array ({e})") from None
        check_depth_dtype(a.dtype, str(p))
    elif ext == ".pfm":
        a = read_pfm(p)
    else:
        a = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        if a is None:
            raise UserError(f"{p}: not a readable {ext[1:].upper()} image")
    a = _single_channel(np.asarray(a), p)
    return a.astype(np.float32)


def to_uint_official(depth: np.ndarray, bits: int = 16) -> np.ndarray:
    """Official output quantisation (`utils.func.norm_0_1`): in float32, (d - min) / (max - min), times
    2^bits - 1, truncated to uint16 (uint8 for bits=8). A constant map gives zeros instead of NaN."""
    if bits not in (8, 16):
        raise UserError(f"bits must be 8 or 16, got {bits}")
    d = np.asarray(depth, np.float32)
    lo, hi = d.min(), d.max()
    unit = (d - lo) / (hi - lo) if hi > lo else np.zeros_like(d)
    out = unit * np.float32(2 ** bits - 1)
    return out.astype(np.uint16 if bits == 16 else np.uint8)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None], *, overwrite: bool = False) -> Path:
    """Call write(tmp_path) for a temporary sibling file, then os.replace it onto `path`.

    Refuses an existing `path` unless overwrite=True; creates missing parent directories.
    """
    p = Path(path)
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p}: already exists (pass overwrite=True / --overwrite to replace it)")
    if p.is_dir():
        raise IsADirectoryError(f"{p}: is a directory")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.stem}.", suffix=p.suffix)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, p)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return p


def stale_temps(path: str | os.PathLike) -> list[Path]:
    """Temporary files that `atomic_write` made for `path` and never renamed: what a process killed while
    writing it (kill -9, power loss) leaves beside it, named `.{stem}.<8 random characters>{suffix}`."""
    p = Path(path)
    pattern = re.compile(re.escape(f".{p.stem}.") + r"[a-z0-9_]{8}" + re.escape(p.suffix))
    return sorted(q for q in p.parent.glob(f".{glob.escape(p.stem)}.*{glob.escape(p.suffix)}")
                  if pattern.fullmatch(q.name))


def write_text_atomic(path: str | os.PathLike, text: str, *, overwrite: bool = False) -> Path:
    """Write a text file atomically (`atomic_write`); refuses to replace one unless `overwrite`."""
    return atomic_write(path, lambda tmp: tmp.write_text(text), overwrite=overwrite)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, overwrite: bool = True) -> Path:
    """`obj` as indented, key-sorted JSON, written atomically (replacing an existing file by default)."""
    import json

    return write_text_atomic(path, json.dumps(obj, indent=1, sort_keys=True), overwrite=overwrite)


def write_depth(
    path: str | os.PathLike, depth: Any, *, overwrite: bool = False, bits: int = 16
) -> Path:
    """Write a single-channel depth map by extension, atomically.

    .npy / .pfm / .tif(f): float32 values as given. .png: the official quantisation (`to_uint_official`)
    to `bits` (16 by default, 8 allowed).
    """
    p = Path(path)
    ext = _ext(p)
    if ext not in WRITE_EXTENSIONS:
        raise UserError(
            f"{p}: unsupported output extension {ext!r}; use one of {', '.join(WRITE_EXTENSIONS)}"
        )
    a = _single_channel(np.asarray(depth), p).astype(np.float32)
    if not np.all(np.isfinite(a)):
        raise UserError(f"{p}: refusing to write a depth map with NaN or infinite values")

    def write(tmp: Path) -> None:
        if ext == ".npy":
            with open(tmp, "wb") as f:
                np.save(f, a)
        elif ext == ".pfm":
            tmp.write_bytes(_pfm_bytes(a))
        else:
            img = to_uint_official(a, bits) if ext == ".png" else a
            ok, buf = cv2.imencode(ext, img)
            if not ok:
                raise UserError(f"{p}: OpenCV could not encode the image")
            tmp.write_bytes(buf.tobytes())

    return atomic_write(p, write, overwrite=overwrite)


def _pil_size(p: Path) -> tuple[int, int]:
    from PIL import Image, UnidentifiedImageError

    if not p.exists():
        raise FileNotFoundError(f"{p}: no such image file")
    bomb_limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None  # only the header is read here; our own limit applies (`max_pixels`)
    try:
        with Image.open(p) as im:
            w, h = im.size
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{p}: not a readable image ({e})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = bomb_limit
    return h, w


def read_image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image file from its header; UserError above `max_pixels()`."""
    p = Path(path)
    h, w = _pil_size(p)
    check_image_size(h, w, str(p))
    return h, w


__all__ = [
    "READ_EXTENSIONS",
    "WRITE_EXTENSIONS",
    "atomic_write",
    "read_depth",
    "read_image_size",
    "max_pixels",
    "check_image_size",
    "check_depth_dtype",
    "read_pfm",
    "write_pfm",
    "parse_middlebury_calib",
    "read_middlebury_calib",
    "to_uint_official",
    "write_depth",
]


def check_writable_dir(path: str | os.PathLike, what: str) -> Path:
    """Make sure files can be written in folder `path` (created later, by the writes themselves): its nearest
    existing ancestor must be a writable folder and nothing on the way may be a file. Creates nothing, so a
    refused command leaves no folder behind."""
    p = Path(path).absolute()
    probe = p
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"{what} {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: not writable ({probe} is read-only)")
    return Path(path)
