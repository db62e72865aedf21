"""Does self-distillation help? GT-only vs self-distillation from the same weights, over several seeds.

Per seed, on the acceptance schedule of `configs/synthetic.py:acceptance` (docs/results.md):

1. phase 1: `train.gt_only_steps` steps with L_gt only (one run, workdir `<out>/seed<k>/phase1`);
2. the phase-1 workdir is copied twice and each copy is resumed to `train.num_steps`: once with L_gt only
   (`gt_only`), once with the self-distillation rounds (`self_distillation`), so both branches start from
   the same parameters, optimizer state and data position;
3. both are scored on the held-out split (`eval.num_examples` images) with the training loop's evaluator.

`--ablation labels` adds a third branch that uses the teacher's refined depth D_S instead of G_S as the
edge label (paper Table 6). Prints a per-seed table and the means; `--json` writes `seeds` and, for each of
`gt_only`, `self_distillation` (and `d_s_label`), `low`, `high`, `phase1` (the refined map at the end of
phase 1), a dict metric -> list over seeds, and `machine` (CPU, jax, backend: a run on another CPU compiles
other float code, and training then takes another path from the same seed; docs/results.md measures how far).

    python benchmarks/self_distillation.py --seeds 3 --out runs/sd --json runs/sd/result.json
    python benchmarks/self_distillation.py --config configs/synthetic.py:acceptance,paper_loss --out runs/sd_paper
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

METRICS = ("delta1", "abs_rel", "ord", "d3r", "boundary_f1")
SOURCE = {"delta1": "delta1", "abs_rel": "abs_rel", "ord": "ord_boost", "d3r": "d3r", "boundary_f1": "boundary_f1"}
LOWER_BETTER = {"abs_rel", "ord", "d3r"}


def _train(config, workdir: pathlib.Path) -> dict:
    """Trains `config` in `workdir`; a workdir that already finished this many steps is read, not re-run."""
    from sddr_jax.training.train import train_and_evaluate

    done = workdir / "result.json"
    if done.is_file():
        result = json.loads(done.read_text())
        if int(result.get("step", -1)) == int(config.train.num_steps) and result.get("eval"):
            result.setdefault("seconds", float("nan"))
            return result
    t0 = time.perf_counter()
    result = train_and_evaluate(config, workdir)
    result["seconds"] = time.perf_counter() - t0
    # keep the wall time with the run (a later invocation that reads result.json reports it)
    done.write_text(json.dumps({**json.loads(done.read_text()), "seconds": result["seconds"]}, indent=1))
    return result


def _machine() -> dict:
    """Where the numbers came from: a rerun on another CPU compiles other float code and trains elsewhere."""
    import platform

    import jax
    import jaxlib

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    return {"cpu": cpu, "cpu_count": os.cpu_count(), "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "backend": jax.default_backend()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/synthetic.py:acceptance")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0)
    ap.add_argument("--out", default="runs/sd")
    ap.add_argument("--data-dir", default="runs/data")
    ap.add_argument("--ablation", choices=["labels"], default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override, as `sddr-jax train --config.KEY=VALUE` (repeatable; applied to "
                         "phase 1 and both branches, e.g. --set train.gt_only_steps=400 --set train.num_steps=600)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    from sddr_jax.training.config import load_config

    out = pathlib.Path(args.out)
    branches = ["gt_only", "self_distillation"] + (["d_s_label"] if args.ablation == "labels" else [])
    table = {name: {m: [] for m in METRICS} for name in branches + ["low", "high", "phase1"]}
    seeds, seconds = [], {}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        base = load_config(args.config, args.set)
        base.seed = seed
        base.data.data_dir = args.data_dir
        base.train.progress_bar = False
        base.train.tensorboard = False
        base.train.eval_every = 0
        gt_steps, num_steps = int(base.train.gt_only_steps), int(base.train.num_steps)
        p1 = base.copy_and_resolve_references()
        p1.train.num_steps = p1.train.gt_only_steps = gt_steps
        p1.train.checkpoint_every = gt_steps
        phase1 = out / f"seed{seed}" / "phase1"
        r1 = _train(p1, phase1)
        seconds[f"seed{seed}/phase1"] = r1["seconds"]
        results = {}
        for name in branches:
            c = base.copy_and_resolve_references()
            c.train.checkpoint_every = num_steps
            c.train.allow_schedule_change = True  # the branches continue phase 1 with their own schedule
            if name == "gt_only":
                c.train.gt_only_steps = num_steps
            if name == "d_s_label":
                c.labels.edge_from = "depth"
            wd = out / f"seed{seed}" / name
            if not wd.exists():
                shutil.copytree(phase1, wd)
            results[name] = _train(c, wd)
            seconds[f"seed{seed}/{name}"] = results[name]["seconds"]
        seeds.append(seed)
        ev = results["gt_only"]["eval"]
        for m in METRICS:
            for name in branches:
                table[name][m].append(float(results[name]["eval"]["refined"][SOURCE[m]]))
            table["phase1"][m].append(float(r1["eval"]["refined"][SOURCE[m]]))
            table["low"][m].append(float(ev["low"][SOURCE[m]]))
            table["high"][m].append(float(ev["high"][SOURCE[m]]))
        print(f"seed {seed}: " + "  ".join(f"{n} {results[n]['seconds']:.0f} s" for n in branches), flush=True)

    import numpy as np

    print(f"\nheld-out metrics ({args.config} {' '.join(args.set)}, seeds {seeds}); load average {os.getloadavg()}")
    header = f"{'prediction':>18} " + " ".join(f"{m:>12}" for m in METRICS)
    print(header)
    for name in ["low", "high", "phase1"] + branches:
        for i, seed in enumerate(seeds):
            print(f"{name + f' s{seed}':>18} " + " ".join(f"{table[name][m][i]:12.4f}" for m in METRICS))
        print(f"{name + ' mean':>18} " + " ".join(f"{np.mean(table[name][m]):12.4f}" for m in METRICS))
    sd, gt = table["self_distillation"], table["gt_only"]
    verdict = {m: (np.mean(sd[m]) < np.mean(gt[m])) if m in LOWER_BETTER else (np.mean(sd[m]) > np.mean(gt[m]))
               for m in METRICS}
    print("self-distillation better than GT-only on the mean: " + ", ".join(f"{m} {'yes' if v else 'no'}"
                                                                         for m, v in verdict.items()))
    if args.json:
        payload = {"config": args.config, "overrides": list(args.set), "seeds": seeds, **table, "seconds": seconds,
                   "sd_better_on_mean": {m: bool(v) for m, v in verdict.items()},
                   "load_average": os.getloadavg(), "machine": _machine()}
        from sddr_jax.io import write_json_atomic

        pathlib.Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.json, payload)
    return 0


if __name__ == "__main__":
    sys.exit(main())
