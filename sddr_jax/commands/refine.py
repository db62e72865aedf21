"""`sddr-jax refine`: refine a low/high depth pair with the official demo's one-stage pipeline (spec 5.1).

    sddr-jax refine --checkpoint CKPT --low LOW --high HIGH --output OUT [--size 2048] [--rgb IMAGE]

CKPT is the official `.pt` file or a directory written by `sddr-jax convert`. Files are read and written by
extension (.npy, .png 8/16-bit, .pfm, .tif); a `.png` output is quantised like the official demo
(min-max, x65535, uint16). The output has the size of --rgb when given (as in the demo), else of HIGH.
"""
from __future__ import annotations

HELP = "refine low/high depth maps (one-stage or coarse-to-fine two-stage)"


def add_arguments(parser) -> None:
    parser.add_argument("--checkpoint", required=True, help="official .pt file or converted Orbax directory")
    parser.add_argument("--low", required=True, help="low-resolution prediction (.npy/.png/.pfm/.tif)")
    parser.add_argument("--high", required=True, help="high-resolution prediction (.npy/.png/.pfm/.tif)")
    parser.add_argument("--output", required=True, help="refined depth file (.npy/.png/.pfm/.tif)")
    parser.add_argument("--size", type=int, default=2048,
                        help="working size S, a multiple of 128 (default %(default)s)")
    parser.add_argument("--rgb", default=None,
                        help="RGB image whose size the output takes (only its size is read)")
    parser.add_argument("--bf16", action="store_true",
                        help="compute the refiner in bfloat16 (parameters stay float32)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def _compute_dtype(args):
    if not args.bf16:
        return None
    import jax.numpy as jnp

    return jnp.bfloat16


def refine_pair(args, params) -> None:
    """One-stage refinement of the single pair named by args.low / args.high into args.output."""
    from pathlib import Path

    from sddr_jax import io
    from sddr_jax.refine import refine_one_stage

    if Path(args.output).exists() and not args.overwrite:
        raise FileExistsError(f"{args.output}: already exists (use --overwrite to replace it)")
    low = io.read_depth(args.low)
    high = io.read_depth(args.high)
    out_hw = io.read_image_size(args.rgb) if args.rgb else None
    refined = refine_one_stage(params, low, high, size=args.size, out_hw=out_hw, dtype=_compute_dtype(args))
    io.write_depth(args.output, refined, overwrite=args.overwrite)
    h, w = refined.shape[:2]
    print(f"refined {args.low} + {args.high} at S={args.size} -> {args.output} ({h}x{w})")


def run(args) -> int:
    from sddr_jax.convert import load_params
    from sddr_jax.refine import check_size

    check_size(args.size, "--size")
    params = load_params(args.checkpoint)
    refine_pair(args, params)
    return 0
