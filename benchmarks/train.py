"""Training throughput: steps/s and images/s of the SDDR train step (Refiner + loss + AdamW), pmap vs
jit(shard_map), at S = 512 and 1024.

Measures the step alone on synthetic device-resident batches (no input pipeline), in two phases: L_gt only,
and the full `official` loss with pseudo-labels given (their generation is measured separately with
--labels, as it runs once per step in self-distillation phases). On CPU compare the two wrappers side by
side in one run (ratios); on a GPU the absolute images/s (target: >= 50 images/s at 1024^2 on one H100).

    python benchmarks/train.py [--sizes 512 1024] [--batch-per-device 1] [--steps 3] [--json out.json]

`--config configs/synthetic.py:acceptance` instead times the training program of that config on its own
data: a phase-1 step (L_gt only) against a phase-2 step (the teacher's label pass on the batch, then the
full-loss step), side by side on the same batches (target: phase 2 <= 2x phase 1).

    python benchmarks/train.py --config configs/synthetic.py:acceptance --data-dir runs/data --steps 5 [--repeats 3]
        [--set optimizer.flatten=False]
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


def bench(size: int, mode: str, batch_per_device: int, steps: int, with_labels: bool, dtype: str) -> dict:
    from sddr_jax import losses
    from sddr_jax import training as T
    from sddr_jax.models import build_refiner

    config = T.default_config()
    config.model.dtype = dtype
    config.data.image_size = size
    model = build_refiner(config.model)
    tx = T.make_optimizer(config.optimizer, 1000)
    x = jnp.zeros((1, 128, 128, 1), jnp.float32)
    params = jax.device_get(model.init(jax.random.PRNGKey(0), x, x)["params"])
    placement = T.Placement(mode)
    state = placement.replicate(T.create_train_state(params, tx, 0))
    n = placement.num_local_devices * batch_per_device
    rng = np.random.default_rng(0)
    depth = rng.random((n, size, size, 1), dtype=np.float32) + 0.5
    batch = {"rgb": rng.random((n, size, size, 3), dtype=np.float32),
             "low": rng.random((n, size, size, 1), dtype=np.float32),
             "high": rng.random((n, size, size, 1), dtype=np.float32),
             "depth": depth, "valid": np.ones((n, size, size, 1), bool)}
    dev = placement.shard(batch)
    step = T.make_train_step(model.apply, losses.get_loss(config.loss.name), config.loss, tx, parallel=mode,
                             mesh=placement.mesh, with_labels=with_labels)
    args = (dev,)
    if with_labels:
        edge = np.abs(rng.standard_normal((n, size, size, 1))).astype(np.float32)
        lab = {"edge": edge, "mask_edge": edge > np.quantile(edge, 0.85), "mask_flat": edge < np.quantile(edge, 0.15)}
        args = (dev, placement.shard(lab))
    t0 = time.perf_counter()
    state, m = step(state, *args)
    jax.block_until_ready(m)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(steps):
        state, m = step(state, *args)
    jax.block_until_ready(m)
    dt = (time.perf_counter() - t0) / steps
    return {"size": size, "mode": mode, "phase": "sd" if with_labels else "gt", "batch": n,
            "devices": placement.num_local_devices, "first_step_s": compile_s, "step_s": dt,
            "steps_per_s": 1.0 / dt, "images_per_s": n / dt}


def bench_config(config_arg: str, data_dir: str, steps: int, repeats: int = 1, overrides=()) -> dict:
    """Phase-1 vs phase-2 step time of a training config, on `steps` of its own batches (pipeline excluded).

    With `repeats` > 1 the phases and the label pass are timed that many times each, interleaved (phase 1,
    phase 2, labels, phase 1, ...), and the medians are reported: single runs on a shared 2-core machine
    move by 10-30 %. The per-repeat times are kept under `*_step_s_runs` / `labels_s_runs`."""
    import functools

    from sddr_jax import losses
    from sddr_jax import training as T
    from sddr_jax.data.pipeline import TrainData
    from sddr_jax.models import build_refiner
    from sddr_jax.training.labels import label_body, label_options, label_predictor
    from sddr_jax.training.parallel import parallelize

    config = T.load_config(config_arg, overrides)
    config.data.data_dir = data_dir
    model = build_refiner(config.model)
    tx = T.make_optimizer(config.optimizer, 1000)
    placement = T.Placement(config.train.parallel)
    params = T.initial_params(config, model, 0)
    state = placement.replicate(T.create_train_state(params, tx, 0))
    it = TrainData(config).train_iterator()
    batches = [next(it) for _ in range(steps + 1)]
    keys = ("rgb", "low", "high", "depth", "valid")
    loss_fn = losses.get_loss(config.loss.name)
    # The training program's step: one compiled program for both phases (use_labels False / True).
    step = T.make_train_step(model.apply, loss_fn, config.loss, tx, parallel=config.train.parallel,
                             mesh=placement.mesh, with_labels="switch")
    flags = {f: placement.replicate(np.bool_(f)) for f in (False, True)}
    _, predictor = label_predictor(config)
    label_fn = parallelize(functools.partial(label_body, **label_options(config)),
                           ("replicated", "sharded", "replicated"), "sharded", parallel=config.train.parallel,
                           mesh=placement.mesh)
    pred = placement.replicate(predictor)
    teacher = placement.replicate(params)
    devs = [placement.shard({k: b[k] for k in keys + ("key",)}) for b in batches]

    # Phase 1 passes labels it does not read (training passes zeros of the labels' shapes).
    placeholder = jax.block_until_ready(label_fn(teacher, devs[0], pred))

    def gt(dev):
        nonlocal state
        state, m = step(state, {k: dev[k] for k in keys}, placeholder, flags[False])
        return m

    def sd(dev):
        nonlocal state
        labels = label_fn(teacher, dev, pred)
        state, m = step(state, {k: dev[k] for k in keys}, labels, flags[True])
        return m

    row = {"config": config_arg, "overrides": list(overrides), "image_size": int(config.data.image_size),
           "batch": int(config.data.batch_size),
           "label_schedule": [list(x) for x in config.labels.schedule],
           "label_size": int(config.labels.size or config.data.image_size)}
    for name, fn in (("phase1", gt), ("phase2", sd)):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(devs[0]))
        row[f"{name}_first_step_s"] = time.perf_counter() - t0

    def labels_only(dev):
        return label_fn(teacher, dev, pred)

    runs = {"phase1_step_s": [], "phase2_step_s": [], "labels_s": []}
    for _ in range(max(1, repeats)):
        for name, fn in (("phase1_step_s", gt), ("phase2_step_s", sd), ("labels_s", labels_only)):
            t0 = time.perf_counter()
            for dev in devs[1:]:
                m = fn(dev)
            jax.block_until_ready(m)
            runs[name].append((time.perf_counter() - t0) / steps)
    for name, values in runs.items():
        row[name] = float(np.median(values))
        row[name + "_runs"] = values
    row["ratio_phase2_phase1"] = row["phase2_step_s"] / row["phase1_step_s"]
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    ap.add_argument("--modes", nargs="+", default=["pmap", "shard_map"])
    ap.add_argument("--batch-per-device", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--phases", nargs="+", default=["gt"], choices=["gt", "sd"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--json", default=None)
    ap.add_argument("--config", default=None, help="time a training config's phase-1 vs phase-2 step instead")
    ap.add_argument("--data-dir", default="runs/data")
    ap.add_argument("--repeats", type=int, default=1,
                    help="with --config: time each phase and the label pass this many times, report medians")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="with --config: a config override (repeatable), e.g. optimizer.flatten=False")
    args = ap.parse_args()
    if args.config:
        r = bench_config(args.config, args.data_dir, args.steps, args.repeats, args.set)
        print(f"{args.config} {' '.join(args.set)}: S={r['image_size']} batch {r['batch']}, "
              f"labels {r['label_schedule']} at "
              f"{r['label_size']}; load average {os.getloadavg()}")
        print(f"{'phase':>8} {'first s':>8} {'step s':>8}")
        for name in ("phase1", "phase2"):
            print(f"{name:>8} {r[name + '_first_step_s']:8.2f} {r[name + '_step_s']:8.3f}")
        print(f"label pass alone {r['labels_s']:.3f} s/step; phase 2 / phase 1 = {r['ratio_phase2_phase1']:.2f}"
              + (f" (medians of {args.repeats} repeats)" if args.repeats > 1 else ""))
        if args.json:
            from sddr_jax.io import write_json_atomic

            write_json_atomic(args.json, {**r, "cpu_count": os.cpu_count(), "load_average": os.getloadavg()})
        return 0
    rows = []
    print(f"device: {jax.devices()[0].device_kind} x {jax.local_device_count()}  ({jax.default_backend()})")
    print(f"{'S':>5} {'phase':>5} {'mode':>10} {'batch':>5} {'first s':>8} {'step s':>8} {'steps/s':>8} "
          f"{'img/s':>8} {'vs pmap':>8}")
    for size in args.sizes:
        for phase in args.phases:
            base = None
            for mode in args.modes:
                r = bench(size, mode, args.batch_per_device, args.steps, phase == "sd", args.dtype)
                base = base or r["images_per_s"]
                r["ratio_vs_first_mode"] = r["images_per_s"] / base
                rows.append(r)
                print(f"{size:5d} {phase:>5} {mode:>10} {r['batch']:5d} {r['first_step_s']:8.2f} {r['step_s']:8.3f} "
                      f"{r['steps_per_s']:8.3f} {r['images_per_s']:8.2f} {r['ratio_vs_first_mode']:8.2f}")
    if args.json:
        out = {"device": str(jax.devices()[0].device_kind), "backend": jax.default_backend(),
               "cpu_count": os.cpu_count(), "rows": rows}
        path = pathlib.Path(args.json)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(out, indent=1))
        os.replace(tmp, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
