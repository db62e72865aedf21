"""Compile time against run time of the training step at XLA:CPU optimisation levels
(`train.xla_cpu_optimization_level`, docs/training.md "Programs built ahead of their calls").

For each config and level, in a fresh subprocess (no compilation cache, so nothing is shared between rows):
the switched self-distillation step of that config is lowered from `train.early_compile_specs` (shapes only,
as the training loop does), compiled with the level, then run `--steps` times on a constant batch with
placeholder labels (phase 1); the first call is reported apart, `step s` is the median of the others.

    python benchmarks/compile_levels.py --configs configs/synthetic.py:tiny configs/synthetic.py:acceptance \
        --levels -1 0 1 --json compile_levels.json
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def measure(config_spec: str, level: int, steps: int) -> dict:
    import jax
    import numpy as np

    from sddr_jax import losses
    from sddr_jax.models.refiner import build_refiner
    from sddr_jax.training import train as T
    from sddr_jax.training.config import load_config
    from sddr_jax.training.labels import label_options
    from sddr_jax.training.parallel import Placement

    config = load_config(config_spec)
    config.train.xla_cpu_optimization_level = level
    model = build_refiner(config.model)
    tx = T.make_optimizer(config.optimizer, int(config.train.num_steps))
    placement = Placement(config.train.parallel)
    step_fn = T.make_train_step(model.apply, losses.get_loss(config.loss.name), config.loss, tx,
                                parallel=config.train.parallel, mesh=placement.mesh, with_labels="switch")
    label_kwargs = dict(label_options(config), with_depth=False)
    specs = T.early_compile_specs(config, model, tx, placement, ema=False, label_kwargs=label_kwargs)["step"]
    t0 = time.perf_counter()
    lowered = step_fn.lower(*specs)
    t1 = time.perf_counter()
    compiled = lowered.compile(T.compiler_options(config) or None)
    t2 = time.perf_counter()
    params = T.initial_params(config, model, 0)
    state = placement.replicate(jax.device_get(T.create_train_state(params, tx, 0)))

    def filled(spec, value):
        return jax.device_put(np.full(spec.shape, value, spec.dtype), spec.sharding)

    batch = {k: filled(v, True if v.dtype == np.bool_ else 0.5) for k, v in specs[1].items()}
    labels = {k: filled(v, 0) for k, v in specs[2].items()}
    use = filled(specs[3], False)
    times = []
    for _ in range(steps + 1):
        t = time.perf_counter()
        state, metrics = compiled(state, batch, labels, use)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t)
    return {"config": config_spec, "level": level, "trace_lower_s": t1 - t0, "compile_s": t2 - t1,
            "first_step_s": times[0], "step_s": float(np.median(times[1:])),
            "image_size": int(config.data.image_size), "batch_size": int(config.data.batch_size)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["configs/synthetic.py:tiny"])
    p.add_argument("--levels", nargs="+", type=int, default=[-1, 0, 1])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--json", default="")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker:
        print(json.dumps(measure(a.worker[0], int(a.worker[1]), a.steps)))
        return
    load_before = os.getloadavg()[0]
    rows = []
    for spec in a.configs:
        for level in a.levels:
            env = {**os.environ, "JAX_ENABLE_COMPILATION_CACHE": "false"}
            r = subprocess.run([sys.executable, __file__, "--worker", spec, str(level), "--steps", str(a.steps)],
                               capture_output=True, text=True, env=env, cwd=ROOT)
            if r.returncode:
                sys.exit(f"{spec} level {level} failed:\n{r.stderr[-3000:]}")
            rows.append(json.loads(r.stdout.strip().splitlines()[-1]))
    print(f"load average before {load_before:.2f}, after {os.getloadavg()[0]:.2f} (1 min); {os.cpu_count()} CPUs")
    print(f"{'config':38s} {'level':>5s} {'S':>5s} {'B':>3s} {'lower s':>8s} {'compile s':>9s} {'1st step s':>10s} "
          f"{'step s':>7s}")
    for r in rows:
        print(f"{r['config']:38s} {r['level']:5d} {r['image_size']:5d} {r['batch_size']:3d} {r['trace_lower_s']:8.2f} "
              f"{r['compile_s']:9.2f} {r['first_step_s']:10.2f} {r['step_s']:7.3f}")
    if a.json:
        from sddr_jax.io import write_json_atomic

        write_json_atomic(a.json, {"rows": rows, "load_average_before": load_before,
                                   "load_average_after": os.getloadavg()[0]})


if __name__ == "__main__":
    main()
