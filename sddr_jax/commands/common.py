"""Pieces shared by the user-facing commands: loading any kind of checkpoint, tables, atomic text files."""
from __future__ import annotations

import hashlib
import os
import pathlib
from typing import Any, Mapping

from sddr_jax.errors import UserError

# Rows of the metric tables: (key, label, which is better).
METRIC_ROWS = (
    ("delta1", "δ1 ↑", "max"), ("abs_rel", "AbsRel ↓", "min"), ("sq_rel", "SqRel ↓", "min"),
    ("rmse", "RMSE ↓", "min"), ("log10", "log10 ↓", "min"), ("delta2", "δ2 ↑", "max"),
    ("delta3", "δ3 ↑", "max"), ("ord_boost", "ORD (Boost) ↓", "min"), ("ord_rank", "ORD (rank, Eq. 13) ↓", "min"),
    ("d3r", "D3R ↓", "min"), ("boundary_f1", "boundary F1 ↑", "max"),
)


def cache_dir() -> pathlib.Path:
    """Where converted official checkpoints are cached: $SDDR_JAX_CACHE, else ~/.cache/sddr_jax."""
    return pathlib.Path(os.environ.get("SDDR_JAX_CACHE") or "~/.cache/sddr_jax").expanduser()


def _file_digest(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:24]


def load_any_params(path: str | os.PathLike, *, cache: bool = True) -> Mapping[str, Any]:
    """Refiner params from any checkpoint a user may hold.

    - the official `.pt` (converted torch-free; the result is cached under `cache_dir()` by the file's
      SHA-256, so the next call skips the conversion),
    - a directory written by `sddr-jax convert`,
    - a training workdir of `sddr-jax train` (its latest checkpoint) or its `checkpoints/`/`best/` folder.
    """
    from sddr_jax import checkpointing, convert

    p = pathlib.Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {p}: no such file or directory")
    if p.is_dir() and ((p / "checkpoints").is_dir() or (p / "best").is_dir() or p.name in ("checkpoints", "best")):
        params, _ = checkpointing.load_params(p)
        return params
    if p.is_file() and cache:
        target = cache_dir() / "converted" / _file_digest(p)
        if target.exists():
            try:
                return convert.load_params(target)
            except (ValueError, OSError):
                pass  # a cache entry from another version; convert again below
        params = convert.load_params(p)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            convert.save_params(params, target, overwrite=True)
        except OSError:
            pass  # caching is an optimisation only
        return params
    return convert.load_params(p)


def metrics_table(summary: Mapping[str, Mapping[str, float]], columns: Mapping[str, str], *, caption: str = "") -> str:
    """A Markdown table: one row per metric, one column per prediction (`columns`: key -> header); the best
    value of each row in bold. Rows whose values are all missing are left out."""
    cols = [(k, label) for k, label in columns.items() if k in summary]
    lines = [caption, ""] if caption else []
    lines.append("| metric | " + " | ".join(label for _, label in cols) + " |")
    lines.append("|---|" + "---:|" * len(cols))
    for key, label, better in METRIC_ROWS:
        vals = [summary[c].get(key) for c, _ in cols]
        finite = [v for v in vals if isinstance(v, (int, float)) and v == v]
        if not finite:
            continue
        best = (max if better == "max" else min)(finite)
        cells = ["–" if not isinstance(v, (int, float)) or v != v else
                 (f"**{v:.4f}**" if v == best and len(finite) > 1 else f"{v:.4f}") for v in vals]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_text_atomic(path: str | os.PathLike, text: str, *, overwrite: bool = False) -> pathlib.Path:
    """Write a text file through a temporary file and `os.replace`; refuse to replace one unless `overwrite`."""
    path = pathlib.Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (use --overwrite to replace it)")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"{path}: the folder {path.parent} does not exist")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    return path


def check_writable_dir(path: str | os.PathLike, what: str) -> pathlib.Path:
    """Create `path` if needed and make sure files can be written in it (a clear error otherwise)."""
    p = pathlib.Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
        probe = p / f".write_probe{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise UserError(f"{what} {p}: not writable ({e.strerror or e})") from None
    return p
