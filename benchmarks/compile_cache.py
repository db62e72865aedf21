"""Benchmark: the CLI's persistent compilation cache (sddr_jax/caches.py). Wall time of whole `sddr-jax` processes:
the first run on an empty cache, the second run of the same shapes, and a run with `--no-compile-cache`.

    python benchmarks/compile_cache.py [--size 1024] [--runs 3] [--train] [--json benchmarks/compile_cache.json]

`refine`: one 1920x1080 low/high pair at `--size`, weights the synthetic official state dict of
`tests/data/official_state.py` (random weights: the timing does not depend on their values). `--train` adds
`sddr-jax train --config configs/synthetic.py:tiny` on a fresh workdir each run (dataset built once, before
the timed runs), with the process's own device count (1 CPU device unless XLA_FLAGS says otherwise).
Each figure is the median over `--runs` runs; "first" empties the cache before each of its runs. Run it on
an idle machine: the load average is printed with the table.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "data"))


def _inputs(work: Path, size: int) -> list[str]:
    import numpy as np

    import official_state  # noqa: E402
    from sddr_jax import convert, io

    convert.save_params(convert.official_to_flax(official_state.official_state_dict(0)), work / "converted")
    rng = np.random.default_rng(0)
    io.write_depth(work / "low.npy", rng.uniform(size=(1080, 1920)).astype(np.float32))
    io.write_depth(work / "high.npy", rng.uniform(size=(1080, 1920)).astype(np.float32))
    return ["refine", "--checkpoint", str(work / "converted"), "--low", str(work / "low.npy"), "--high",
            str(work / "high.npy"), "--size", str(size), "--overwrite", "--output", str(work / "refined.npy")]


def _train_args(work: Path, run: int) -> list[str]:
    return ["train", "--config", str(ROOT / "configs" / "synthetic.py") + ":tiny", "--workdir",
            str(work / f"train_{run}"), f"--config.data.data_dir={work / 'data'}"]


def _time(args: list[str], cache: Path, *extra: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env["SDDR_JAX_COMPILE_CACHE"] = str(cache)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "sddr_jax", *args, *extra], env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return dt


def _measure(make_args, cache: Path, runs: int) -> dict[str, float]:
    first, second, off = [], [], []
    for i in range(runs):
        shutil.rmtree(cache, ignore_errors=True)
        first.append(_time(make_args(3 * i), cache))
        second.append(_time(make_args(3 * i + 1), cache))
        off.append(_time(make_args(3 * i + 2), cache, "--no-compile-cache"))
    entries = sum(p.stat().st_size for p in cache.glob("*")) / 2**20
    return {"first_s": statistics.median(first), "second_s": statistics.median(second),
            "no_cache_s": statistics.median(off), "ratio": statistics.median(second) / statistics.median(first),
            "cache_mib": entries, "runs": runs}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--train", action="store_true", help="also time the tiny training run")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    results = {}
    with tempfile.TemporaryDirectory(prefix="sddr_cc_") as tmp:
        work = Path(tmp)
        refine = _inputs(work, a.size)
        results[f"refine_{a.size}"] = _measure(lambda i: refine, work / "xla", a.runs)
        if a.train:
            _time(_train_args(work, -1), work / "xla_build", "--no-compile-cache")  # builds the dataset once
            results["train_tiny"] = _measure(lambda i: _train_args(work, i), work / "xla", a.runs)
    load = os.getloadavg()
    print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} CPUs; median of {a.runs} runs")
    print(f"{'command':16s}{'first (s)':>11s}{'second (s)':>12s}{'no cache (s)':>14s}{'second/first':>14s}"
          f"{'cache MiB':>11s}")
    for name, r in results.items():
        print(f"{name:16s}{r['first_s']:11.1f}{r['second_s']:12.1f}{r['no_cache_s']:14.1f}{r['ratio']:14.2f}"
              f"{r['cache_mib']:11.1f}")
    if a.json:
        Path(a.json).write_text(json.dumps({"load_average": load, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
