"""Quality of the self-distillation pseudo-labels G_S (docs/method.md §6) on held-out synthetic scenes.

For each held-out image of the synthetic config's data, the label pass (`training.labels.label_body`, the
training loop's own body: the student's low/high maps, the simulated predictor re-run on every window
with the example's key) is run with the schedule cut after each step, and the label depth D_s and edge map
G_s are scored against the ground truth:

* boundary F1 (Depth Pro's, on D_s aligned to the GT by least squares) after the global pass and after each
  window step (`f1_by_step`);
* Pearson correlation of G_s with the Sobel magnitude of the GT (`sobel_corr_by_step`);
* the share of `mask_edge` pixels on the 2-pixel border of the image against the border's share of the
  pixels (`border_share_of_mask_edge`, `border_share_of_pixels`);
* with `--metrics`, the held-out metrics of the training loop's evaluation (`eval.evaluate.evaluate_maps`:
  δ1, AbsRel, ORD_boost, D3R, boundary F1) of D_s after each step, beside the low and high inputs
  (`metrics_by_step`, `inputs`). D_s after the last window step is the two-stage refinement of the image
  (docs/method.md §5.2), so this compares two-stage inference with the high input on the same images.

Without `--checkpoint` the refiner is a stand-in that copies its high input, so the numbers measure what the
windows' predictions add; with a training workdir (or converted checkpoint) the trained refiner is the
teacher. Runs in a few minutes on 2 cores.

    python benchmarks/labels.py [--config configs/synthetic.py] [--checkpoint WORKDIR] [--num 16] [--metrics]
        [--seed K] [--json out.json]

`--seed` sets the config's seed, which draws the held-out low/high maps (and the windows' predictions): a
training run's own evaluation uses its seed's maps.
"""
from __future__ import annotations

import argparse
import functools
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def copy_high(params, low, high):
    """Stand-in refiner: returns its high input (min-max), so a label step adds exactly the windows' detail."""
    del params, low
    return high


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    den = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / den) if den > 0 else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/synthetic.py")
    ap.add_argument("--checkpoint", default="", help="training workdir / converted dir / .pt (default: copy-high)")
    ap.add_argument("--data-dir", default="runs/data")
    ap.add_argument("--num", type=int, default=16, help="held-out images")
    ap.add_argument("--schedule", nargs="*", default=None,
                    help="window steps as PIECES,COVER (default: the config's labels.schedule)")
    ap.add_argument("--size", type=int, default=0, help="window refiner size (default: the config's labels.size)")
    ap.add_argument("--metrics", action="store_true",
                    help="also the held-out metrics (with D3R and ORD) of D_s after each step and of the inputs")
    ap.add_argument("--seed", type=int, default=None, help="the config's seed (default: the config's own)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from sddr_jax import edges
    from sddr_jax.data.pipeline import TrainData
    from sddr_jax.eval import metrics
    from sddr_jax.eval.evaluate import evaluate_maps, summarize
    from sddr_jax.training.config import load_config
    from sddr_jax.training.labels import label_body, label_options, label_predictor

    config = load_config(args.config)
    config.data.data_dir = args.data_dir
    config.eval.num_examples = args.num
    if args.seed is not None:
        config.seed = args.seed
    if args.size:
        config.labels.size = args.size
    if args.schedule is not None:
        config.labels.schedule = tuple((int(p), float(c)) for p, c in (x.split(",") for x in args.schedule))
    opts = label_options(config)
    schedule = opts.pop("schedule")
    params = {}
    if args.checkpoint:
        from sddr_jax.checkpoints import load_refiner

        params, _ = load_refiner(args.checkpoint)
    else:
        opts["refiner_fn"] = copy_high
    _, predictor = label_predictor(config)
    data = TrainData(config)
    fns = [jax.jit(functools.partial(label_body, axis_name=None, schedule=schedule[:k], with_depth=True, **opts))
           for k in range(len(schedule) + 1)]
    f1 = [[] for _ in fns]
    corr = [[] for _ in fns]
    edge_border = edge_total = 0
    rows = []
    t0 = time.perf_counter()
    for batch, n_real in data.eval_batches(1):
        b = {k: batch[k] for k in ("rgb", "low", "high", "depth", "valid", "key") if k in batch}
        maps = {}
        for k, fn in enumerate(fns):
            lab = jax.device_get(fn(params, b, predictor))
            if args.metrics:
                maps[f"step{k}"] = np.asarray(lab["depth"])
            for i in range(n_real):
                gt, valid = batch["depth"][i, ..., 0], batch["valid"][i, ..., 0]
                if not args.metrics:  # with --metrics, evaluate_maps below scores boundary F1 (the same measure)
                    d = np.asarray(metrics.align_prediction(lab["depth"][i, ..., 0], gt, valid))
                    f1[k].append(metrics.boundary_f1(d, gt, valid))
                g_gt = np.asarray(edges.sobel_abs(jnp.asarray(gt), border="replicate"))
                corr[k].append(_pearson(lab["edge"][i, 1:-1, 1:-1, 0], g_gt[1:-1, 1:-1]))
                if k == len(fns) - 1:
                    m = lab["mask_edge"][i, ..., 0]
                    ring = np.ones_like(m)
                    ring[2:-2, 2:-2] = False
                    edge_border += int((m & ring).sum())
                    edge_total += int(m.sum())
        if args.metrics:
            maps.update(low=np.asarray(batch["low"]), high=np.asarray(batch["high"]))
            rows += evaluate_maps({k: v[:n_real] for k, v in maps.items()}, np.asarray(batch["depth"])[:n_real],
                                  np.asarray(batch["valid"])[:n_real], edge_metrics=True)
    if rows:
        f1 = [[r[f"step{k}"]["boundary_f1"] for r in rows] for k in range(len(fns))]
    h, w = batch["depth"].shape[1:3]
    pixel_share = 1.0 - (h - 4) * (w - 4) / (h * w)
    out = {
        "refiner": args.checkpoint or "copy-high stand-in",
        "config": args.config, "seed": int(config.seed), "num_images": len(f1[0]),
        "schedule": [list(s) for s in schedule],
        "f1_by_step": [float(np.mean(x)) for x in f1],
        "sobel_corr_by_step": [float(np.mean(x)) for x in corr],
        "border_share_of_mask_edge": edge_border / max(edge_total, 1),
        "border_share_of_pixels": pixel_share,
        "seconds": time.perf_counter() - t0,
        "load_average": os.getloadavg(),
    }
    print(f"refiner: {out['refiner']}   images: {out['num_images']}   schedule: {schedule}   "
          f"window refiner size: {opts['size']}")
    print(f"{'after':>14} {'boundary F1':>12} {'corr(G_s, G_gt)':>16}")
    names = ["global pass"] + [f"step {k} {schedule[k - 1]}" for k in range(1, len(fns))]
    for name, a, c in zip(names, out["f1_by_step"], out["sobel_corr_by_step"]):
        print(f"{name:>14} {a:12.4f} {c:16.4f}")
    print(f"mask_edge on the 2-px border: {out['border_share_of_mask_edge']:.4f} "
          f"(the border is {pixel_share:.4f} of the pixels)")
    if rows:
        summary = summarize(rows)
        out["metrics_by_step"] = [summary[f"step{k}"] for k in range(len(fns))]
        out["inputs"] = {k: summary[k] for k in ("low", "high")}
        keys = ("delta1", "abs_rel", "ord_boost", "d3r", "boundary_f1")
        print(f"{'held-out':>14} " + " ".join(f"{k:>11}" for k in keys))
        for name, m in [*zip(names, out["metrics_by_step"]), ("low input", out["inputs"]["low"]),
                        ("high input", out["inputs"]["high"])]:
            print(f"{name:>14} " + " ".join(f"{m[k]:11.4f}" for k in keys))
    out["seconds"] = time.perf_counter() - t0
    print(f"{out['seconds']:.0f} s; load average {out['load_average']}")
    if args.json:
        from sddr_jax.io import write_json_atomic

        write_json_atomic(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
