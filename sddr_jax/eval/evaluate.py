"""The evaluation loop: per-image metrics of several predictions of the same images, their summary, and the
dataset evaluation behind `sddr-jax evaluate` (docs/method.md §9).

`evaluate_maps` is the one per-image scorer: the training loop's held-out evaluation, `evaluate_dataset` (the
CLI) and the demo all call it, so their numbers are computed the same way. `metrics_table` renders a summary
as Markdown with the best value of each row in bold.

Named protocols (`PROTOCOLS`, `protocol_for`) fix, per dataset, the alignment, the GT depth range, the clipping
of the aligned prediction, the evaluation resolution and the dataset mean; `paper_report` lays a summary out
as the SDDR paper's Tables 1/2 and 7/8 beside the paper-reported numbers (docs/method.md §9, §11).
"""
from __future__ import annotations

import dataclasses
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

# Rows of the metric tables: (key, label, which is better).
METRIC_ROWS = (
    ("delta1", "δ1 ↑", "max"), ("abs_rel", "AbsRel ↓", "min"), ("sq_rel", "SqRel ↓", "min"),
    ("rmse", "RMSE ↓", "min"), ("log10", "log10 ↓", "min"), ("delta2", "δ2 ↑", "max"),
    ("delta3", "δ3 ↑", "max"), ("ord_boost", "ORD (Boost) ↓", "min"), ("ord_rank", "ORD (rank, Eq. 13) ↓", "min"),
    ("d3r", "D3R ↓", "min"), ("boundary_f1", "boundary F1 ↑", "max"),
)

# ----------------------------------------------------------------------------------------------------
# Named evaluation protocols


@dataclasses.dataclass(frozen=True)
class Protocol:
    """How one dataset is scored: alignment, GT depth range, clipping, resolution and dataset mean.

    `align`/`space`: as `metrics.align_prediction` (disparity space: least squares of the prediction to 1/GT,
    negatives clipped to 0, inverted). `min_depth`/`max_depth` (GT units; None = no bound): GT outside the
    range is invalid (strictly inside, or `inclusive_range`) and is left out of the fit too; with
    `clip_pred` the aligned depth is clipped to the range (+inf -> max, NaN -> min). `eval_scale`: GT and its
    mask resized by this factor with OpenCV nearest before scoring (the prediction is resized to that size).
    `aggregate`: "sddr" (`metrics.aggregate`: per-image values <= 0 skipped, the official script) or
    "nanmean" (NaN skipped only, so a perfect image's AbsRel 0 counts). `headline`: the metrics the source
    reports. `source`/`assumed`: where it comes from and what is our choice.
    """

    name: str
    align: str = "lsq"
    space: str = "depth"
    min_depth: float | None = None
    max_depth: float | None = None
    inclusive_range: bool = False
    clip_pred: bool = False
    eval_scale: float = 1.0
    aggregate: str = "sddr"
    superpixel_scale: float = 1.0
    headline: tuple[str, ...] = ("delta1", "abs_rel", "ord_rank", "d3r")
    source: str = ""
    assumed: str = ""

    @property
    def ranged(self) -> bool:
        return self.min_depth is not None or self.max_depth is not None or self.clip_pred


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("sddr", source="SDDR's official Middlebury script, GBDF's loaders (docs/method.md §9.1, §9.3)"),
    Protocol("middlebury2021", superpixel_scale=0.2,
             source="SDDR's official Middlebury2021 script (docs/method.md §9.2); GT uint8 cast by --gt"),
    # PRO (Kwon & Kim, ICCV 2025), KAIST-VICLab/One-Look-is-Enough: estimator/utils/metric.py
    # compute_depth_from_disp (least-squares scale and shift of the predicted disparity to 1/GT, aligned
    # disparity floored at 1/depth_cap, depth_cap = 80, inverted) then compute_metrics (pred resized
    # bilinearly to the GT size, valid = min_depth_eval < GT < max_depth_eval, pred clipped to that range,
    # NaN-mean over images; a1, abs_rel, ..., D3R/ORD on Boost's pairs). Its per-dataset loaders for
    # Middlebury 2014, ETH3D and Booster are published only as .pyc, so their ranges are not confirmed.
    Protocol("middlebury2014", space="disparity", min_depth=1.0, max_depth=80_000.0, clip_pred=True,
             aggregate="nanmean", superpixel_scale=0.2,
             headline=("delta1", "abs_rel", "d3r", "ord_boost", "boundary_f1"),
             source="PRO (ICCV 2025) code: disparity-space least squares, pred clipped to the GT range, "
                    "full GT resolution, NaN-mean",
             assumed="GT in mm (this builder), range 1 mm .. 80 m (PRO's depth_cap 80 m; the 1 mm floor is "
                     "PatchRefiner's min_depth); float GT; both views (_l, _r) scored; Boost superpixels at "
                     "0.2 as for Middlebury2021"),
    # PatchRefiner (Li et al., ECCV 2024), zhyever/PatchRefiner: configs/_base_/datasets/eth.py
    # (min_depth 1e-3, max_depth 80) and estimator/datasets/eth_dataset.py (GT read at 6048x4032,
    # +-inf/NaN -> 0, metrics at full GT resolution); PRO's alignment as above.
    Protocol("eth3d", space="disparity", min_depth=1e-3, max_depth=80.0, clip_pred=True,
             aggregate="nanmean", headline=("delta1", "abs_rel", "d3r", "ord_boost", "boundary_f1"),
             source="PRO (ICCV 2025) alignment; range 1 mm .. 80 m and full 6048x4032 GT from PatchRefiner's "
                    "ETH3D loader",
             assumed="PRO's own ETH3D range/resolution (loader only as .pyc); all 13 training scenes"),
    # Booster's official monocular evaluation, CVLAB-Unibo/Depth4ToM-code evaluate_mono.py: GT disparity
    # resized x0.25 (nearest), GT outside 1 mm .. 10 m invalid, prediction min-max normalised (affine, so
    # it does not change the fit) and least-squares fitted to GT disparity, turned into depth, clipped to
    # 1 mm .. 10 m (+inf -> 10 m); plain mean over images; delta1 (x100 there), MAE, AbsRel, RMSE per
    # class All/ToM/Other. Its `cv2.resize(pred, size, cv2.INTER_CUBIC)` passes the flag as `dst`, so the
    # prediction is in fact resized bilinearly, as here.
    Protocol("booster", space="disparity", min_depth=1e-3, max_depth=10.0, inclusive_range=True, clip_pred=True,
             eval_scale=0.25, aggregate="nanmean", headline=("delta1", "abs_rel", "rmse"),
             source="Booster official evaluate_mono.py (Depth4ToM-code, ICCV 2023); PRO evaluates Booster too",
             assumed="class 'All' only (the record has no mask_cat); that PRO uses this protocol unchanged"),
)}


def protocol_for(dataset: str, name: str | None = None) -> Protocol:
    """The protocol `name`, or the dataset's own (`PROTOCOLS[dataset]`), else "sddr"."""
    key = name or (dataset if dataset in PROTOCOLS else "sddr")
    if key not in PROTOCOLS:
        raise UserError(f"protocol {key!r}: unknown; known protocols: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[key]


def depth_range_mask(gt: np.ndarray, protocol: Protocol) -> np.ndarray:
    """GT pixels inside the protocol's depth range (all True without bounds)."""
    gt = np.asarray(gt, np.float64)
    ok = np.ones(gt.shape, bool)
    lo, hi = protocol.min_depth, protocol.max_depth
    if lo is not None:
        ok &= gt >= lo if protocol.inclusive_range else gt > lo
    if hi is not None:
        ok &= gt <= hi if protocol.inclusive_range else gt < hi
    return ok


def protocol_ground_truth(depth: np.ndarray, protocol: Protocol,
                          legacy_uint8: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(GT at the protocol's resolution with invalid pixels at 0, valid mask incl. the depth range)."""
    gt, valid = ground_truth(depth, legacy_uint8)
    s = float(protocol.eval_scale)
    if s != 1.0:
        gt = cv2.resize(gt.astype(np.float32), None, fx=s, fy=s, interpolation=cv2.INTER_NEAREST).astype(np.float64)
        valid = gt > 0
    valid = valid & depth_range_mask(gt, protocol)
    return np.where(valid, gt, 0.0), valid


def protocol_aligned(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, protocol: Protocol) -> np.ndarray:
    """The prediction aligned to GT on `valid` by the protocol, in depth, clipped to its range if it says so."""
    out = np.asarray(M.align_prediction(pred, gt, valid, protocol.align, protocol.space), np.float64)
    if protocol.clip_pred:
        lo = 0.0 if protocol.min_depth is None else protocol.min_depth
        hi = np.inf if protocol.max_depth is None else protocol.max_depth
        out = np.clip(np.nan_to_num(out, nan=lo, posinf=hi, neginf=lo), lo, hi)
    return out


def protocol_image_metrics(pred: np.ndarray, gt: np.ndarray, valid: np.ndarray, protocol: Protocol, *,
                           rgb: np.ndarray | None = None, edge_metrics: bool = True,
                           ord_rank: bool = True, pred_space: str = "depth") -> dict[str, float]:
    """`metrics.image_metrics` of one (H, W) prediction under `protocol` (GT/valid from
    `protocol_ground_truth`). Protocols without a range or clipping align inside the metrics as before;
    the others are aligned and clipped first, then scored unaligned (edge metrics on that depth map)."""
    if not protocol.ranged:
        return M.image_metrics(pred, gt, valid, rgb=rgb, edge_metrics=edge_metrics, ord_rank=ord_rank,
                               align=protocol.align, space=protocol.space, pred_space=pred_space,
                               superpixel_scale=protocol.superpixel_scale)
    aligned = protocol_aligned(pred, gt, valid, protocol)
    return M.image_metrics(aligned, gt, valid, rgb=rgb, edge_metrics=edge_metrics, ord_rank=ord_rank,
                           align="none", space="depth", pred_space="depth",
                           superpixel_scale=protocol.superpixel_scale)


def nanmean_aggregate(per_image: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Dataset score as PRO / PatchRefiner / Booster: per key, the mean of the finite per-image values."""
    keys: list[str] = []
    for r in per_image:
        keys += [k for k in r if k not in keys]
    out = {}
    for k in keys:
        v = np.asarray([float(r[k]) for r in per_image if k in r], np.float64)
        v = v[np.isfinite(v)]
        out[k] = float(v.mean()) if v.size else float("nan")
    return out


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


def summarize(rows: Sequence[Mapping[str, Any]], aggregate: str = "sddr") -> dict[str, dict[str, float]]:
    """Means over images of `evaluate_maps` rows: {prediction name: {metric: mean}} (`metrics.aggregate`, or
    `nanmean_aggregate` with aggregate="nanmean")."""
    if aggregate not in ("sddr", "nanmean"):
        raise UserError(f"aggregate: expected 'sddr' or 'nanmean', got {aggregate!r}")
    mean = M.aggregate if aggregate == "sddr" else nanmean_aggregate
    names = [k for k in (rows[0] if rows else {}) if k != "name"]
    return {k: mean([r[k] for r in rows if k in r]) for k in names}


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
                     pred_space: str = "depth", dataset: str = "dataset", protocol: Protocol | None = None,
                     progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Evaluate a folder of predictions (`predictions`) or a refiner (`refine(low, high, hw) -> (H, W)`) on the
    examples of a random-access `source` (decoded with `decode`), beside the stored low/high baselines.

    With `simulate`, examples without stored low/high get them from the simulated predictor (seed 0, folded
    with the example index). Returns {'summary', 'per_image', 'missing', 'unscored', 'columns'}; `unscored`
    names, per prediction, the images left out of its means because they could not be scored.
    `protocol` (a `Protocol`) replaces `align`, `space` and `superpixel_scale` when given.
    """
    if protocol is None:
        protocol = Protocol("custom", align=align, space=space, superpixel_scale=superpixel_scale)
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
        gt, valid = protocol_ground_truth(ex["depth"], protocol, legacy_uint8)
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
        rgb = ex["rgb"].astype(np.float32) / 255.0
        if rgb.shape[:2] != hw:
            rgb = cv2.resize(rgb, (hw[1], hw[0]), interpolation=cv2.INTER_AREA)
        scores = {k: protocol_image_metrics(v, gt, valid, protocol, rgb=rgb, edge_metrics=edge_metrics,
                                            ord_rank=edge_metrics, pred_space=pred_space)
                  for k, v in preds.items()}
        rows.append({"name": ex["name"], **scores})
        if progress is not None:
            progress(i + 1, n, ex["name"])
    if not rows:
        raise UserError(f"no example evaluated ({len(missing)} without predictions)")
    first = "prediction" if pred_dir is not None else "refined"
    return {"summary": summarize(rows, protocol.aggregate), "per_image": rows, "missing": missing, "unscored": unscored(rows),
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


# ----------------------------------------------------------------------------------------------------
# `--report paper`: the SDDR paper's Tables 1/2 (delta1, REL, ORD, D3R) and 7/8 (full metrics)

PAPER_DATASETS = {"middlebury2021": "Middlebury2021", "multiscopic": "Multiscopic", "hypersim": "Hypersim"}
PAPER_PREDICTORS = {"midas": "MiDaS", "leres": "LeReS", "zoedepth": "ZoeDepth"}
# Columns: Table 1/2 block, then the Table 7/8 block. ORD is the paper's Eq. 13 (our ord_rank).
PAPER_COLUMNS = (
    ("delta1", "δ1↑"), ("abs_rel", "REL↓"), ("ord_rank", "ORD↓"), ("d3r", "D3R↓"),
    ("abs_rel", "AbsRel↓"), ("sq_rel", "SqRel↓"), ("rmse", "RMSE↓"), ("log10", "log10↓"), ("delta1", "δ1↑"),
    ("delta2", "δ2↑"), ("delta3", "δ3↑"), ("ord_rank", "ORD↓"), ("d3r", "D3R↓"),
)
_FULL = ("abs_rel", "sq_rel", "rmse", "log10", "delta1", "delta2", "delta3", "ord_rank", "d3r")
_SHORT = ("delta1", "abs_rel", "ord_rank")


def _paper(keys, values):
    return dict(zip(keys, values))


# Paper-reported numbers (docs/method.md §11; the paper's Tables 1, 2, 7, 8): {(dataset, stage, predictor, row)}.
# Middlebury2021 rows carry the full Table 7/8 metrics; Multiscopic and Hypersim only Table 1/2's three.
# The base predictor's row is the same in both stages (Tables 1 and 7).
PAPER_NUMBERS: dict[tuple[str, str, str, str], dict[str, float]] = {}
for _pred, _base, _one, _two in (
        ("midas", (0.117, 0.576, 3.752, 0.052, 0.868, 0.973, 0.992, 0.384, 0.334),
         (0.112, 0.545, 3.668, 0.050, 0.879, 0.979, 0.994, 0.299, 0.220),
         (0.115, 0.563, 3.710, 0.052, 0.871, 0.973, 0.993, 0.303, 0.248)),
        ("leres", (0.123, 0.464, 3.040, 0.052, 0.847, 0.969, 0.992, 0.326, 0.359),
         (0.120, 0.452, 2.985, 0.050, 0.862, 0.971, 0.993, 0.305, 0.216),
         (0.123, 0.459, 3.005, 0.052, 0.861, 0.969, 0.991, 0.309, 0.214)),
        ("zoedepth", (0.104, 0.433, 2.724, 0.043, 0.900, 0.970, 0.993, 0.225, 0.208),
         (0.100, 0.406, 2.674, 0.042, 0.905, 0.973, 0.994, 0.218, 0.187),
         (0.096, 0.350, 2.432, 0.041, 0.913, 0.977, 0.995, 0.202, 0.125))):
    for _stage in ("one", "two"):
        PAPER_NUMBERS["middlebury2021", _stage, _pred, "base"] = _paper(_FULL, _base)
    PAPER_NUMBERS["middlebury2021", "one", _pred, "sddr"] = _paper(_FULL, _one)
    PAPER_NUMBERS["middlebury2021", "two", _pred, "sddr"] = _paper(_FULL, _two)
for _ds, _rows in (
        ("multiscopic", {"midas": ((0.839, 0.130, 0.292), (0.852, 0.122, 0.267), (0.858, 0.120, 0.263)),
                         "leres": ((0.863, 0.111, 0.272), (0.870, 0.108, 0.259), (0.870, 0.109, 0.268)),
                         "zoedepth": ((0.896, 0.097, 0.205), (0.904, 0.092, 0.199), (0.908, 0.091, 0.197))}),
        ("hypersim", {"midas": ((0.781, 0.169, 0.344), (0.791, 0.166, 0.318), (0.799, 0.154, 0.322)),
                      "leres": ((0.853, 0.123, 0.279), (0.862, 0.120, 0.273), (0.858, 0.123, 0.271)),
                      "zoedepth": ((0.927, 0.088, 0.198), (0.930, 0.086, 0.191), (0.933, 0.083, 0.189))})):
    for _pred, (_base, _one, _two) in _rows.items():
        for _stage in ("one", "two"):
            PAPER_NUMBERS[_ds, _stage, _pred, "base"] = _paper(_SHORT, _base)
        PAPER_NUMBERS[_ds, "one", _pred, "sddr"] = _paper(_SHORT, _one)
        PAPER_NUMBERS[_ds, "two", _pred, "sddr"] = _paper(_SHORT, _two)


def _cell(v) -> str:
    return f"{v:.3f}" if isinstance(v, (int, float)) and math.isfinite(v) else "–"


def paper_report(dataset: str, summary: Mapping[str, Mapping[str, float]], *, gt: str, stage: str = "one",
                 predictor: str | None = None, images: int | None = None, source: str = "",
                 protocol: str = "") -> str:
    """Markdown in the layout of the SDDR paper's Tables 1/2 and 7/8 for one of its datasets.

    Columns: δ1, REL (AbsRel), ORD (our ORD_rank, the paper's Eq. 13), D3R, then AbsRel, SqRel, RMSE, log10,
    δ1, δ2, δ3, ORD, D3R. Rows: ours for each prediction in `summary` ('refined'/'prediction', 'low',
    'high'), then the paper-reported rows of `predictor` (all three predictors when None) for `stage`
    ("one": Tables 1/7; "two": Tables 2/8). The header names the GT switch `gt` ("legacy_uint8" | "float").
    """
    if dataset not in PAPER_DATASETS:
        raise UserError(f"--report paper: the SDDR paper reports {', '.join(PAPER_DATASETS)}; got {dataset!r} "
                        "(use the default table for other datasets)")
    if stage not in ("one", "two"):
        raise UserError(f"--paper-stage: expected 'one' or 'two', got {stage!r}")
    if predictor is not None and predictor not in PAPER_PREDICTORS:
        raise UserError(f"--paper-predictor: expected one of {', '.join(PAPER_PREDICTORS)}, got {predictor!r}")
    tables = "Tables 1 and 7" if stage == "one" else "Tables 2 and 8"
    n = "" if images is None else f", {images} images"
    lines = [f"{PAPER_DATASETS[dataset]} in the layout of the SDDR paper's {tables} ({stage}-stage{n}); "
             f"GT: {gt} (legacy_uint8 = the official Middlebury2021 script's uint8 cast, "
             f"{'on' if gt == 'legacy_uint8' else 'off'}){'; protocol ' + protocol if protocol else ''}"
             f"{'; ours: ' + source if source else ''}. ORD = ORD_rank (Eq. 13); our ORD/D3R are not expected "
             "to match the paper's exactly. Paper-reported rows from the paper; – = not reported.", ""]
    lines.append("| row | " + " | ".join(label for _, label in PAPER_COLUMNS) + " |")
    lines.append("|---|" + "---:|" * len(PAPER_COLUMNS))
    ours = {"refined": "ours: refined", "prediction": "ours: prediction", "low": "ours: low input",
            "high": "ours: high input"}
    for key, label in ours.items():
        if key in summary:
            lines.append(f"| {label} | " + " | ".join(_cell(summary[key].get(k)) for k, _ in PAPER_COLUMNS) + " |")
    for pred in ([predictor] if predictor else list(PAPER_PREDICTORS)):
        name = PAPER_PREDICTORS[pred]
        for row, label in (("base", f"paper-reported: {name} (base)"), ("sddr", f"paper-reported: {name} + SDDR")):
            vals = PAPER_NUMBERS[dataset, stage, pred, row]
            lines.append(f"| {label} | " + " | ".join(_cell(vals.get(k)) for k, _ in PAPER_COLUMNS) + " |")
    return "\n".join(lines) + "\n"
