"""`sddr-jax train`: train the refiner with self-distillation (docs/method.md §10); resumes from --workdir.

    sddr-jax train --config configs/synthetic.py[:arg] --workdir DIR [--config.x=y ...] [--init_from PATH]

`--config.key.sub=value` (or `--config.key.sub value`) overrides one config field, as ml_collections'
config flags do; values are parsed as Python literals when they are one.
"""
from __future__ import annotations

HELP = "train the refiner with self-distillation"


def add_arguments(parser) -> None:
    parser.add_argument("--config", required=True,
                        help="experiment config file with get_config(arg), e.g. configs/synthetic.py:tiny")
    parser.add_argument("--workdir", required=True,
                        help="run directory: checkpoints, logs (JSONL, TensorBoard); an existing run resumes")
    parser.add_argument("--init_from", default=None,
                        help="initial weights: the official .pt (or a converted directory), or mit:PATH for "
                             "SegFormer's ImageNet MiT-b0 weights (ignored when the workdir has a checkpoint)")
    parser.add_argument("overrides", nargs="*", metavar="--config.KEY=VALUE", help="config overrides")


def parse_extra(args, extra: list[str], parser) -> None:
    """`--config.x=y` / `--config.x y` options cannot be declared in advance: they arrive here as the
    arguments argparse did not know, and are appended to `args.overrides`."""
    overrides, i = list(args.overrides or []), 0
    while i < len(extra):
        item = extra[i]
        if not item.startswith("--config."):
            parser.error(f"unrecognized argument {item} (config overrides look like --config.train.num_steps=10)")
        if "=" not in item:
            if i + 1 >= len(extra):
                parser.error(f"{item}: expected a value (--config.key=value)")
            item, i = f"{item}={extra[i + 1]}", i + 1
        overrides.append(item)
        i += 1
    args.overrides = overrides


def run(args) -> int:
    from sddr_jax import training

    config = training.load_config(args.config, args.overrides)
    if args.init_from:
        config.init_from = args.init_from
    result = training.train_and_evaluate(config, args.workdir)
    if result.get("already_trained"):
        print(f"{args.workdir}: already trained to step {result['step']} (train.num_steps); nothing to do. "
              "Its held-out evaluation, as saved:")
    else:
        print(f"trained {result['step']} steps -> {args.workdir}")
    ev = result.get("eval") or {}
    keys = ("abs_rel", "delta1", "ord_boost", "d3r")
    if ev:
        print(f"{'held-out':10s}" + "".join(f"{k:>11s}" for k in keys))
        order = ("refined", "low", "high")
        for name in sorted(ev, key=lambda n: (order.index(n) if n in order else len(order), n)):
            m = ev[name]
            print(f"{name:10s}" + "".join(f"{m.get(k, float('nan')):11.4f}" for k in keys))
    return 0
