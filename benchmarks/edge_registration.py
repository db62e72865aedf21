"""Where does a refiner put an edge? Position error of a straight depth step across the working window.

A refiner that only sharpens should put every edge where its inputs have it. This script feeds trained
refiners a straight step (depth 0.3 | 0.7) at known positions across an S x S window, the low and high
inputs made from it as the synthetic benchmark makes its references (band-limited to S/4 and S/2: linear,
antialiased, then bilinear back up, so both inputs cross half-height exactly at the step), and measures
where the refined map crosses half-height (linear interpolation between pixels, averaged over the central
quarter of the rows). For each refiner it prints the error (refined crossing - true step) at every position,
for vertical and horizontal steps, and a straight-line fit error = offset + scale * (position - S/2): a
`scale` other than 0 means the map is stretched (docs/method.md §3.6, "Upsampling grid").

    python benchmarks/edge_registration.py --checkpoint runs/pretrain@2000 --checkpoint runs/sd_stride/seed0/phase1@2000 \
        --json runs/bench/edge_registration.json
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

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from d3r_anatomy import band_limited  # noqa: E402


def crossing(row: np.ndarray, centre: float) -> float:
    """Where `row` crosses half-way between its two ends (the crossing nearest `centre`), to sub-pixel."""
    lo, hi = row[:8].mean(), row[-8:].mean()
    d = np.sign(row - 0.5 * (lo + hi))
    idx = np.flatnonzero(np.diff(d) != 0)
    if idx.size == 0:
        return float("nan")
    i = idx[np.argmin(np.abs(idx - centre))]
    return float(i + (0.5 * (lo + hi) - row[i]) / (row[i + 1] - row[i]))


def step_maps(size: int, positions: list[int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(low, high, true crossing) for vertical steps between columns p-1 and p (crossing at p - 1/2)."""
    lows, highs = [], []
    for p in positions:
        gt = np.full((size, size), 0.3, np.float32)
        gt[:, p:] = 0.7
        lows.append(band_limited(gt, size // 4))
        highs.append(band_limited(gt, size // 2))
    return np.stack(lows)[..., None], np.stack(highs)[..., None], np.asarray(positions, np.float64) - 0.5


def errors(maps: np.ndarray, truth: np.ndarray, size: int) -> np.ndarray:
    rows = slice(3 * size // 8, 5 * size // 8)
    return np.array([np.nanmean([crossing(r, t) for r in m[rows]]) for m, t in zip(maps, truth)]) - truth


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", action="append", default=[], metavar="WORKDIR[@STEP]",
                    help="a training workdir whose refiner is probed (repeatable; @STEP picks a saved step)")
    ap.add_argument("--size", type=int, default=256, help="working size S (default 256, the synthetic benchmark's)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from sddr_jax.checkpoints import load_training_checkpoint
    from sddr_jax.inference.one_stage import refiner_inference
    from sddr_jax.models.refiner import model_config_dict

    s = args.size
    positions = list(range(s // 16, s - s // 16 + 1, s // 16))
    low, high, truth = step_maps(s, positions)
    rows = {"high input": {"vertical": errors(high[..., 0], truth, s)},
            "low input": {"vertical": errors(low[..., 0], truth, s)}}
    for spec in args.checkpoint:
        path, _, step = spec.partition("@")
        params, cfg, got = load_training_checkpoint(path, step=int(step) if step else None)
        mc = model_config_dict(cfg.get("model"))
        fn = jax.jit(lambda p, lo, hi, mc=mc: refiner_inference(p, lo, hi, model_config=mc).refined)
        vert = np.asarray(fn(params, jnp.asarray(low), jnp.asarray(high)))[..., 0]
        hor = np.asarray(fn(params, jnp.asarray(low.transpose(0, 2, 1, 3)),
                            jnp.asarray(high.transpose(0, 2, 1, 3))))[..., 0].transpose(0, 2, 1)
        rows[f"{path} step {got} ({mc['upsample']})"] = {"vertical": errors(vert, truth, s),
                                                         "horizontal": errors(hor, truth, s)}

    x = truth - s / 2
    out = {}
    print(f"Edge position error (refined crossing - true step, px) at S = {s}; load average {os.getloadavg()}")
    print("positions: " + " ".join(f"{p:g}" for p in truth))
    for name, r in rows.items():
        out[name] = {}
        for axis, e in r.items():
            scale, offset = np.polyfit(x, e, 1)
            out[name][axis] = {"errors_px": [round(float(v), 4) for v in e], "offset_px": float(offset),
                               "scale_px_per_100px": float(100 * scale), "mean_abs_px": float(np.mean(np.abs(e))),
                               "max_abs_px": float(np.max(np.abs(e)))}
            o = out[name][axis]
            print(f"{name:>52} {axis:>10}: offset {o['offset_px']:+.3f} px, scale {o['scale_px_per_100px']:+.3f} "
                  f"px/100 px, mean |err| {o['mean_abs_px']:.3f}, max |err| {o['max_abs_px']:.3f}")
            print(" " * 66 + " ".join(f"{v:+.2f}" for v in e))
    if args.json:
        from sddr_jax.io import write_json_atomic

        pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.json, {"size": s, "positions": [float(p) for p in truth], "maps": out,
                                      "load_average": os.getloadavg()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
