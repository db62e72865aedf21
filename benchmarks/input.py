"""Benchmark of the data path: procedural scene generation and the grain input pipeline (images/s).

    python benchmarks/input.py [--sizes 512 1024] [--scenes 32] [--batch 4] [--batches 8] [--threads 2]
                               [--json PATH]

For each size S it builds a small `sddr_synthetic` dataset at S x S (temporary directory), then streams
batches through `pipeline.make_dataset` at S, (a) decode + augmentation only and (b) with the
simulated base predictor (its first batch, which compiles it, is not timed). CPU numbers; compare rows of
one run, not across machines.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time


def _stream_rate(ds, batches: int) -> tuple[float, float]:
    it = iter(ds)
    t0 = time.perf_counter()
    first = next(it)
    first_s = time.perf_counter() - t0
    n = 0
    t0 = time.perf_counter()
    for _ in range(batches):
        n += next(it)["rgb"].shape[0]
    return n / (time.perf_counter() - t0), first_s


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    p.add_argument("--scenes", type=int, default=32, help="scenes to generate per size")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--batches", type=int, default=8, help="timed batches per measurement")
    p.add_argument("--threads", type=int, default=2, help="grain threads")
    p.add_argument("--workers", type=int, default=2, help="scene generation processes")
    p.add_argument("--no_simulate", action="store_true", help="skip the simulated-predictor rows")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from sddr_jax.data import pipeline as ip
    from sddr_jax.data import scenes
    from sddr_jax_datasets.sddr_synthetic import sddr_synthetic_dataset_builder as synth

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            t0 = time.perf_counter()
            for seed in range(4):
                scenes.generate_scene(seed, size)
            gen_1core = 4 / (time.perf_counter() - t0)
            cfg = synth.SyntheticConfig(name=f"bench{size}", size=size, num_train=args.scenes, num_test=1)
            builder = synth.Builder(data_dir=tmp, config=cfg, num_workers=args.workers)
            t0 = time.perf_counter()
            builder.download_and_prepare()
            build_rate = (args.scenes + 1) / (time.perf_counter() - t0)
            src = builder.as_data_source(split="train")
            row = {"size": size, "scenes_per_s_1_process": gen_1core,
                   f"build_scenes_per_s_{args.workers}_workers": build_rate}
            ds = ip.make_dataset(src, image_size=size, global_batch_size=args.batch, seed=0, simulate=False,
                                 num_threads=args.threads, shard=(1, 0))
            row["images_per_s_decode_augment"], _ = _stream_rate(ds, args.batches)
            if not args.no_simulate:
                ds = ip.make_dataset(src, image_size=size, global_batch_size=args.batch, seed=0,
                                     num_threads=args.threads, shard=(1, 0))
                row["images_per_s_with_simulated_predictor"], row["simulator_first_batch_s"] = _stream_rate(
                    ds, args.batches)
            rows.append(row)

    keys = list(dict.fromkeys(k for r in rows for k in r))
    print(f"cpu cores: {os.cpu_count()}, grain threads: {args.threads}, batch {args.batch}")
    print(" | ".join(f"{k:>20s}" for k in keys))
    for r in rows:
        print(" | ".join(f"{r.get(k, float('nan')):>20.2f}" for k in keys))
    if args.json:
        with open(args.json + ".tmp", "w") as f:
            json.dump({"rows": rows, "args": vars(args)}, f, indent=2)
        os.replace(args.json + ".tmp", args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
