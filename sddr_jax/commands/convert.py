"""`sddr-jax convert IN.pt OUT`: official PyTorch checkpoint -> Flax/Orbax checkpoint directory (docs/method.md §4).

Reading the `.pt` file needs no torch (restricted unpickler); the output loads with
`sddr_jax.convert.load_params(OUT)` and by `sddr-jax refine --checkpoint OUT`.
"""
from __future__ import annotations

HELP = "convert the official PyTorch checkpoint (.pt) to a Flax/Orbax checkpoint"


def add_arguments(parser) -> None:
    parser.add_argument("input", help="official checkpoint, e.g. model_dict_1_5600.pt (dict with key 'net')")
    parser.add_argument("output", help="output Orbax checkpoint directory (must not exist, see --overwrite)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output directory")


def run(args) -> int:
    from pathlib import Path

    from sddr_jax import convert

    if Path(args.output).exists() and not args.overwrite:
        raise FileExistsError(f"{args.output}: already exists (use --overwrite to replace it)")
    params = convert.load_official(args.input)
    dest = convert.save_params(params, args.output, overwrite=args.overwrite)
    print(f"converted {args.input}: {convert.count_params(params):,} parameters -> {dest}")
    return 0
