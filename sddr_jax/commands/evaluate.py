"""`sddr-jax evaluate`: metrics of depth predictions (or of a checkpoint) on a built dataset (spec 9).

    sddr-jax evaluate --dataset middlebury2021 --data_dir DIR --predictions OUT_DIR
    sddr-jax evaluate --dataset sddr_synthetic --data_dir DIR --config tiny --checkpoint CKPT

Predictions are matched to the dataset's examples by name (`<name>.png/.npy/.pfm/.tif[f]`) and resized to the
ground-truth size with OpenCV linear (spec 9.2). With --checkpoint the refiner runs the one-stage pipeline on
the dataset's stored low/high maps (or, with --simulate, on the simulated predictor's maps). The stored low
and high maps are evaluated beside it as baselines. Table: delta1, AbsRel, SqRel, RMSE, log10, delta2,
delta3, ORD (Boost's and Eq. 13's), D3R and boundary F1; written as Markdown and JSON.
"""
from __future__ import annotations

import json
import math
import pathlib
import time
from typing import Any, Mapping

import numpy as np

from sddr_jax.errors import UserError

HELP = "evaluate depth predictions or a checkpoint on a dataset"
PRED_EXTS = (".png", ".npy", ".pfm", ".tif", ".tiff")
# Middlebury2021's official script casts GT depth to uint8 (spec 9.2); every other dataset uses float GT.
LEGACY_UINT8_DATASETS = ("middlebury2021",)
# Superpixels for D3R/ORD on the GT resized by 0.2 for Middlebury, 1.0 elsewhere (spec 9.4).
SUPERPIXEL_SCALE = {"middlebury2021": 0.2}


def add_arguments(parser) -> None:
    parser.add_argument("--dataset", required=True, help="dataset name (see 'sddr-jax datasets list')")
    parser.add_argument("--data_dir", required=True, help="TFDS data_dir the dataset was built into")
    parser.add_argument("--config", default=None, help="builder config of the dataset (e.g. tiny)")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--predictions", help="folder of predicted depth maps named like the examples")
    src.add_argument("--checkpoint", help="refiner checkpoint: official .pt, converted dir or training workdir")
    parser.add_argument("--size", type=int, default=2048, help="refiner working size S with --checkpoint")
    parser.add_argument("--simulate", action="store_true",
                        help="with --checkpoint: make low/high with the simulated predictor when none are stored")
    parser.add_argument("--no-baselines", action="store_true", help="do not evaluate the stored low/high maps")
    parser.add_argument("--align", choices=("lsq", "median", "none"), default="lsq",
                        help="alignment of each prediction to the GT (default: least-squares scale and shift)")
    parser.add_argument("--space", choices=("depth", "disparity"), default="depth",
                        help="space of the alignment (default depth, as the official script)")
    parser.add_argument("--pred-space", choices=("depth", "disparity"), default="depth",
                        help="what the predictions are, for D3R/ORD (Boost treats them as disparity)")
    parser.add_argument("--gt", choices=("legacy_uint8", "float"), default=None,
                        help="Middlebury GT path: the official uint8 cast (default for middlebury2021) or float")
    parser.add_argument("--no-edge-metrics", action="store_true", help="skip ORD, D3R and boundary F1 (faster)")
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N examples")
    parser.add_argument("--skip-missing", action="store_true",
                        help="skip examples without a prediction file (reported with their count)")
    parser.add_argument("--output", default=None,
                        help="write OUTPUT.md and OUTPUT.json (default: print the table only)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


def _find_prediction(folder: pathlib.Path, name: str) -> pathlib.Path | None:
    for ext in PRED_EXTS:
        p = folder / f"{name}{ext}"
        if p.is_file():
            return p
    return None


def _resize_linear(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    import cv2

    if x.shape == hw:
        return x.astype(np.float32)
    return cv2.resize(x.astype(np.float32), (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)


def _ground_truth(depth: np.ndarray, legacy_uint8: bool) -> tuple[np.ndarray, np.ndarray]:
    from sddr_jax import metrics as M

    gt = np.asarray(depth, np.float64)
    ok = np.isfinite(gt) & (gt > 0)
    if legacy_uint8:
        gt = M.uint8_wrap(np.where(ok, gt, 0.0)).astype(np.float64)
        ok = gt > 0
    return np.where(ok, gt, 0.0), ok


def evaluate(args) -> dict[str, Any]:
    """Runs the evaluation of `args` (see add_arguments) and returns {'summary', 'per_image', 'settings'}."""
    from sddr_jax import io
    from sddr_jax import metrics as M
    from sddr_jax.input_pipeline import data_source, decode_record

    legacy = (args.gt or ("legacy_uint8" if args.dataset in LEGACY_UINT8_DATASETS else "float")) == "legacy_uint8"
    if args.limit < 0:
        raise UserError(f"--limit: expected a count >= 0, got {args.limit}")
    pred_dir = None
    params = None
    if args.predictions:
        pred_dir = pathlib.Path(args.predictions)
        if not pred_dir.is_dir():
            raise FileNotFoundError(f"--predictions {pred_dir}: no such folder")
    else:
        from sddr_jax.commands.common import load_any_params
        from sddr_jax.refine import check_size

        check_size(args.size, "--size")
        params = load_any_params(args.checkpoint)
    source = data_source(args.dataset, args.data_dir, args.split, args.config)
    n = len(source) if not args.limit else min(args.limit, len(source))
    if n == 0:
        raise UserError(f"dataset {args.dataset} split {args.split!r} is empty")
    name_of_pred = "prediction" if pred_dir is not None else "refined"
    rows: list[dict[str, Any]] = []
    missing: list[str] = []
    key = None
    for i in range(n):
        ex = decode_record(source[i])
        gt, valid = _ground_truth(ex["depth"], legacy)
        hw = gt.shape
        low, high = ex["low"], ex["high"]
        if low is None and args.simulate:
            import jax

            from sddr_jax.noise import simulate_prediction

            key = jax.random.PRNGKey(0) if key is None else key
            d = np.where(np.isfinite(ex["depth"]) & (ex["depth"] > 0), ex["depth"], np.nan)
            d = np.where(np.isnan(d), np.nanmean(d) if np.isfinite(d).any() else 1.0, d).astype(np.float32)
            lo, hi = simulate_prediction(d, jax.random.fold_in(key, i))
            low, high = np.asarray(lo), np.asarray(hi)
        preds: dict[str, np.ndarray] = {}
        if pred_dir is not None:
            path = _find_prediction(pred_dir, ex["name"])
            if path is None:
                if args.skip_missing:
                    missing.append(ex["name"])
                    continue
                raise FileNotFoundError(f"--predictions {pred_dir}: no prediction for example {ex['name']!r} "
                                        f"(looked for {ex['name']}{{{','.join(PRED_EXTS)}}}); "
                                        f"pass --skip-missing to evaluate the others")
            preds["prediction"] = _resize_linear(io.read_depth(path), hw)
        else:
            if low is None:
                raise UserError(f"dataset {args.dataset}: example {ex['name']!r} has no stored low/high "
                                f"predictions; pass --simulate to make them with the simulated predictor, or "
                                f"run a predictor and use --predictions")
            from sddr_jax.refine import refine_one_stage

            preds["refined"] = np.asarray(refine_one_stage(params, low, high, size=args.size, out_hw=hw),
                                          np.float32)
        if not args.no_baselines and low is not None:
            preds["low"] = _resize_linear(low, hw)
            preds["high"] = _resize_linear(high, hw)
        row = {"name": ex["name"]}
        for pname, p in preds.items():
            row[pname] = M.image_metrics(p, gt, valid, rgb=ex["rgb"].astype(np.float32) / 255.0,
                                       edge_metrics=not args.no_edge_metrics, align=args.align,
                                       space=args.space, pred_space=args.pred_space,
                                       superpixel_scale=SUPERPIXEL_SCALE.get(args.dataset, 1.0))
        rows.append(row)
        print(f"\r[{i + 1}/{n}] {ex['name']}", end="", flush=True)
    print()
    if not rows:
        raise UserError(f"no example evaluated ({len(missing)} without predictions)")
    names = [k for k in rows[0] if k != "name"]
    summary = {k: M.aggregate([r[k] for r in rows if k in r]) for k in names}
    settings = dict(dataset=args.dataset, config=args.config, split=args.split, images=len(rows),
                    skipped_missing=len(missing), align=args.align, space=args.space, pred_space=args.pred_space,
                    gt="legacy_uint8" if legacy else "float",
                    source=str(pred_dir) if pred_dir is not None else f"checkpoint {args.checkpoint} at S={args.size}")
    if missing:
        print(f"skipped {len(missing)} example(s) without a prediction: {', '.join(missing[:10])}"
              + (" ..." if len(missing) > 10 else ""))
    return {"summary": summary, "per_image": rows, "settings": settings, "columns": [name_of_pred, "low", "high"]}


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, Mapping):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def run(args) -> int:
    from sddr_jax.commands.common import metrics_table, write_text_atomic

    t0 = time.perf_counter()
    if args.output:
        out = pathlib.Path(args.output)
        for ext in (".md", ".json"):
            target = out.with_name(out.name + ext)
            if target.exists() and not args.overwrite:
                raise FileExistsError(f"{target}: already exists (use --overwrite to replace it)")
        if not out.parent.is_dir():
            raise FileNotFoundError(f"--output {out}: the folder {out.parent} does not exist")
    result = evaluate(args)
    s = result["settings"]
    columns = {"prediction": "prediction", "refined": "refined", "low": "low input", "high": "high input"}
    caption = (f"{s['dataset']} ({s['split']}, {s['images']} images), {s['source']}; alignment {s['align']} in "
               f"{s['space']} space, GT {s['gt']}. Best in bold.")
    table = metrics_table(result["summary"], columns, caption=caption)
    print(table)
    if args.output:
        out = pathlib.Path(args.output)
        write_text_atomic(out.with_name(out.name + ".md"), table, overwrite=args.overwrite)
        write_text_atomic(out.with_name(out.name + ".json"),
                          json.dumps(_json_safe({k: result[k] for k in ("settings", "summary", "per_image")}),
                                     indent=1), overwrite=args.overwrite)
        print(f"wrote {out}.md and {out}.json")
    print(f"evaluated in {time.perf_counter() - t0:.1f} s")
    return 0
