"""What a D3R value is made of, on the held-out synthetic scenes (docs/results.md, "What D3R measures here").

D3R (Boost's protocol, docs/method.md §9.4) compares the depth order of the centres of adjacent SLIC
superpixels wherever the ground truth differs by more than 10 %. At S = 256 with 5,000 segments the centres
of a counted pair are about 4 px apart, so D3R measures where an edge sits to the pixel. This script scores,
on the same images:

* reference maps made from the ground truth itself: band-limited to 64 / 128 / 192 px (linear,
  antialiased, then the bilinear upsampling the predictors' maps get) and Gaussian-blurred (sigma 1, 2 px),
  i.e. what a perfect predictor at each resolution would score;
* the low and high inputs of the config, and the refined map of every `--checkpoint` (a training workdir,
  optionally `WORKDIR@STEP`);

(`--roll`: also each refined map shifted by one pixel in the 8 directions; `--shift DY,DX`, repeatable: also
each refined map shifted by a sub-pixel amount, cubic spline interpolation, and the same map shifted there and
back, which isolates the interpolation's smoothing from the shift), with, for each: the mean D3R
over images (the evaluator's mean, `metrics.aggregate`: an image scoring exactly 0 is left out, as in the
official code, so the numbers match the training tables), the counted pairs, the share of pairs whose order
the map gets flat (within 1 %: error 1) or reversed (error 2), the mean centre distance of the pairs, and
boundary F1 for context. Prints a table, writes `--json`. A few minutes on 2 cores.

    python benchmarks/d3r_anatomy.py --checkpoint runs/pretrain@500 --checkpoint runs/pretrain@2000 \
        --json runs/bench/d3r_anatomy.json
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def band_limited(gt: np.ndarray, s: int) -> np.ndarray:
    """`gt` (H, W) as an s x s prediction would carry it: linear, antialiased down to s, then the bilinear
    upsampling the predictors' maps get (also used by edge_registration.py)."""
    from sddr_jax.ops import resize_bilinear

    h, w = gt.shape
    small = jax.image.resize(jnp.asarray(gt), (s, s), "linear", antialias=True)
    return np.asarray(resize_bilinear(small[None, :, :, None], (h, w))[0, ..., 0])


def _reference_maps(gt: np.ndarray) -> dict[str, np.ndarray]:
    import cv2

    out = {f"GT band-limited to {s} px": band_limited(gt, s) for s in (64, 128, 192)}
    for sigma in (1.0, 2.0):
        out[f"GT blurred, sigma {sigma:g} px"] = cv2.GaussianBlur(gt, (0, 0), sigma)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/synthetic.py:acceptance")
    ap.add_argument("--data-dir", default="runs/data")
    ap.add_argument("--num", type=int, default=32, help="held-out images (default 32, the whole tiny test split)")
    ap.add_argument("--checkpoint", action="append", default=[], metavar="WORKDIR[@STEP]",
                    help="a training workdir whose refined map is scored (repeatable; @STEP picks a saved step)")
    ap.add_argument("--roll", action="store_true",
                    help="also score each refined map rolled by one pixel in the 8 directions (is the error an offset?)")
    ap.add_argument("--shift", action="append", default=[], metavar="DY,DX",
                    help="also score each refined map shifted by (DY, DX) pixels, sub-pixel (scipy.ndimage.shift, "
                         "cubic, edge values extended), and shifted there and back (the interpolation's smoothing "
                         "alone); repeatable")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    shifts = []
    for spec in args.shift:
        try:
            dy, dx = (float(v) for v in spec.split(","))
        except ValueError:
            ap.error(f"--shift: expected DY,DX (two numbers, pixels), got {spec!r}")
        shifts.append((dy, dx))

    from scipy import ndimage

    from sddr_jax.checkpoints import load_training_checkpoint
    from sddr_jax.data.pipeline import TrainData
    from sddr_jax.eval import metrics
    from sddr_jax.inference.one_stage import refiner_inference
    from sddr_jax.models.refiner import model_config_dict
    from sddr_jax.training.config import load_config

    config = load_config(args.config)
    config.data.data_dir = args.data_dir
    config.eval.num_examples = args.num
    batches = list(TrainData(config).eval_batches(1))
    refiners = {}
    for spec in args.checkpoint:
        path, _, step = spec.partition("@")
        params, cfg, got = load_training_checkpoint(path, step=int(step) if step else None)
        mc = model_config_dict(cfg.get("model"))
        fn = jax.jit(lambda p, lo, hi, mc=mc: refiner_inference(p, lo, hi, model_config=mc).refined)
        refiners[f"refined, {path} step {got}"] = (fn, params)

    rows: dict[str, dict[str, list]] = {}

    def score(name: str, pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> None:
        o = metrics.d3r_outcomes(pred, gt, pred_space="depth")
        r = rows.setdefault(name, {k: [] for k in ("d3r", "pairs", "flat", "reversed", "distance", "boundary_f1")})
        r["d3r"].append((o["flat"] + 2 * o["reversed"]) / o["pairs"] if o["pairs"] else float("nan"))
        r["pairs"].append(o["pairs"])
        r["flat"].append(o["flat"])
        r["reversed"].append(o["reversed"])
        r["distance"].append(o["distance_sum"])
        aligned = np.asarray(metrics.align_prediction(pred, gt, valid), np.float64)  # as metrics.image_metrics
        r["boundary_f1"].append(metrics.boundary_f1(np.maximum(aligned, 1e-6), gt, valid))

    for batch, n in batches:
        refined = {name: np.asarray(fn(params, batch["low"], batch["high"])) for name, (fn, params) in refiners.items()}
        for i in range(n):
            gt, valid = batch["depth"][i, ..., 0], batch["valid"][i, ..., 0]
            maps = {**_reference_maps(gt), "low input": batch["low"][i, ..., 0], "high input": batch["high"][i, ..., 0],
                    **{name: r[i, ..., 0] for name, r in refined.items()}}
            if args.roll:
                maps.update({f"{name}, rolled ({dy:+d}, {dx:+d})": np.roll(r[i, ..., 0], (dy, dx), (0, 1))
                             for name, r in refined.items() for dy in (-1, 0, 1) for dx in (-1, 0, 1) if dy or dx})
            for name, r in refined.items():
                for dy, dx in shifts:
                    moved = ndimage.shift(r[i, ..., 0], (dy, dx), order=3, mode="nearest")
                    maps[f"{name}, shifted ({dy:+g}, {dx:+g})"] = moved
                    maps[f"{name}, shifted ({dy:+g}, {dx:+g}) and back"] = ndimage.shift(moved, (-dy, -dx), order=3,
                                                                                          mode="nearest")
            for name, m in maps.items():
                score(name, np.asarray(m, np.float32), gt, valid)

    summary = {}
    for name, r in rows.items():
        pairs = sum(r["pairs"])
        means = metrics.aggregate({"d3r": d, "boundary_f1": f} for d, f in zip(r["d3r"], r["boundary_f1"]))
        summary[name] = {"d3r": means["d3r"], "pairs": int(pairs),
                         "flat_share": sum(r["flat"]) / pairs, "reversed_share": sum(r["reversed"]) / pairs,
                         "mean_centre_distance_px": sum(r["distance"]) / pairs,
                         "boundary_f1": means["boundary_f1"]}
    print(f"D3R anatomy, {args.config}, {len(rows['low input']['d3r'])} held-out images; "
          f"load average {os.getloadavg()}")
    width = max(52, *(len(n) for n in summary))
    print(f"{'map':>{width}} {'D3R':>7} {'pairs':>7} {'flat':>7} {'reversed':>9} {'dist px':>8} {'F1':>7}")
    for name, s in summary.items():
        print(f"{name:>{width}} {s['d3r']:7.4f} {s['pairs']:7d} {s['flat_share']:7.4f} {s['reversed_share']:9.4f} "
              f"{s['mean_centre_distance_px']:8.2f} {s['boundary_f1']:7.4f}")
    if args.json:
        from sddr_jax.io import write_json_atomic

        pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.json, {"config": args.config, "num_images": len(rows["low input"]["d3r"]),
                                      "maps": summary, "load_average": os.getloadavg()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
