"""`sddr-jax datasets`: list the TFDS datasets of sddr-jax, build one (ArrayRecord, no TensorFlow), or show one.

    sddr-jax datasets list
    sddr-jax datasets build NAME --data_dir DIR [--manual_dir DIR] [--config C] [--skip_corrupt]
                                [--predictor NAME] [--num_workers N] [--overwrite]
    sddr-jax datasets info NAME --data_dir DIR [--config C]
"""
from __future__ import annotations

import sys
import time

HELP = "build TFDS datasets (synthetic or from a manual download)"


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("list", help="list the datasets and their configs")
    b = sub.add_parser("build", help="build one dataset (ArrayRecord files under DATA_DIR)")
    b.add_argument("name", help="dataset name (see 'sddr-jax datasets list')")
    b.add_argument("--data_dir", required=True, help="where the built dataset goes")
    b.add_argument("--manual_dir", default=None,
                   help="the manual download (default DATA_DIR/downloads/manual); not used by sddr_synthetic")
    b.add_argument("--config", default=None, help="builder config (default: the dataset's first config)")
    b.add_argument("--skip_corrupt", action="store_true",
                   help="skip samples that fail to load, report each and their count (default: stop at the first)")
    b.add_argument("--predictor", default=None,
                   help="which <predictor>/low_<res>, high_<res> folders to store when several are present")
    b.add_argument("--num_workers", type=int, default=None, help="worker processes (sddr_synthetic only)")
    b.add_argument("--overwrite", action="store_true", help="rebuild even if the dataset is already built")
    i = sub.add_parser("info", help="show a built dataset's splits and sizes")
    i.add_argument("name")
    i.add_argument("--data_dir", required=True)
    i.add_argument("--config", default=None)


def run(args) -> int:
    from sddr_jax.data import registry

    if args.action == "list":
        for name, (kind, desc) in registry.DATASETS.items():
            configs = [c.name for c in getattr(registry.builder_class(name), "BUILDER_CONFIGS", [])]
            print(f"{name:16s} {kind:9s} {desc}" + (f"  [configs: {', '.join(configs)}]" if configs else ""))
        return 0
    if args.action == "info":
        builder = registry.get_builder(args.name, args.data_dir, args.config)
        if not builder.is_prepared():
            print(f"{builder.info.full_name}: not built under {args.data_dir}")
            return 1
        print(f"{builder.info.full_name} in {builder.data_dir}")
        for split, info in builder.info.splits.items():
            print(f"  {split}: {info.num_examples} examples, {info.num_bytes / 1e6:.1f} MB")
        return 0

    kwargs = {"skip_corrupt": args.skip_corrupt, "predictor": args.predictor}
    if args.num_workers is not None:
        if args.name != "sddr_synthetic":
            from sddr_jax.errors import UserError

            raise UserError("--num_workers applies to sddr_synthetic only")
        kwargs["num_workers"] = args.num_workers
    start = time.time()
    builder = registry.build(args.name, args.data_dir, args.manual_dir, args.config,
                                  overwrite=args.overwrite, **kwargs)
    if builder.already_built:
        print(f"{builder.info.full_name}: already built in {builder.data_dir} (pass --overwrite to rebuild)")
        return 0
    took = time.time() - start
    for split, info in builder.info.splits.items():
        print(f"{builder.info.full_name} {split}: {info.num_examples} examples")
    skipped = sum(len(v) for v in builder.skipped.values())
    if skipped:
        print(f"skipped {skipped} corrupt sample(s): " + "; ".join(r for v in builder.skipped.values() for r in v),
              file=sys.stderr)
    print(f"built in {took:.1f} s -> {builder.data_dir}")
    return 0
