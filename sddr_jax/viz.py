"""Pictures: colour previews of depth maps, side-by-side panels, training curves.

Host-side (numpy + matplotlib with the Agg backend); nothing here runs inside jit. Every file is written
atomically (`io.atomic_write`: a temporary file in the same folder, then `os.replace`), so an interrupted run never leaves
half a PNG behind.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from sddr_jax.io import atomic_write

DEFAULT_CMAP = "turbo"


def _atomic_target(path: str | os.PathLike, overwrite: bool) -> Path:
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (pass overwrite=True / --overwrite to replace it)")
    if not path.parent.exists():
        raise FileNotFoundError(f"{path}: the output folder {path.parent} does not exist")
    return path


def _save_figure_atomically(fig, path: Path, dpi: int) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"), overwrite=True)


def _as_2d(name: str, image: np.ndarray) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 4 and a.shape[0] == 1 and a.shape[-1] == 1:
        a = a[0, ..., 0]
    if a.ndim != 2 and not (a.ndim == 3 and a.shape[-1] == 3):
        raise ValueError(f"panel {name!r}: expected an (H, W) map, (H, W, 1) or an (H, W, 3) RGB image, got shape {a.shape}")
    return a


def colorize(depth: np.ndarray, cmap: str = DEFAULT_CMAP, vmin: float | None = None,
             vmax: float | None = None, valid: np.ndarray | None = None) -> np.ndarray:
    """A depth-like (H, W) map as an (H, W, 3) uint8 colour image.

    The range is the map's own finite (and `valid`) min..max unless `vmin`/`vmax` are given; pixels that
    are not finite or not valid are black. A constant map is drawn with the colormap's lowest colour.
    """
    import matplotlib

    d = _as_2d("depth", depth).astype(np.float64)
    if d.ndim != 2:
        raise ValueError(f"colorize: expected a single-channel map, got shape {d.shape}")
    ok = np.isfinite(d)
    if valid is not None:
        ok &= np.asarray(valid, bool).reshape(d.shape)
    if not ok.any():
        return np.zeros(d.shape + (3,), np.uint8)
    lo = float(d[ok].min()) if vmin is None else float(vmin)
    hi = float(d[ok].max()) if vmax is None else float(vmax)
    scaled = np.zeros_like(d) if hi <= lo else np.clip((d - lo) / (hi - lo), 0.0, 1.0)
    rgb = matplotlib.colormaps[cmap](np.where(ok, scaled, 0.0))[..., :3]
    rgb[~ok] = 0.0
    return (rgb * 255.0 + 0.5).astype(np.uint8)


def save_panels(path: str | os.PathLike, panels: Mapping[str, np.ndarray] | Sequence[tuple[str, np.ndarray]],
                *, cmap: str = DEFAULT_CMAP, ncols: int | None = None, shared_range: Sequence[str] = (),
                error_cmap: str = "magma", panel_size: float = 2.6, dpi: int = 110,
                overwrite: bool = False) -> Path:
    """Draw named maps side by side (one titled panel each) into one PNG.

    RGB images (H, W, 3) are drawn as they are (values in [0, 1] or uint8); single-channel maps through
    `cmap`, or `error_cmap` for panels whose name starts with "error". Names listed in `shared_range`
    share one colour range (e.g. low, high, refined and ground truth after alignment).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    items = list(panels.items()) if isinstance(panels, Mapping) else list(panels)
    if not items:
        raise ValueError("save_panels: no panels given")
    path = _atomic_target(path, overwrite)
    arrays = [(name, _as_2d(name, img)) for name, img in items]
    shared = [a for n, a in arrays if n in shared_range and a.ndim == 2 and np.isfinite(a).any()]
    vmin = min(float(np.nanmin(a[np.isfinite(a)])) for a in shared) if shared else None
    vmax = max(float(np.nanmax(a[np.isfinite(a)])) for a in shared) if shared else None
    n = len(arrays)
    ncols = ncols or n
    nrows = math.ceil(n / ncols)
    h, w = arrays[0][1].shape[:2]
    fig, axes = plt.subplots(nrows, ncols, figsize=(panel_size * ncols * w / max(h, w) + 0.2,
                                                    panel_size * nrows * h / max(h, w) + 0.45), squeeze=False)
    try:
        for ax in axes.ravel():
            ax.axis("off")
        for ax, (name, a) in zip(axes.ravel(), arrays):
            if a.ndim == 3:
                img = a if a.dtype == np.uint8 else np.clip(a, 0.0, 1.0)
            elif name in shared_range:
                img = colorize(a, cmap, vmin, vmax)
            else:
                img = colorize(a, error_cmap if name.lower().startswith("error") else cmap)
            ax.imshow(img, interpolation="nearest")
            ax.set_title(name, fontsize=9)
        fig.tight_layout(pad=0.3)
        _save_figure_atomically(fig, path, dpi)
    finally:
        plt.close(fig)
    return path


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records of a JSON-lines log; a torn last line (a run killed mid-write) is ignored."""
    records = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def plot_training_curves(records: Sequence[Mapping], path: str | os.PathLike, *,
                         keys: Sequence[str] | None = None, step_key: str = "step", dpi: int = 110,
                         overwrite: bool = False) -> Path:
    """Plot the scalar series of training-log records (one subplot per key) into a PNG.

    `keys` defaults to every numeric key other than `step_key` that appears in at least two records.
    Phase changes (a record with a `phase` field that differs from the previous one) are marked.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = _atomic_target(path, overwrite)
    recs = [r for r in records if step_key in r]
    if not recs:
        raise ValueError(f"plot_training_curves: no record has the step key {step_key!r}")
    if keys is None:
        counts: dict[str, int] = {}
        for r in recs:
            for k, v in r.items():
                if k != step_key and isinstance(v, (int, float)) and not isinstance(v, bool):
                    counts[k] = counts.get(k, 0) + 1
        keys = [k for k, c in counts.items() if c >= 2]
    if not keys:
        raise ValueError("plot_training_curves: no numeric series with at least two points")
    phase_steps = [r[step_key] for prev, r in zip(recs, recs[1:])
                   if "phase" in r and "phase" in prev and r["phase"] != prev["phase"]]
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 2.8 * nrows), squeeze=False)
    try:
        for ax in axes.ravel():
            ax.axis("off")
        for ax, key in zip(axes.ravel(), keys):
            pts = [(r[step_key], r[key]) for r in recs if isinstance(r.get(key), (int, float))]
            xs, ys = zip(*pts)
            ax.axis("on")
            ax.plot(xs, ys, lw=1.2)
            for s in phase_steps:
                ax.axvline(s, color="grey", ls="--", lw=0.8)
            ax.set_title(key, fontsize=9)
            ax.set_xlabel(step_key, fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        _save_figure_atomically(fig, path, dpi)
    finally:
        plt.close(fig)
    return path
