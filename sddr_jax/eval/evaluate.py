"""The evaluation loop: per-image metrics of several predictions of the same images, their summary, and the
dataset evaluation behind `sddr-jax evaluate` (docs/method.md §9).

`evaluate_maps` is the one per-image scorer: the training loop's held-out evaluation, `evaluate_dataset` (the
CLI) and the demo all call it, so their numbers are computed the same way. `metrics_table` renders a summary
as Markdown with the best value of each row in bold.
"""
from __future__ import annotations

import math
import pathlib
from typing import Any, Callable, Mapping, Sequence

import cv2
import numpy as np

from sddr_jax import io
from sddr_jax.errors import UserError
from sddr_jax.eval import metrics as M
from sddr_jax.ops import fill_invalid

PRED_EXTS = (".png", ".npy", ".pfm", ".tif", ".tiff")
# Middlebury2021's official script casts GT depth to uint8 (docs/method.md §9.2); every other dataset uses
# float GT.
LEGACY_UINT8_DATASETS = ("middlebury2021",)
# Superpixels for D3R/ORD on the GT resized by 0.2 for Middlebury, 1.0 elsewhere (docs/method.md §9.4).
SUPERPIXEL_SCALE = {"middlebury2021": 0.2}

# Rows of the metric tables: (key, label, which is better).
METRIC_ROWS = (
    ("delta1", "δ1 ↑", "max"), ("abs_rel", "AbsRel ↓", "min"), ("sq_rel", "SqRel ↓", "min"),
    ("rmse", "RMSE ↓", "min"), ("log10", "log10 ↓", "min"), ("delta2", "δ2 ↑", "max"),
    ("delta3", "δ3 ↑", "max"), ("ord_boost", "ORD (Boost) ↓", "min"), ("ord_rank", "ORD (rank, Eq. 13) ↓", "min"),
    ("d3r", "D3R ↓", "min"), ("boundary_f1", "boundary F1 ↑", "max"),
)


def evaluate_maps(preds: Mapping[str, np.ndarray], depth: np.ndarray, valid: np.ndarray, *,
                  rgb: np.ndarray | None = None, edge_metrics: bool = True, ord_rank: bool = False,
                  **metric_options: Any) -> list[dict[str, dict[str, float]]]:
    """Per-image metrics (docs/method.md §9) of several predictions of the same images.

    `preds` maps a name ('refined', 'low', 'high', ...) to (B, H, W, 1) or (B, H, W) maps; `depth`, `valid`
    (and `rgb`, (B, H, W, 3) in [0, 1], used by ORD_rank) are the images' ground truth. Returns one dict per
    image, {name: {abs_rel, ..., delta1, [d3r, ord_boost, boundary_f1, ord_rank]}}, from
    `metrics.image_metrics` with `metric_options` (align, space, pred_space, superpixel_scale).
    """
    def maps(x):
        x = np.asarray(x)
        return x[..., 0] if x.ndim == 4 else x

    depth, valid = maps(depth), maps(valid).astype(bool)
    out = []
    for i in range(depth.shape[0]):
        image = None if rgb is None else np.asarray(rgb[i], np.float32)
        out.append({name: M.image_metrics(maps(p)[i], depth[i], valid[i], rgb=image, edge_metrics=edge_metrics,
                                          ord_rank=ord_rank, **metric_options)
                    for name, p in preds.items()})
    return out


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Means over images of `evaluate_maps` rows: {prediction name: {metric: mean}} (`metrics.aggregate`)."""
    names = [k for k in (rows[0] if rows else {}) if k != "name"]
    return {k: M.aggregate([r[k] for r in rows if k in r]) for k in names}


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


def ground_truth(depth: np.ndarray, legacy_uint8: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(GT depth float64 with invalid pixels at 0, valid mask); `legacy_uint8` applies the official
    Middlebury2021 script's uint8 cast (docs/method.md §9.2)."""
    gt = np.asarray(depth, np.float64)
    ok = np.isfinite(gt) & (gt > 0)
    if legacy_uint8:
        gt = M.uint8_wrap(np.where(ok, gt, 0.0)).astype(np.float64)
        ok = gt > 0
    return np.where(ok, gt, 0.0), ok


def resize_linear(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """OpenCV INTER_LINEAR of an (H, W) map to hw (the official evaluation's resize of a prediction)."""
    if x.shape == tuple(hw):
        return x.astype(np.float32)
    return cv2.resize(x.astype(np.float32), (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)


def find_prediction(folder: pathlib.Path, name: str) -> pathlib.Path | None:
    """`folder/<name>.<ext>` for the first of PRED_EXTS that exists."""
    for ext in PRED_EXTS:
        p = folder / f"{name}{ext}"
        if p.is_file():
            return p
    return None


def evaluate_dataset(source: Sequence[Mapping[str, Any]], *, decode: Callable[[Any], Mapping[str, Any]],
                     predictions: str | pathlib.Path | None = None,
                     refine: Callable[[np.ndarray, np.ndarray, tuple[int, int]], np.ndarray] | None = None,
                     simulate: bool = False, baselines: bool = True, legacy_uint8: bool = False,
                     edge_metrics: bool = True, limit: int = 0, skip_missing: bool = False,
                     superpixel_scale: float = 1.0, align: str = "lsq", space: str = "depth",
                     pred_space: str = "depth", dataset: str = "dataset",
                     progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Evaluate a folder of predictions (`predictions`) or a refiner (`refine(low, high, hw) -> (H, W)`) on the
    examples of a random-access `source` (decoded with `decode`), beside the stored low/high baselines.

    With `simulate`, examples without stored low/high get them from the simulated predictor (seed 0, folded
    with the example index). Returns {'summary', 'per_image', 'missing', 'unscored', 'columns'}; `unscored`
    names, per prediction, the images left out of its means because they could not be scored.
    """
    if (predictions is None) == (refine is None):
        raise UserError("evaluate_dataset: pass exactly one of predictions (a folder) or refine (a function)")
    if limit < 0:
        raise UserError(f"limit: expected a count >= 0, got {limit}")
    pred_dir = None if predictions is None else pathlib.Path(predictions)
    if pred_dir is not None and not pred_dir.is_dir():
        raise UserError(f"--predictions {pred_dir}: expected a folder of depth maps, and there is no such folder")
    n = len(source) if not limit else min(limit, len(source))
    if n == 0:
        raise UserError(f"dataset {dataset}: the split to evaluate is empty")
    rows: list[dict[str, Any]] = []
    missing: list[str] = []
    for i in range(n):
        ex = decode(source[i])
        gt, valid = ground_truth(ex["depth"], legacy_uint8)
        hw = gt.shape
        low, high = ex["low"], ex["high"]
        if low is None and simulate:
            import jax

            from sddr_jax.noise import simulate_prediction

            lo, hi = simulate_prediction(fill_invalid(d := np.asarray(ex["depth"], np.float32), d > 0, axis=(0, 1), default=1.0), jax.random.fold_in(jax.random.PRNGKey(0), i))
            low, high = np.asarray(lo), np.asarray(hi)
        preds: dict[str, np.ndarray] = {}
        if pred_dir is not None:
            path = find_prediction(pred_dir, ex["name"])
            if path is None:
                if skip_missing:
                    missing.append(ex["name"])
                    continue
                raise FileNotFoundError(f"--predictions {pred_dir}: no prediction for example {ex['name']!r} "
                                        f"(looked for {ex['name']}{{{','.join(PRED_EXTS)}}}); "
                                        f"pass --skip-missing to evaluate the others")
            preds["prediction"] = resize_linear(io.read_depth(path), hw)
        else:
            if low is None:
                raise UserError(f"dataset {dataset}: example {ex['name']!r} has no stored low/high "
                                f"predictions; pass --simulate to make them with the simulated predictor, or "
                                f"run a predictor and use --predictions")
            preds["refined"] = np.asarray(refine(low, high, hw), np.float32)
        if baselines and low is not None:
            preds["low"] = resize_linear(low, hw)
            preds["high"] = resize_linear(high, hw)
        (scores,) = evaluate_maps({k: v[None] for k, v in preds.items()}, gt[None], valid[None],
                                  rgb=ex["rgb"][None].astype(np.float32) / 255.0, edge_metrics=edge_metrics,
                                  ord_rank=edge_metrics, align=align, space=space, pred_space=pred_space,
                                  superpixel_scale=superpixel_scale)
        rows.append({"name": ex["name"], **scores})
        if progress is not None:
            progress(i + 1, n, ex["name"])
    if not rows:
        raise UserError(f"no example evaluated ({len(missing)} without predictions)")
    first = "prediction" if pred_dir is not None else "refined"
    return {"summary": summarize(rows), "per_image": rows, "missing": missing, "unscored": unscored(rows),
            "columns": [first, "low", "high"]}


def unscored(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """{prediction name: names of the images it could not be scored on} (no finite AbsRel: e.g. an all-NaN
    prediction, or no valid pixel); those images are left out of that prediction's means."""
    out: dict[str, list[str]] = {}
    for i, r in enumerate(rows):
        for k, m in r.items():
            if k != "name" and not math.isfinite(float(m.get("abs_rel", float("nan")))):
                out.setdefault(k, []).append(str(r.get("name", i)))
    return out


def json_safe(x: Any) -> Any:
    """NaN/inf -> None, recursively (JSON has no NaN)."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Mapping):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    return x
