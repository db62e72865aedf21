"""Benchmark: our two-stage pass and G_S labels vs a sequential port of the official loop (docs/method.md §5.2, §6).

Two tasks, on the same image, each timed for ours (sddr_jax: one compiled program for the whole pass, windows
through `lax.map`, levels chosen in-graph, only the chosen resolution predicted) and for a faithful sequential
port of the official loop (utils_2stage.patchfusion: one window at a time, the levels planned on the host with
OpenCV / numpy, predictor and refiner jitted per shape with a batch of one, OpenCV resizes and merges on the host):

* `refine`: two-stage refinement of the whole image, official schedule (global pass + 2x2 + 3x3 windows);
* `labels`: G_S pseudo-labels (docs/method.md §6) of a square training crop (the top-left 1024 x 1024; the
  global pass refines at the crop's own size), without the percentile masks and regions P_n, which the official
  loop does not compute.

The predictor follows the real protocol: `--predictor vits` (default) is Depth Anything V2 ViT-S with random
weights (timing does not depend on their values) run on every window crop at its adaptive resolution;
`--predictor stand-in` is a cheap resize of the grey level, so that the numbers measure the window machinery and
the refiner alone. The refiner is the MiT-b5 Refiner with random parameters at --size. Every (task, image,
implementation) runs in its own worker process (its peak RSS is that process's), with no compilation cache:
`first_s` is the first call (compilation + one run), `ours_s` / `sequential_s` the median of --repeats warm runs;
`predictor_s` is the sequential loop's predictor calls alone (one more warm run, each call waited for), and
`predictor_share` its share of `sequential_s`.
Absolute CPU times are meaningful only as the ratio within one run; run on an idle machine.

    .venv/bin/python benchmarks/windows.py --images 1080p 4k --json bench_windows.json
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

IMAGES = {"1080p": (1080, 1920), "4k": (2160, 3840)}


# ----------------------------------------------------------------------------------------------------
# worker side (imports jax)


def _setup(predictor_kind: str, size: int):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sddr_jax.models import Refiner
    from sddr_jax.ops import resize_bilinear

    x = jnp.zeros((1, 128, 128, 1))
    shapes = jax.eval_shape(Refiner().init, jax.random.PRNGKey(0), x, x)["params"]
    leaves, tdef = jax.tree_util.tree_flatten_with_path(shapes)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = jax.tree_util.tree_unflatten(tdef, [
        jnp.ones(s.shape) if "scale" in str(p[-1]) else 0.02 * jax.random.normal(k, s.shape)
        for (p, s), k in zip(leaves, keys)])
    if predictor_kind == "vits":
        from sddr_jax.models.depth_anything import CONFIGS, DepthAnythingPredictor, init_params

        da = jax.tree_util.tree_map(np.asarray, init_params(CONFIGS["small"], 1))
        da["depth_head"]["output_conv2_2"]["bias"] = np.ones(1, np.float32)
        predictor = DepthAnythingPredictor(da, CONFIGS["small"], output="depth", pos_embed_mode="original")
    else:
        def predictor(image, res):
            g = resize_bilinear(image.mean(-1, keepdims=True), (res, res))
            return g + 0.02 * jnp.sin(res / 7.0 + 9.0 * g)
    return params, predictor


def test_image(height: int, width: int, seed: int = 0):
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    small = cv2.GaussianBlur(rng.random((height // 4, width // 4, 3)).astype(np.float32), (0, 0), 2)
    img = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    for _ in range(12):  # sharp-edged boxes give an uneven edge density (all three resolution levels)
        y, x = rng.integers(0, height - height // 5), rng.integers(0, width - width // 6)
        img[y : y + rng.integers(height // 20, height // 5), x : x + rng.integers(width // 40, width // 6)] += \
            rng.random(3) * 0.5
    return np.clip(img, 0, 1)[None]


@functools.lru_cache(maxsize=None)
def _standalone_refiner():
    """`official_refiner`'s map (b0, inputs min-max normalised), jitted once per process. Compiled on its own,
    its output is the program's output, so the refiner keeps the conv forms of a standalone call
    (`ops.embedded_forms` is for passes that read the refined map again inside one program)."""
    import jax

    from sddr_jax.inference.one_stage import unwrap_params
    from sddr_jax.models import build_refiner
    from sddr_jax.ops import minmax_normalize

    @jax.jit
    def refine(params, low, high):
        out = build_refiner(None).apply({"params": unwrap_params(params)}, minmax_normalize(low),
                                        minmax_normalize(high), train=False)
        return out.refined

    return refine


def sequential(params, predictor, rgb, size, labels=False, maps=None, clock=None):
    """The official loop, one window at a time (utils_2stage.patchfusion; with labels=True the gradient track
    of docs/method.md §6, global pass on the student's `maps` at the image size, replicate border).
    `clock`: a dict whose "predictor_s" accumulates the time of the predictor calls (each one waited for)."""
    import cv2
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sddr_jax.edges import sobel_abs
    from sddr_jax.inference import windows as W
    from sddr_jax.inference.two_stage import GLOBAL_SIZES
    from sddr_jax.ops import resize_bilinear

    refine = _standalone_refiner()
    predict_jit = jax.jit(lambda im, res: resize_bilinear(predictor(im, res), (size, size)), static_argnums=1)

    def predict(img, res):
        if clock is None:
            return predict_jit(jnp.asarray(img)[None], res)
        t0 = time.perf_counter()
        out = jax.block_until_ready(predict_jit(jnp.asarray(img)[None], res))
        clock["predictor_s"] = clock.get("predictor_s", 0.0) + time.perf_counter() - t0
        return out

    img = rgb[0]
    h, w = img.shape[:2]
    border = "replicate" if labels else "zero"
    if labels:
        d0 = np.asarray(refine(params, jnp.asarray(maps[0]), jnp.asarray(maps[1])))[0, ..., 0]
        base = (d0 - d0.min()) / (d0.max() - d0.min())
    else:
        d0 = np.asarray(refine(params, predict(img, GLOBAL_SIZES[0]), predict(img, GLOBAL_SIZES[1])))[0, ..., 0]
        d0 = (d0 - d0.min()) / (d0.max() - d0.min())
        base = cv2.resize(d0, (w, h), interpolation=cv2.INTER_NEAREST)
    label = np.asarray(sobel_abs(base, border=border)) if labels else None
    for pieces, cover in W.OFFICIAL_SCHEDULE:
        upd = base.copy()
        new_label = label.copy() if labels else None
        wins = W.window_grid(h, w, pieces, cover)
        levels = W.resolution_factors_host(base, wins)
        for n, win in enumerate(wins):
            res = W.adaptive_resolution(win.shape, W.RESOLUTION_FACTORS[levels[n]])
            sl = (slice(win.y0, win.y1), slice(win.x0, win.x1))
            hi = predict(img[sl], res)
            lo = cv2.resize(base[sl], (size, size), interpolation=cv2.INTER_NEAREST)
            ref = np.asarray(refine(params, jnp.asarray(lo)[None, ..., None], hi))[0, ..., 0].astype(np.float64)
            t = lo.astype(np.float64)  # official compute_scale_and_shift (normal equations)
            a00, a01, a11, b0, b1 = (ref * ref).sum(), ref.sum(), ref.size, (ref * t).sum(), t.sum()
            det = a00 * a11 - a01 * a01
            sc, sh = ((a11 * b0 - a01 * b1) / det, (-a01 * b0 + a00 * b1) / det) if det > 0 else (0.0, 0.0)
            merged = cv2.resize((sc * ref + sh).astype(np.float32), (win.width, win.height),
                                interpolation=cv2.INTER_CUBIC)
            mask = cv2.resize(W.feather_base(), (win.width, win.height), interpolation=cv2.INTER_LINEAR)
            upd[sl] = upd[sl] * (1 - mask) + merged * mask
            if labels:
                g = np.asarray(sobel_abs(merged, border=border)).astype(np.float64)
                prev = label[sl].astype(np.float64)
                b1_, b0_ = np.polyfit(g[1:-1, 1:-1].ravel(), prev[1:-1, 1:-1].ravel(), 1)
                m = mask.copy()
                m[0], m[-1], m[:, 0], m[:, -1] = 0, 0, 0, 0
                new_label[sl] = new_label[sl] * (1 - m) + (b1_ * g + b0_) * m
        base = cv2.resize(upd, (w, h), interpolation=cv2.INTER_NEAREST)
        label = new_label
    return label if labels else base


def worker(task: str, image: str, impl: str, predictor_kind: str, size: int, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sddr_jax.inference.two_stage import refine_two_stage
    from sddr_jax.training.labels import edge_labels

    params, predictor = _setup(predictor_kind, size)
    rgb = test_image(*IMAGES[image])
    if task == "labels":
        from sddr_jax.ops import resize_bilinear

        side = min(rgb.shape[1], rgb.shape[2], 1024) // 128 * 128  # the refiner's maps are square
        rgb = rgb[:, :side, :side]
        h, w = rgb.shape[1:3]
        maps = [np.asarray(resize_bilinear(predictor(jnp.asarray(rgb), r), (h, w))) for r in (448, 1024)]
        if impl == "ours":
            fn = lambda: edge_labels(params, maps[0], maps[1], jnp.asarray(rgb), predictor, size=size,  # noqa: E731
                                     masks=False)["edge"]
        else:
            fn = lambda clock=None: sequential(params, predictor, rgb, size, labels=True, maps=maps,  # noqa: E731
                                               clock=clock)
    elif impl == "ours":
        rgb_j = jnp.asarray(rgb)
        fn = lambda: refine_two_stage(params, rgb_j, predictor, size=size)  # noqa: E731
    else:
        fn = lambda clock=None: sequential(params, predictor, rgb, size, clock=clock)  # noqa: E731
    t0 = time.perf_counter()
    out = np.asarray(jax.block_until_ready(fn()))
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    result = {"first_s": first, "warm_s": statistics.median(times), "checksum": float(np.abs(out).mean()),
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    if impl == "sequential":  # one more warm run with each predictor call waited for and timed
        clock: dict = {}
        jax.block_until_ready(fn(clock))
        result["predictor_s"] = clock.get("predictor_s", 0.0)
    return result


# ----------------------------------------------------------------------------------------------------
# driver (no jax)


def _run_worker(args, task, image, impl) -> dict:
    env = dict(os.environ, SDDR_JAX_COMPILE_CACHE="off")
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", task, image, impl, "--predictor", args.predictor,
           "--size", str(args.size), "--repeats", str(args.repeats)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"worker {task} {image} {impl} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", nargs="+", choices=tuple(IMAGES), default=["1080p"])
    parser.add_argument("--tasks", nargs="+", choices=("refine", "labels"), default=["refine", "labels"])
    parser.add_argument("--labels-images", nargs="+", choices=tuple(IMAGES), default=["1080p"],
                        help="images of the labels task (a training crop of each)")
    parser.add_argument("--predictor", choices=("vits", "stand-in"), default="vits")
    parser.add_argument("--size", type=int, default=1024, help="refiner size S (a multiple of 128)")
    parser.add_argument("--repeats", type=int, default=1, help="warm runs per implementation (median)")
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    parser.add_argument("--worker", nargs=3, metavar=("TASK", "IMAGE", "IMPL"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(*args.worker, args.predictor, args.size, args.repeats)))
        return 0
    load_before = os.getloadavg()
    rows = []
    for task in args.tasks:
        for image in (args.images if task == "refine" else args.labels_images):
            r = {impl: _run_worker(args, task, image, impl) for impl in ("ours", "sequential")}
            h, w = IMAGES[image]
            row = {"task": task, "image": f"{h}x{w}" if task == "refine" else "1024x1024",
                   "size": args.size, "predictor": args.predictor, "windows": "1+4+9",
                   "ours_s": r["ours"]["warm_s"], "sequential_s": r["sequential"]["warm_s"],
                   "ratio": r["ours"]["warm_s"] / r["sequential"]["warm_s"],
                   "predictor_s": r["sequential"]["predictor_s"],
                   # the share of the sequential loop spent in its predictor calls (the same calls at the same
                   # resolutions as ours makes in-graph): how much of the time the window machinery can touch
                   "predictor_share": r["sequential"]["predictor_s"] / r["sequential"]["warm_s"],
                   "ours_first_s": r["ours"]["first_s"], "sequential_first_s": r["sequential"]["first_s"],
                   "peak_rss_mib": r["ours"]["peak_rss_mib"],
                   "sequential_peak_rss_mib": r["sequential"]["peak_rss_mib"],
                   "checksum_ours": r["ours"]["checksum"], "checksum_sequential": r["sequential"]["checksum"]}
            rows.append(row)
            print(f"done: {task} {row['image']}: ours {row['ours_s']:.2f} s, sequential {row['sequential_s']:.2f} s "
                  f"(first calls {row['ours_first_s']:.1f} / {row['sequential_first_s']:.1f} s)", file=sys.stderr,
                  flush=True)
    load_after = os.getloadavg()
    header = (f"{'task':<8}{'image':>11}{'S':>6}{'ours s':>9}{'seq s':>9}{'ours/seq':>10}{'pred s':>9}"
              f"{'pred/seq':>10}{'1st ours/seq s':>17}{'RSS ours/seq MiB':>19}")
    print(f"predictor: {args.predictor}; load average before {load_before[0]:.2f}, after {load_after[0]:.2f} "
          f"(1 min); {os.cpu_count()} CPUs")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['task']:<8}{r['image']:>11}{r['size']:>6}{r['ours_s']:>9.2f}{r['sequential_s']:>9.2f}"
              f"{r['ratio']:>10.2f}{r['predictor_s']:>9.2f}"
              f"{r['predictor_share']:>10.2f}"
              f"{r['ours_first_s']:>9.1f}/{r['sequential_first_s']:<7.1f}"
              f"{r['peak_rss_mib']:>10.0f}/{r['sequential_peak_rss_mib']:<8.0f}")
    if args.json:
        import platform

        result = {"machine": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                  "loadavg_before": load_before, "loadavg_after": load_after, "rows": rows}
        d = os.path.dirname(os.path.abspath(args.json))
        fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(result, f, indent=2)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
