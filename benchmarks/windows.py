"""Benchmark: batched vs sequential coarse-to-fine windows on a 1920x1080 image (docs/method.md §5.2, §6).

Two tasks, each timed batched (sddr_jax.inference.two_stage: one refiner call per step) and sequential (the
official loop: one window at a time, refiner batch of one, OpenCV merges on the host):

* two-stage refine, official schedule (1 + 4 + 9 refiner calls);
* G_S pseudo-labels (the same windows plus the gradient track of docs/method.md §6; without the percentile masks and
  regions P_n, which the sequential loop does not compute).

The MiT-b0 Refiner runs with random parameters (timing does not depend on their values) at each refiner
size of --sizes; the base predictor is a cheap deterministic stand-in (grey level, resized) so that the
numbers measure the window machinery and the refiner. Times are medians of --repeats warm runs (compilation
excluded and reported separately). CPU numbers are only meaningful as the ratio within one run.

    .venv/bin/python benchmarks/windows.py --sizes 256 1024 --json bench_windows.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

import cv2
import jax
import jax.numpy as jnp
import numpy as np

from sddr_jax.inference import windows as W
from sddr_jax.inference.two_stage import official_refiner, refine_two_stage
from sddr_jax.training.labels import edge_labels
from sddr_jax.edges import sobel_abs
from sddr_jax.models import Refiner
from sddr_jax.ops import resize_bilinear

HEIGHT, WIDTH = 1080, 1920


def stand_in_predictor(image, size):
    """Grey level resized to size^2 with a resolution-dependent ripple: deterministic and cheap."""
    g = resize_bilinear(image.mean(-1, keepdims=True), (size, size))
    return g + 0.02 * jnp.sin(size / 7.0 + 9.0 * g)


def random_params(size: int):
    x = jnp.zeros((1, size, size, 1))
    shapes = jax.eval_shape(Refiner().init, jax.random.PRNGKey(0), x, x)["params"]
    leaves, tdef = jax.tree_util.tree_flatten_with_path(shapes)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    return jax.tree_util.tree_unflatten(tdef, [
        jnp.ones(s.shape) if "scale" in str(p[-1]) else 0.02 * jax.random.normal(k, s.shape)
        for (p, s), k in zip(leaves, keys)
    ])


def test_image(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((HEIGHT, WIDTH, 3)).astype(np.float32), (0, 0), 8)
    for _ in range(12):  # sharp-edged boxes give an uneven edge density (all three resolution levels)
        y, x = rng.integers(0, HEIGHT - 200), rng.integers(0, WIDTH - 300)
        img[y : y + rng.integers(50, 200), x : x + rng.integers(50, 300)] += rng.random(3) * 0.5
    return img[None]


_REFINE_ONE = jax.jit(official_refiner)
_PREDICT = jax.jit(lambda im, size, s: resize_bilinear(stand_in_predictor(im, size), (s, s)),
                   static_argnums=(1, 2))


def student_maps(rgb):
    """The label task's inputs: the predictor at 448 and 1024, resized to the image (as a training batch)."""
    h, w = rgb.shape[1:3]
    return tuple(np.asarray(resize_bilinear(stand_in_predictor(jnp.asarray(rgb), r), (h, w))) for r in (448, 1024))


def sequential(params, rgb, size, labels=False, maps=None):
    """The official loop (utils_2stage.patchfusion): window by window, host merges with OpenCV. With
    labels=True the G_S track of docs/method.md §6 (global pass on the student's `maps` at image size,
    gradients with the replicate border)."""
    img = rgb[0]
    h, w = img.shape[:2]
    border = "replicate" if labels else "zero"
    if labels:
        d0 = np.asarray(_REFINE_ONE(params, jnp.asarray(maps[0]), jnp.asarray(maps[1])))[0, ..., 0]
        base = (d0 - d0.min()) / (d0.max() - d0.min())
    else:
        low = _PREDICT(jnp.asarray(rgb), 448, size)
        high = _PREDICT(jnp.asarray(rgb), 1024, size)
        d0 = np.asarray(_REFINE_ONE(params, low, high))[0, ..., 0]
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
            hi = _PREDICT(jnp.asarray(img[sl])[None], res, size)
            lo = cv2.resize(base[sl], (size, size), interpolation=cv2.INTER_NEAREST)
            ref = np.asarray(_REFINE_ONE(params, jnp.asarray(lo)[None, ..., None], hi))[0, ..., 0]
            ref = ref.astype(np.float64)
            t = lo.astype(np.float64)
            a, b = np.polyfit(ref.ravel(), t.ravel(), 1)
            merged = cv2.resize((a * ref + b).astype(np.float32), (win.width, win.height),
                                interpolation=cv2.INTER_CUBIC)
            mask = W.feather_mask(win.height, win.width)
            upd[sl] = upd[sl] * (1 - mask) + merged * mask
            if labels:
                g = np.asarray(sobel_abs(merged, border=border)).astype(np.float64)
                prev = label[sl][1:-1, 1:-1].ravel().astype(np.float64)
                b1, b0 = np.polyfit(g[1:-1, 1:-1].ravel(), prev, 1)
                m = mask.copy()
                m[0], m[-1], m[:, 0], m[:, -1] = 0, 0, 0, 0
                new_label[sl] = new_label[sl] * (1 - m) + (b1 * g + b0) * m
        base = upd
        label = new_label
    return label if labels else base


def timed(fn, repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times), first


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[256],
                        help="refiner sizes S (multiples of 128)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=None, help="write the results to this JSON file")
    args = parser.parse_args(argv)
    rgb = test_image()
    rows = []
    for size in args.sizes:
        params = random_params(size)
        rgb_j = jnp.asarray(rgb)
        crop = rgb[:, :1024]  # the label pass refines the maps at their own size: a multiple of 128
        maps = student_maps(crop)
        tasks = {
            "two-stage refine": (
                lambda: refine_two_stage(params, rgb_j, stand_in_predictor, size=size),
                lambda: sequential(params, rgb, size),
            ),
            "G_S labels": (
                lambda: edge_labels(params, maps[0], maps[1], jnp.asarray(crop), stand_in_predictor, size=size,
                                    masks=False)["edge"],
                lambda: sequential(params, crop, size, labels=True, maps=maps),
            ),
        }
        for name, (batched, seq) in tasks.items():
            tb, cb = timed(batched, args.repeats)
            ts, cs = timed(seq, args.repeats)
            rows.append({"task": name, "size": size, "windows": "1+4+9", "batched_s": tb, "sequential_s": ts,
                         "ratio_seq_over_batched": ts / tb, "batched_first_call_s": cb,
                         "sequential_first_call_s": cs})
            print(f"done: {name} S={size}", file=sys.stderr, flush=True)
    header = (f"{'task':<18}{'S':>6}{'batched s':>12}{'sequential s':>15}{'seq/batched':>13}"
              f"{'1st call b/s':>16}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['task']:<18}{r['size']:>6}{r['batched_s']:>12.3f}{r['sequential_s']:>15.3f}"
              f"{r['ratio_seq_over_batched']:>13.2f}{r['batched_first_call_s']:>8.1f}/"
              f"{r['sequential_first_call_s']:<7.1f}")
    result = {"device": jax.devices()[0].device_kind, "platform": jax.default_backend(),
              "image": [HEIGHT, WIDTH], "cpu_count": os.cpu_count(), "rows": rows}
    if args.json:
        d = os.path.dirname(os.path.abspath(args.json))
        fd, tmp = tempfile.mkstemp(dir=d, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(result, f, indent=2)
        os.replace(tmp, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
