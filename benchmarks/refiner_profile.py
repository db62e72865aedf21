"""Where the refiner's CPU time goes, JAX against the official PyTorch FuseNet, part by part.

JAX: the float32 refiner (all five outputs, as the official forward returns them) compiled once, then `--runs`
forwards under `jax.profiler` (a Perfetto trace); every XLA:CPU thunk event is attributed to the Flax module
that produced its HLO instruction (the instruction's `op_name` metadata) and to its kind (convolution,
YNNPACK fusion = XLA's dot/convolution library, gather = resampling, other element-wise fusions).
PyTorch: the FuseNet of `benchmarks/refiner.py` with forward hooks timing each part, `--torch-threads` threads.
Each side runs in its own subprocess, one after the other; run on an idle machine.

    python benchmarks/refiner_profile.py --size 1024 --runs 3 --torch-threads 2 --json refiner_profile.json

Parts: grad (the 5x5 gradient conv of the high map), stems (three ResNet-style blocks), backbone (MiT-b0),
cross (the cross-attention transformer), decoder/upK and decoder/maskK (K = 0 at 1/32 of S ... 6 at S;
torch: decoder.layer_K and decoder.layer_K_f), decoder/mid (the two auxiliary outputs), other (concats,
slices, the branch sums).
"""
from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

_PART_RE = re.compile(r'op_name="[^"/]*/Refiner/([^/"]+)(?:/([^/"]+))?')
_INSTR_RE = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = (\S+) ([\w\-]+)\(")


def jax_part(top: str, sub: str) -> str:
    if top.startswith("stem"):
        return "stems"
    if top == "cross_attention":
        return "cross"
    if top == "decoder":
        if re.fullmatch(r"(up|mask)\d", sub or ""):
            return f"decoder/{sub}"
        if sub.startswith(("out_", "mid", "up_half", "up_quart")):
            return "decoder/mid"
        return "decoder/other"
    if top in ("grad", "backbone"):
        return top
    return "other"


def instruction_table(hlo_text: str) -> dict[str, tuple[str, str, str]]:
    """HLO instruction name -> (part, kind, output shape)."""
    table = {}
    for line in hlo_text.splitlines():
        m = _INSTR_RE.match(line)
        if not m:
            continue
        name, shape, opcode = m.groups()
        pm = _PART_RE.search(line)
        part = jax_part(pm.group(1), pm.group(2) or "") if pm else "other"
        if "ynn_fusion" in name:
            kind = "ynnpack (dot/conv)"
        elif opcode == "convolution":
            kind = "convolution"
        elif "gather" in name:
            kind = "gather (resample)"
        elif opcode in ("fusion",):
            kind = "element-wise fusion"
        else:
            kind = opcode
        table[name] = (part, kind, shape)
    return table


def jax_worker(size: int, runs: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sddr_jax.models.refiner import build_refiner

    model = build_refiner(None)
    x = jnp.zeros((1, size, size, 1), jnp.float32)
    params = jax.jit(lambda k: model.init(k, x, x)["params"])(jax.random.PRNGKey(0))
    fn = jax.jit(lambda p, a, b: jax.tree.leaves(model.apply({"params": p}, a, b)))
    low = jax.random.uniform(jax.random.PRNGKey(1), x.shape)
    high = jax.random.uniform(jax.random.PRNGKey(2), x.shape)
    compiled = fn.lower(params, low, high).compile()
    table = instruction_table(compiled.as_text())
    jax.block_until_ready(compiled(params, low, high))
    walls = []
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp, create_perfetto_trace=True)
        for _ in range(runs):
            t = time.perf_counter()
            jax.block_until_ready(compiled(params, low, high))
            walls.append(time.perf_counter() - t)
        jax.profiler.stop_trace()
        (path,) = glob.glob(os.path.join(tmp, "**", "*perfetto_trace.json.gz"), recursive=True)
        trace = json.load(gzip.open(path))
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    parts, kinds = collections.Counter(), collections.Counter()
    top = collections.Counter()
    for e in events:
        if e.get("ph") != "X" or e.get("name") not in table:
            continue
        part, kind, shape = table[e["name"]]
        ms = e.get("dur", 0) / 1e3 / runs
        parts[part] += ms
        kinds[(part, kind)] += ms
        top[(e["name"], part, kind, shape)] += ms
    return {"impl": "jax", "size": size, "runs": runs, "forward_ms": 1e3 * float(np.median(walls)),
            "parts_ms": dict(parts), "kinds_ms": {f"{p} | {k}": v for (p, k), v in kinds.items()},
            "top_ops": [{"op": n, "part": p, "kind": k, "shape": s, "ms": v}
                        for (n, p, k, s), v in top.most_common(15)]}


def torch_worker(size: int, runs: int, threads: int) -> dict:
    import numpy as np
    import torch

    from refiner import build_torch_fusenet

    torch.set_num_threads(threads)
    net = build_torch_fusenet().eval()
    spent = collections.Counter()
    starts = {}

    def part_of(name: str) -> str:
        if name.startswith("en_layer"):
            return "stems"
        if name.startswith("mid_out"):
            return "decoder/mid"
        if name.startswith("decoder.layer_"):
            k = name.removeprefix("decoder.layer_")
            return f"decoder/mask{k[0]}" if k.endswith("_f") else f"decoder/up{k}"
        return {"grad": "grad", "backbone": "backbone", "cross": "cross"}[name]

    watched = ["grad", "backbone", "cross", "mid_out_half", "mid_out_quart", "en_layer1", "en_layer2", "en_layer3"]
    watched += [f"decoder.{n}" for n, _ in net.decoder.named_children()]
    for name in watched:
        def pre(mod, args, name=name):
            starts[name] = time.perf_counter()

        def post(mod, args, out, name=name):
            spent[part_of(name)] += (time.perf_counter() - starts[name]) * 1e3

        net.get_submodule(name).register_forward_pre_hook(pre)
        net.get_submodule(name).register_forward_hook(post)
    rng = np.random.default_rng(0)
    low = torch.from_numpy(rng.random((1, 1, size, size), np.float32))
    high = torch.from_numpy(rng.random((1, 1, size, size), np.float32))
    with torch.no_grad():
        net(low, high)
        spent.clear()
        walls = []
        for _ in range(runs):
            t = time.perf_counter()
            net(low, high)
            walls.append(time.perf_counter() - t)
    return {"impl": "torch", "size": size, "runs": runs, "threads": threads,
            "forward_ms": 1e3 * float(np.median(walls)), "parts_ms": {k: v / runs for k, v in spent.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--torch-threads", type=int, default=2)
    p.add_argument("--json", default="")
    p.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.worker == "jax":
        print(json.dumps(jax_worker(a.size, a.runs)))
        return
    if a.worker == "torch":
        print(json.dumps(torch_worker(a.size, a.runs, a.torch_threads)))
        return
    load_before = os.getloadavg()[0]
    out = {}
    for impl in ("torch", "jax"):
        r = subprocess.run([sys.executable, __file__, "--worker", impl, "--size", str(a.size), "--runs", str(a.runs),
                            "--torch-threads", str(a.torch_threads)], capture_output=True, text=True, cwd=ROOT)
        if r.returncode:
            sys.exit(f"{impl} worker failed:\n{r.stderr[-3000:]}")
        out[impl] = json.loads(r.stdout.strip().splitlines()[-1])
    load_after = os.getloadavg()[0]
    jx, th = out["jax"], out["torch"]
    print(f"S = {a.size}; torch {a.torch_threads} threads; load average before {load_before:.2f}, after "
          f"{load_after:.2f} (1 min); {os.cpu_count()} CPUs")
    print(f"forward: jax {jx['forward_ms']:.1f} ms, torch {th['forward_ms']:.1f} ms, jax/torch "
          f"{jx['forward_ms'] / th['forward_ms']:.2f}")
    names = sorted(set(jx["parts_ms"]) | set(th["parts_ms"]),
                   key=lambda k: -max(jx["parts_ms"].get(k, 0), th["parts_ms"].get(k, 0)))
    print(f"{'part':18s} {'jax ms':>8s} {'torch ms':>9s} {'jax/torch':>9s} {'jax share':>9s}")
    for k in names:
        j, t = jx["parts_ms"].get(k, 0.0), th["parts_ms"].get(k, 0.0)
        ratio = f"{j / t:9.2f}" if t > 0 else f"{'-':>9s}"
        print(f"{k:18s} {j:8.1f} {t:9.1f} {ratio} {j / jx['forward_ms']:9.1%}")
    print("(thunk times: XLA runs some thunks concurrently, so the parts can add up to more or less than the"
          " forward's wall time)")
    print("JAX's slowest instructions:")
    for r in jx["top_ops"][:10]:
        print(f"  {r['ms']:7.1f} ms  {r['part']:16s} {r['kind']:22s} {r['shape']}")
    if a.json:
        from sddr_jax.io import write_json_atomic

        write_json_atomic(a.json, {**out, "ratio": jx["forward_ms"] / th["forward_ms"], "size": a.size,
                                   "load_average_before": load_before, "load_average_after": load_after})


if __name__ == "__main__":
    main()
