"""Benchmark: one-stage refine (docs/method.md §5.1) with the JAX refiner, float32 and bfloat16, at S = 1024 and 2048,
side by side with the official PyTorch refiner on the same machine in the same run.

    python benchmarks/refiner.py [--sizes 1024 2048] [--runs 5] [--dtypes float32 bfloat16] [--no-torch] [--cached]
                                 [--json benchmarks/refiner.json]

Every configuration runs in a fresh subprocess so that its peak RSS is its own. Reported per configuration:
compile time (lower + compile, separately from the runs), median and min over `--runs` timed runs after one
warm-up run of (a) the refiner alone on (1, S, S, 1) maps and (b) the whole one-stage pipeline (host nearest
resize of a 1080x1920 pair to S, jitted min-max + refiner, OpenCV linear back to 1080x1920), XLA's
cost-analysis FLOPs of the compiled refiner, and the process's peak RSS: `peak_rss_mib` once the refiner has
been built and run (what the torch worker does; ours includes compiling it), with `peak_rss_after_compile_mib`
(JAX: after compiling, before the first run) and `peak_rss_with_pipeline_mib` (JAX: after the one-stage runs);
with `--cached`, the same JAX worker once more with its programs loaded from a filled persistent compilation
cache (a second `sddr-jax refine` of the same size): `peak_rss_cached_mib`, `compile_cached_s`, `refiner_cached_s`.

The PyTorch side is a compact re-statement of the official `FuseNet` (same module tree and state-dict keys,
so the official state dict loads with strict=True; `--check-torch` compares it with the stored official
outputs first). Weights are the synthetic official state dict of `tests/data/official_state.py`.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _inputs(size: int):
    sys.path.insert(0, str(DATA))
    import official_state  # noqa: E402

    low, high = official_state.official_inputs(1, size)
    return official_state, low, high


def _timed(fn, runs: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


# ----------------------------------------------------------------------------------------------------
# JAX worker


def jax_worker(size: int, dtype_name: str, runs: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from sddr_jax import convert
    from sddr_jax.inference.one_stage import _refiner_inference, refine_one_stage
    from sddr_jax.models.refiner import model_config_dict

    official_state, low, high = _inputs(size)
    params = jax.device_put(convert.official_to_flax(official_state.official_state_dict(0)))
    dtype = {"float32": None, "bfloat16": jnp.bfloat16}[dtype_name]
    lo = jnp.asarray(low.transpose(0, 2, 3, 1))
    hi = jnp.asarray(high.transpose(0, 2, 3, 1))

    t = time.perf_counter()
    items = tuple(sorted(model_config_dict(None).items()))  # the jitted function behind refiner_inference
    lowered = _refiner_inference.lower(params, lo, hi, dtype=dtype, normalize=True, model_items=items)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t
    rss_compile = _peak_rss_mib()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get("flops", float("nan"))) if cost else float("nan")

    refiner_times = _timed(lambda: jax.block_until_ready(compiled(params, lo, hi)), runs)
    rss_refiner = _peak_rss_mib()  # what the torch worker does: build, run the refiner (ours also compiles it)
    rng = np.random.default_rng(0)
    base = np.cumsum(np.cumsum(rng.standard_normal((1080, 1920)), 0), 1).astype(np.float32)
    low_map, high_map = base[::4, ::4].repeat(4, 0).repeat(4, 1), base
    refine_one_stage(params, low_map, high_map, size=size, dtype=dtype)  # compiles the pipeline's own jit
    pipeline_times = _timed(lambda: refine_one_stage(params, low_map, high_map, size=size, dtype=dtype), runs)
    return {
        "impl": "jax", "dtype": dtype_name, "size": size, "runs": runs, "compile_s": compile_s,
        "refiner_median_s": statistics.median(refiner_times), "refiner_min_s": min(refiner_times),
        "one_stage_median_s": statistics.median(pipeline_times), "one_stage_min_s": min(pipeline_times),
        "xla_flops": flops, "peak_rss_mib": rss_refiner, "peak_rss_after_compile_mib": rss_compile,
        "peak_rss_with_pipeline_mib": _peak_rss_mib(), "device": str(jax.devices()[0]),
        "jax": jax.__version__,
    }


# ----------------------------------------------------------------------------------------------------
# PyTorch worker: the official FuseNet, restated compactly (eval only)


def build_torch_fusenet():
    import torch
    from torch import nn
    from torch.nn import functional as F

    class BasicBlock(nn.Module):
        def __init__(self, cin, c):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, c, 3, 2, 1)
            self.bn1, self.bn2 = nn.GroupNorm(c // 8, c), nn.GroupNorm(c // 8, c)
            self.conv2 = nn.Conv2d(c, c, 3, 1, 1)
            self.downsample = nn.Sequential(nn.Conv2d(cin, c, 1, 2), nn.GroupNorm(c // 8, c))

        def forward(self, x):
            a = F.leaky_relu(self.bn1(self.conv1(x)))
            return F.leaky_relu(self.bn2(self.conv2(a)) + self.downsample(x))

    class Attention(nn.Module):
        def __init__(self, dim, heads, sr):
            super().__init__()
            self.heads, self.sr_ratio = heads, sr
            self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
            if sr > 1:
                self.sr, self.norm = nn.Conv2d(dim, dim, sr, sr), nn.LayerNorm(dim)

        def forward(self, x, H, W):
            B, N, Cc = x.shape
            q = self.q(x).reshape(B, N, self.heads, -1).permute(0, 2, 1, 3)
            if self.sr_ratio > 1:
                x = self.norm(self.sr(x.permute(0, 2, 1).reshape(B, Cc, H, W)).reshape(B, Cc, -1).permute(0, 2, 1))
            kv = self.kv(x).reshape(B, -1, 2, self.heads, Cc // self.heads).permute(2, 0, 3, 1, 4)
            a = (q @ kv[0].transpose(-2, -1)) * (Cc // self.heads) ** -0.5
            return self.proj((a.softmax(-1) @ kv[1]).transpose(1, 2).reshape(B, N, Cc))

    class DW(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.dwconv = nn.Conv2d(d, d, 3, 1, 1, groups=d)

        def forward(self, x, H, W):
            B, N, Cc = x.shape
            return self.dwconv(x.transpose(1, 2).reshape(B, Cc, H, W)).flatten(2).transpose(1, 2)

    class Mlp(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.fc1, self.dwconv, self.fc2 = nn.Linear(d, 4 * d), DW(4 * d), nn.Linear(4 * d, d)

        def forward(self, x, H, W):
            return self.fc2(F.gelu(self.dwconv(self.fc1(x), H, W)))

    class Block(nn.Module):
        def __init__(self, d, heads, sr):
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(d, eps=1e-6), nn.LayerNorm(d, eps=1e-6)
            self.attn, self.mlp = Attention(d, heads, sr), Mlp(d)

        def forward(self, x, H, W):
            x = x + self.attn(self.norm1(x), H, W)
            return x + self.mlp(self.norm2(x), H, W)

    class PatchEmbed(nn.Module):
        def __init__(self, cin, d, k, s):
            super().__init__()
            self.proj, self.norm = nn.Conv2d(cin, d, k, s, k // 2), nn.LayerNorm(d)

        def forward(self, x):
            x = self.proj(x)
            _, _, H, W = x.shape
            return self.norm(x.flatten(2).transpose(1, 2)), H, W

    class MiT(nn.Module):
        def __init__(self):
            super().__init__()
            dims, heads, srs = [32, 64, 160, 256], [1, 2, 5, 8], [8, 4, 2, 1]
            for i in range(4):
                setattr(self, f"patch_embed{i + 1}", PatchEmbed(16 if i == 0 else dims[i - 1], dims[i],
                                                                7 if i == 0 else 3, 4 if i == 0 else 2))
            for i in range(4):
                setattr(self, f"block{i + 1}", nn.ModuleList([Block(dims[i], heads[i], srs[i]) for _ in range(2)]))
                setattr(self, f"norm{i + 1}", nn.LayerNorm(dims[i], eps=1e-6))

        def forward(self, x):
            outs, B = [], x.shape[0]
            for i in range(1, 5):
                x, H, W = getattr(self, f"patch_embed{i}")(x)
                for blk in getattr(self, f"block{i}"):
                    x = blk(x, H, W)
                x = getattr(self, f"norm{i}")(x).reshape(B, H, W, -1).permute(0, 3, 1, 2).contiguous()
                outs.append(x)
            return outs

    class SelfBlock(nn.Module):
        def __init__(self, d=256, heads=8):
            super().__init__()
            self.heads = heads
            self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.attn = nn.Module()
            self.attn.q_linear, self.attn.k_linear, self.attn.v_linear = (nn.Linear(d, d, bias=False) for _ in range(3))
            self.attn.proj = nn.Linear(d, d)
            self.mlp = nn.Module()
            self.mlp.fc1, self.mlp.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, x, pos):
            B, N, Cc = x.shape
            u = self.norm1(x)
            split = lambda t: t.reshape(B, N, self.heads, -1).permute(0, 2, 1, 3)  # noqa: E731
            q, k, v = split(self.attn.q_linear(u + pos)), split(self.attn.k_linear(u + pos)), split(self.attn.v_linear(u))
            a = ((q @ k.transpose(-2, -1)) * (Cc // self.heads) ** -0.5).softmax(-1)
            x = x + self.attn.proj((a @ v).transpose(1, 2).reshape(B, N, Cc))
            return x + self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))

    class CVT(nn.Module):
        def __init__(self, d=256, iters=8):
            super().__init__()
            self.decoder = nn.ModuleList([SelfBlock(d) for _ in range(iters)])
            self.sep_conv = nn.Module()
            self.sep_conv.conv1 = nn.Conv2d(d, d, 1, groups=d, bias=False)
            self.sep_conv.pointwise = nn.Conv2d(d, d, 1, bias=False)
            self.sep_deconv = nn.Module()
            self.sep_deconv.conv1 = nn.ConvTranspose2d(d, d, 1, groups=d)
            self.sep_deconv.pointwise = nn.Conv2d(d, d, 1, bias=False)

        @staticmethod
        def pos(H, W, d, device):
            f = d // 2
            y = torch.arange(1, H + 1, dtype=torch.float32, device=device)[:, None].expand(H, W)
            x = torch.arange(1, W + 1, dtype=torch.float32, device=device)[None, :].expand(H, W)
            dim_t = 10000 ** (2 * (torch.arange(f, dtype=torch.float32, device=device) // 2) / f)
            py, px = y[..., None] / dim_t, x[..., None] / dim_t
            py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), -1).flatten(2)
            px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), -1).flatten(2)
            return torch.cat((py, px), -1)  # (H, W, d)

        def forward(self, x):
            B, N, Cc, H, W = x.shape
            x = self.sep_conv.pointwise(self.sep_conv.conv1(x.view(-1, Cc, H, W))).view(B, N, Cc, H, W)
            pos = self.pos(H, W, Cc, x.device)[None, None].expand(B, N, H, W, Cc).reshape(B, -1, Cc)
            for blk in self.decoder:
                x = blk(x.permute(0, 1, 3, 4, 2).reshape(B, -1, Cc), pos).reshape(B, N, Cc, H, W)
            x = self.sep_deconv.pointwise(self.sep_deconv.conv1(x.view(-1, Cc, H, W)))
            return x.view(B, N, Cc, H, W)

    def up(cin, cout, g, k=3, act=True):
        layers = [nn.GroupNorm(g, cin), nn.Upsample(scale_factor=2, mode="bicubic", align_corners=True),
                  nn.Conv2d(cin, cout, k, 1, k // 2, padding_mode="replicate")]
        return nn.Sequential(*(layers + [nn.LeakyReLU()] if act else layers))

    def mask(cin, g):
        return nn.Sequential(nn.GroupNorm(g, cin), nn.Conv2d(cin, 1, 3, 1, 1, padding_mode="replicate"), nn.Sigmoid())

    class FuseNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder, self.decoder, self.cvt = nn.Sequential(), nn.Sequential(), nn.Sequential()
            self.backbone = MiT()
            self.grad = nn.Conv2d(1, 1, 5, 1, 2, padding_mode="replicate")
            self.decoder.add_module("layer_0", up(256, 160, 32))
            for k, (cin, cout, g) in enumerate([(160, 64, 20), (64, 32, 8), (32, 32, 4), (32, 16, 4)], start=1):
                self.decoder.add_module(f"layer_{k}_f", mask(cin, g))
                self.decoder.add_module(f"layer_{k}", up(cin, cout, g))
            self.decoder.add_module("layer_5_f", mask(16, 2))
            self.decoder.add_module("layer_5", up(16, 8, 1))
            self.decoder.add_module("layer_6_f", mask(8, 1))
            self.decoder.add_module("layer_6", up(8, 1, 1, k=5, act=False))
            self.mid_out_half = up(16, 1, 1, act=False)
            self.mid_out_quart = up(32, 1, 2, act=False)
            self.en_layer1, self.en_layer2, self.en_layer3 = BasicBlock(1, 8), BasicBlock(8, 16), BasicBlock(16, 32)
            for k in (1, 2, 3):
                self.encoder.add_module(f"layer_{k}", getattr(self, f"en_layer{k}"))
            self.cross = CVT()
            self.cvt.add_module("cvt_1", self.cross)

        def forward(self, low, high):
            h = self.grad(high)
            fl, fh = [], []
            for k in (1, 2, 3):
                blk = getattr(self, f"en_layer{k}")
                fl.append(blk(fl[-1] if fl else low))
                fh.append(blk(fh[-1] if fh else h))
            fl += self.backbone(fl[1])
            fh += self.backbone(fh[1])
            z = self.cross(torch.stack([fl[-1], fh[-1]], 1))
            fl[-1], fh[-1] = fl[-1] + z[:, 0], fh[-1] + z[:, 1]
            fl, fh, d = fl[::-1], fh[::-1], self.decoder
            r = d.layer_0(fl[0] + fh[0])
            masks = {}
            for k in range(1, 7):
                m = getattr(d, f"layer_{k}_f")(r)
                masks[k] = m
                x = r + (m * fl[k] + (1 - m) * fh[k])
                if k == 4:
                    out_quart = self.mid_out_quart(x)
                if k == 5:
                    out_half = self.mid_out_half(x)
                r = getattr(d, f"layer_{k}")(x)
            return r, out_half, out_quart, masks[5], masks[6]

    return FuseNet()


def torch_worker(size: int, runs: int, check: bool, threads: int | None = None) -> dict:
    import numpy as np
    import torch

    if threads:
        torch.set_num_threads(threads)
    official_state, low, high = _inputs(size)
    net = build_torch_fusenet().eval()
    sd = {k: torch.from_numpy(v) for k, v in official_state.official_state_dict(0).items()}
    net.load_state_dict(sd, strict=True)
    result = {}
    if check:  # compare with the stored official outputs (S=512) before timing anything
        z = np.load(DATA / "official_parity.npz")
        net.load_state_dict({k: torch.from_numpy(v) for k, v in
                             official_state.official_state_dict(int(z["state_seed"])).items()})
        lo, hi = official_state.official_inputs(int(z["s512_seed"]), 512)
        with torch.no_grad():
            out = net(torch.from_numpy(lo), torch.from_numpy(hi))
        result["check_512_maxabs"] = float(max(np.abs(o[0, 0].numpy()[:32, :32] - z[f"s512_{n}_crop_tl"]).max()
                                                for o, n in zip(out, ("refined", "out_half", "out_quart",
                                                                      "mask_quart", "mask_half"))))
        net.load_state_dict(sd, strict=True)
    lo, hi = torch.from_numpy(low), torch.from_numpy(high)

    def run():
        with torch.no_grad():
            net((lo - lo.min()) / (lo.max() - lo.min()), (hi - hi.min()) / (hi.max() - hi.min()))

    times = _timed(run, runs)
    result.update({
        "impl": "torch (official FuseNet)", "dtype": "float32", "size": size, "runs": runs, "compile_s": 0.0,
        "refiner_median_s": statistics.median(times), "refiner_min_s": min(times),
        "peak_rss_mib": _peak_rss_mib(), "torch": torch.__version__, "threads": torch.get_num_threads(),
    })
    return result


# ----------------------------------------------------------------------------------------------------
# driver


def _spawn(args: list[str], env: dict | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})})
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}",
                "args": args}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _fmt(v, unit=""):
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    return f"{v:.3f}{unit}" if isinstance(v, float) else str(v)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch side")
    ap.add_argument("--check-torch", action="store_true", help="check the PyTorch port against the stored outputs")
    ap.add_argument("--torch-threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    ap.add_argument("--cached", action="store_true",
                    help="also run each JAX configuration with its program loaded from a persistent compilation "
                         "cache (as a second `sddr-jax refine` of that size does): keys compile_cached_s, "
                         "refiner_cached_s, peak_rss_cached_mib")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--worker", choices=["jax", "torch"], help=argparse.SUPPRESS)
    ap.add_argument("--size", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker == "jax":
        print(json.dumps(jax_worker(args.size, args.dtype, args.runs)))
        return 0
    if args.worker == "torch":
        print(json.dumps(torch_worker(args.size, args.runs, args.check_torch, args.torch_threads)))
        return 0

    results = []
    for size in args.sizes:
        if not args.no_torch:
            extra = ["--check-torch"] if args.check_torch else []
            if args.torch_threads:
                extra += ["--torch-threads", str(args.torch_threads)]
            results.append(_spawn(["torch", "--size", str(size), "--runs", str(args.runs)] + extra))
        for dt in args.dtypes:
            worker = ["jax", "--size", str(size), "--dtype", dt, "--runs", str(args.runs)]
            r = _spawn(worker)
            if args.cached and "error" not in r:
                with tempfile.TemporaryDirectory() as cache:
                    env = {"JAX_COMPILATION_CACHE_DIR": cache, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0"}
                    _spawn(worker, env)  # fills the cache (apart from `r`, whose figures exclude writing it)
                    c = _spawn(worker, env)
                if "error" not in c:
                    r.update(compile_cached_s=c["compile_s"], refiner_cached_s=c["refiner_median_s"],
                             peak_rss_cached_mib=c["peak_rss_mib"])
            results.append(r)
    header = f"{'impl':<26}{'dtype':<10}{'S':>6}{'compile s':>11}{'refiner s':>11}{'one-stage s':>13}{'vs torch':>10}" \
             f"{'GFLOP':>9}{'peak RSS MiB':>14}{'+one-stage':>12}{'cached':>9}"
    print(header)
    print("-" * len(header))
    torch_time = {r["size"]: r["refiner_median_s"] for r in results if r.get("impl", "").startswith("torch")}
    for r in results:
        if "error" in r:
            print(f"error in {' '.join(r['args'])}: {r['error']}")
            continue
        ratio = torch_time.get(r["size"], float("nan")) / r["refiner_median_s"] if r["impl"] == "jax" else None
        gflop = r.get("xla_flops", float("nan")) / 1e9 if "xla_flops" in r else None
        print(f"{r['impl']:<26}{r['dtype']:<10}{r['size']:>6}{_fmt(r['compile_s']):>11}{_fmt(r['refiner_median_s']):>11}"
              f"{_fmt(r.get('one_stage_median_s')):>13}{_fmt(ratio, 'x'):>10}{_fmt(gflop):>9}{_fmt(r['peak_rss_mib']):>14}"
              f"{_fmt(r.get('peak_rss_with_pipeline_mib')):>12}{_fmt(r.get('peak_rss_cached_mib')):>9}")
    print("times are medians of", args.runs, "runs after one warm-up; 'vs torch' = torch refiner time / this one")
    summary = {}
    for r in results:  # the summary: jax float32 refiner time / torch refiner time, per size
        if "error" not in r:
            r["refiner_s"] = r["refiner_median_s"]
            if r["impl"] == "jax" and r["dtype"] == "float32" and r["size"] in torch_time:
                summary[f"ratio_{r['size']}"] = r["refiner_median_s"] / torch_time[r["size"]]
    load = os.getloadavg()
    print("jax float32 / torch: " + (", ".join(f"{k.removeprefix('ratio_')}: {v:.2f}" for k, v in summary.items())
                                     or "n/a (no torch run)")
          + f"; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, **summary, "load_average": load,
                                               "argv": sys.argv[1:]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
