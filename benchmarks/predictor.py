"""Benchmark of the JAX Depth Anything V2 predictor: images/s at the low and high resolutions.

    python benchmarks/predictor.py [--model small] [--sizes 518 1036] [--batch 1] [--iters 3]
                                   [--dtypes float32 bfloat16] [--json PATH]

Random parameters of the chosen size (nothing is downloaded; speed does not depend on the values). Each row
times `DepthAnythingPredictor(image, size)` under jit on a (batch, size, size, 3) image: bicubic resize,
normalisation, network, output resize. The first call (compile) is timed separately and excluded. Numbers
are for the machine it runs on (CPU here; GPU/TPU when JAX sees one); compare the rows of one run (the
`ratio` column is relative to the first row), not runs across machines.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="small", help="small | base | large (default %(default)s)")
    p.add_argument("--sizes", type=int, nargs="+", default=[518, 1036])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--iters", type=int, default=3, help="timed calls per row")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from sddr_jax.models.depth_anything import DepthAnythingPredictor, get_config, init_params

    config = get_config(args.model)
    params = jax.device_put(init_params(config, 0))
    device = jax.devices()[0]
    rows = []
    for dtype in args.dtypes:
        predictor = DepthAnythingPredictor(params, config, dtype=None if dtype == "float32" else jnp.bfloat16)
        for size in args.sizes:
            fn = jax.jit(lambda pr, x, size=size: pr(x, size))
            image = jnp.asarray(np.random.default_rng(size).random((args.batch, size, size, 3)), jnp.float32)
            t0 = time.perf_counter()
            fn(predictor, image).block_until_ready()
            compile_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            for _ in range(args.iters):
                fn(predictor, image).block_until_ready()
            per_call = (time.perf_counter() - t0) / args.iters
            rows.append({"model": config.name, "dtype": dtype, "size": size, "batch": args.batch,
                         "ms_per_image": 1e3 * per_call / args.batch, "images_per_s": args.batch / per_call,
                         "first_call_s": compile_s})
            print(f"  {dtype} {size}: {rows[-1]['images_per_s']:.3f} images/s", file=sys.stderr, flush=True)
    base = rows[0]["images_per_s"]
    print(f"Depth Anything V2 {config.name} on {device.platform} ({device.device_kind}), batch {args.batch}, "
          f"{args.iters} timed calls per row")
    print(f"{'dtype':>9} {'size':>5} {'ms/image':>10} {'images/s':>9} {'ratio':>6} {'first call s':>13}")
    for r in rows:
        print(f"{r['dtype']:>9} {r['size']:>5} {r['ms_per_image']:>10.1f} {r['images_per_s']:>9.3f} "
              f"{r['images_per_s'] / base:>6.3f} {r['first_call_s']:>13.1f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": f"{device.platform} {device.device_kind}", "rows": rows}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
