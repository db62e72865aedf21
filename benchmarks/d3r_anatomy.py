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
back, which isolates the interpolation's smoothing from the shift; `--blur SIGMA`, repeatable: also each refined
map and the high input blurred by a Gaussian of SIGMA px, a diagnostic of how much of a map's D3R comes from
sharp transitions drawn at uncertain positions; `--breakdown`: also D3R per group of pairs,
by the distance from the pair's nearer centre to a GT depth edge and by the pair's GT depth ratio, so a map's
errors can be placed: on the edges or between them), with, for each: the mean D3R
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


EDGE_DISTANCE_BINS = (1.0, 2.0, 3.0, 5.0)
GT_RATIO_BINS = (1.15, 1.3, 1.6, 2.5)


def edge_distance(gt: np.ndarray, valid: np.ndarray, threshold: float = 1.05) -> np.ndarray:
    """Euclidean distance (px) of every pixel to the nearest GT depth-edge pixel: a valid pixel whose depth and a
    valid 4-neighbour's differ by a ratio above `threshold` (boundary F1's lowest threshold); both pixels of such
    a pair are edge pixels, so a distance below 1 means on the edge."""
    from scipy import ndimage

    d = np.where(valid, np.maximum(gt, 1e-6), np.nan)
    edge = np.zeros(d.shape, bool)
    for a, b in ((d[:, 1:], d[:, :-1]), (d[1:, :], d[:-1, :])):
        with np.errstate(invalid="ignore"):
            step = np.maximum(a / b, b / a) > threshold
        if a.shape[1] != d.shape[1]:
            edge[:, 1:] |= step
            edge[:, :-1] |= step
        else:
            edge[1:, :] |= step
            edge[:-1, :] |= step
    if not edge.any():  # no edge at all: every pixel is infinitely far (edt would measure to the array's border)
        return np.full(d.shape, np.inf)
    return ndimage.distance_transform_edt(~edge)


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
    ap.add_argument("--blur", action="append", default=[], type=float, metavar="SIGMA",
                    help="also score each refined map (and the high input) blurred by a Gaussian of SIGMA pixels "
                         "(scipy.ndimage.gaussian_filter, edge values extended): a diagnostic of how much of a "
                         "map's D3R comes from sharp transitions at uncertain positions; repeatable")
    ap.add_argument("--seed", type=int, default=None,
                    help="the config's seed, which draws the held-out low/high maps (default: the config's own; a "
                         "training run's own evaluation uses its seed's maps)")
    ap.add_argument("--breakdown", action="store_true",
                    help="also D3R (pooled over pairs) by the distance of a pair's nearer centre to the nearest GT "
                         "depth edge (a 4-neighbour depth ratio above 1.05, boundary F1's lowest threshold) and by "
                         "the pair's GT ratio")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    shifts = []
    for spec in args.shift:
        try:
            dy, dx = (float(v) for v in spec.split(","))
        except ValueError:
            ap.error(f"--shift: expected DY,DX (two numbers, pixels), got {spec!r}")
        shifts.append((dy, dx))
    for sigma in args.blur:
        if not sigma > 0:
            ap.error(f"--blur: expected a Gaussian sigma > 0 (pixels), got {sigma}")

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
    if args.seed is not None:
        config.seed = args.seed
    batches = list(TrainData(config).eval_batches(1))
    refiners = {}
    for spec in args.checkpoint:
        path, _, step = spec.partition("@")
        params, cfg, got = load_training_checkpoint(path, step=int(step) if step else None)
        mc = model_config_dict(cfg.get("model"))
        fn = jax.jit(lambda p, lo, hi, mc=mc: refiner_inference(p, lo, hi, model_config=mc).refined)
        refiners[f"refined, {path} step {got}"] = (fn, params)

    rows: dict[str, dict[str, list]] = {}
    pair_errors: dict[str, list] = {}  # --breakdown: per map, per image, the pairs' errors
    pair_groups: list[tuple[np.ndarray, np.ndarray]] = []  # per image: (edge distance, GT ratio) per pair

    def score(name: str, pred: np.ndarray, gt: np.ndarray, valid: np.ndarray) -> None:
        p = metrics.d3r_pair_errors(pred, gt, pred_space="depth")
        o = metrics.d3r_outcomes_of_pairs(p)
        r = rows.setdefault(name, {k: [] for k in ("d3r", "pairs", "flat", "reversed", "distance", "boundary_f1")})
        r["d3r"].append((o["flat"] + 2 * o["reversed"]) / o["pairs"] if o["pairs"] else float("nan"))
        r["pairs"].append(o["pairs"])
        r["flat"].append(o["flat"])
        r["reversed"].append(o["reversed"])
        r["distance"].append(o["distance_sum"])
        if args.breakdown:
            pair_errors.setdefault(name, []).append(p["error"])
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
            for sigma in args.blur:
                for name, m in [("high input", batch["high"][i, ..., 0]),
                                *((name, r[i, ..., 0]) for name, r in refined.items())]:
                    maps[f"{name}, blurred (sigma {sigma:g} px)"] = ndimage.gaussian_filter(
                        np.asarray(m, np.float64), sigma, mode="nearest")
            if args.breakdown:
                p = metrics.d3r_pair_errors(gt, gt, pred_space="depth")
                dist = edge_distance(gt, valid)
                near = np.minimum(dist[tuple(p["centre_a"].T)], dist[tuple(p["centre_b"].T)])
                pair_groups.append((near, p["gt_ratio"]))
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
    breakdown = {}
    if args.breakdown:
        near = np.concatenate([g[0] for g in pair_groups])
        ratio = np.concatenate([g[1] for g in pair_groups])
        groups = {"edge_distance_px": (near, EDGE_DISTANCE_BINS), "gt_ratio": (ratio, GT_RATIO_BINS)}
        for key, (values, bins) in groups.items():
            which = np.digitize(values, bins)
            labels = [f"[{lo:g}, {hi:g})" for lo, hi in zip((-np.inf,) + bins, bins + (np.inf,))]
            share = [float(np.mean(which == k)) for k in range(len(labels))]
            breakdown[key] = {"groups": labels, "pair_share": share, "d3r_pooled": {}}
            for name, errs in pair_errors.items():
                e = np.concatenate(errs)
                breakdown[key]["d3r_pooled"][name] = [float(e[which == k].mean()) if np.any(which == k) else None
                                                      for k in range(len(labels))]
            print(f"\nD3R pooled over the pairs of each group, by {key} (share of pairs in brackets)")
            print(f"{'map':>{width}} " + " ".join(f"{lab + f' ({sh:.2f})':>18}" for lab, sh in zip(labels, share)))
            for name, row in breakdown[key]["d3r_pooled"].items():
                print(f"{name:>{width}} " + " ".join(f"{v:18.4f}" if v is not None else f"{'-':>18}" for v in row))
    if args.json:
        from sddr_jax.io import write_json_atomic

        pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.json, {"config": args.config, "seed": int(config.seed),
                                      "num_images": len(rows["low input"]["d3r"]),
                                      "maps": summary, "breakdown": breakdown, "load_average": os.getloadavg()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
