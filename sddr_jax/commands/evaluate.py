"""`sddr-jax evaluate`: metrics of depth predictions (or of a checkpoint) on a built dataset (docs/method.md §9).

    sddr-jax evaluate --dataset middlebury2021 --data_dir DIR --predictions OUT_DIR
    sddr-jax evaluate --dataset sddr_synthetic --data_dir DIR --config tiny --checkpoint CKPT

Predictions are matched to the dataset's examples by name (`<name>.png/.npy/.pfm/.tif[f]`) and resized to the
ground-truth size with OpenCV linear (docs/method.md §9.2). With --checkpoint the refiner runs the one-stage pipeline on
the dataset's stored low/high maps (or, with --simulate, on the simulated predictor's maps). The stored low
and high maps are evaluated beside it as baselines. Table: delta1, AbsRel, SqRel, RMSE, log10, delta2,
delta3, ORD (Boost's and Eq. 13's), D3R and boundary F1; written as Markdown and JSON.

Each dataset is scored by a named protocol (`--protocol`, default the dataset's own: middlebury2014, eth3d
and booster follow PRO / PatchRefiner / Booster's official script; see sddr_jax.eval.evaluate.PROTOCOLS);
`--report paper` prints the SDDR paper's Tables 1/2 and 7/8 layout beside the paper-reported numbers.
The patch consistency error (sddr_jax.eval.consistency) is not part of this command: it needs the
per-patch predictions, and evaluate only sees the final maps.
"""
from __future__ import annotations

import json
import pathlib
import time
from typing import Any

from sddr_jax.errors import UserError

HELP = "evaluate depth predictions or a checkpoint on a dataset"


def add_arguments(parser) -> None:
    parser.add_argument("--dataset", required=True, help="dataset name (see 'sddr-jax datasets list')")
    parser.add_argument("--data_dir", required=True, help="TFDS data_dir the dataset was built into")
    parser.add_argument("--config", default=None, help="builder config of the dataset (e.g. tiny)")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--predictions", help="folder of predicted depth maps named like the examples")
    src.add_argument("--checkpoint", help="refiner checkpoint: official .pt, converted dir or training workdir")
    parser.add_argument("--size", type=int, default=2048, help="refiner working size S with --checkpoint")
    parser.add_argument("--simulate", action="store_true",
                        help="with --checkpoint: make low/high with the simulated predictor when none are stored")
    parser.add_argument("--no-baselines", action="store_true", help="do not evaluate the stored low/high maps")
    parser.add_argument("--protocol", choices=("sddr", "middlebury2021", "middlebury2014", "eth3d", "booster"),
                        default=None, help="named evaluation protocol (default: the dataset's own, else sddr; "
                        "see sddr_jax.eval.evaluate.PROTOCOLS)")
    parser.add_argument("--align", choices=("lsq", "median", "none"), default=None,
                        help="alignment of each prediction to the GT (default: the protocol's; sddr: "
                             "least-squares scale and shift)")
    parser.add_argument("--space", choices=("depth", "disparity"), default=None,
                        help="space of the alignment (default: the protocol's; sddr: depth, as the official script)")
    parser.add_argument("--report", choices=("table", "paper"), default="table",
                        help="'paper': rows in the layout of the SDDR paper's Tables 1/2 and 7/8 beside the "
                             "paper-reported numbers (middlebury2021, multiscopic, hypersim)")
    parser.add_argument("--paper-predictor", choices=("midas", "leres", "zoedepth"), default=None,
                        help="with --report paper: the base predictor's paper rows to show (default: all)")
    parser.add_argument("--paper-stage", choices=("one", "two"), default="one",
                        help="with --report paper: one-stage (Tables 1/7, default) or two-stage (Tables 2/8)")
    parser.add_argument("--pred-space", choices=("depth", "disparity"), default="depth",
                        help="what the predictions are, for D3R/ORD (Boost treats them as disparity)")
    parser.add_argument("--gt", choices=("legacy_uint8", "float"), default=None,
                        help="Middlebury GT path: the official uint8 cast (default for middlebury2021) or float")
    parser.add_argument("--no-edge-metrics", action="store_true", help="skip ORD, D3R and boundary F1 (faster)")
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N examples")
    parser.add_argument("--skip-missing", action="store_true",
                        help="skip examples without a prediction file (reported with their count)")
    parser.add_argument("--output", default=None,
                        help="write OUTPUT.md and OUTPUT.json (default: print the table only)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")


def evaluate(args) -> dict[str, Any]:
    """Runs the evaluation of `args` (see add_arguments) and returns {'summary', 'per_image', 'settings'}."""
    from sddr_jax.data.pipeline import data_source, decode_record
    from sddr_jax.eval import evaluate as E

    import dataclasses

    protocol = E.protocol_for(args.dataset, getattr(args, "protocol", None))
    protocol = dataclasses.replace(protocol, align=args.align or protocol.align, space=args.space or protocol.space)
    legacy = (args.gt or ("legacy_uint8" if args.dataset in E.LEGACY_UINT8_DATASETS else "float")) == "legacy_uint8"
    if args.limit < 0:
        raise UserError(f"--limit: expected a count >= 0, got {args.limit}")
    refine_fn = None
    if args.predictions and not pathlib.Path(args.predictions).is_dir():
        raise UserError(f"--predictions {args.predictions}: expected a folder of depth maps named like the "
                        "examples" + (", got a file" if pathlib.Path(args.predictions).exists() else
                                      ", and there is no such folder"))
    if not args.predictions:
        from sddr_jax.checkpoints import load_refiner
        from sddr_jax.inference.one_stage import check_size, refine_one_stage

        size = check_size(args.size, "--size")
        params, model_config = load_refiner(args.checkpoint)

        def refine_fn(low, high, hw):
            return refine_one_stage(params, low, high, size=size, out_hw=hw, model_config=model_config)

    source = data_source(args.dataset, args.data_dir, args.split, args.config)
    result = E.evaluate_dataset(
        source, decode=decode_record, predictions=args.predictions or None, refine=refine_fn, simulate=args.simulate,
        baselines=not args.no_baselines, legacy_uint8=legacy, edge_metrics=not args.no_edge_metrics,
        limit=args.limit, skip_missing=args.skip_missing,
        pred_space=args.pred_space, dataset=args.dataset, protocol=protocol,
        progress=lambda i, n, name: print(f"\r[{i}/{n}] {name}", end="", flush=True))
    print()
    missing = result["missing"]
    result["settings"] = dict(
        dataset=args.dataset, config=args.config, split=args.split, images=len(result["per_image"]),
        skipped_missing=len(missing), protocol=protocol.name, align=protocol.align, space=protocol.space,
        depth_range=[protocol.min_depth, protocol.max_depth], clip_pred=protocol.clip_pred,
        eval_scale=protocol.eval_scale, aggregate=protocol.aggregate, pred_space=args.pred_space,
        gt="legacy_uint8" if legacy else "float",
        source=str(args.predictions) if args.predictions else f"checkpoint {args.checkpoint} at S={args.size}")
    if missing:
        print(f"skipped {len(missing)} example(s) without a prediction: {', '.join(missing[:10])}"
              + (" ..." if len(missing) > 10 else ""))
    result["settings"]["unscored"] = {k: len(v) for k, v in result["unscored"].items()}
    for name, images in result["unscored"].items():
        print(f"could not score {len(images)} image(s) for {name!r} (no finite value on valid pixels): "
              f"{', '.join(images[:10])}" + (" ..." if len(images) > 10 else ""))
    return result


def run(args) -> int:
    from sddr_jax.eval.evaluate import PAPER_DATASETS, json_safe, metrics_table, paper_report
    from sddr_jax.io import write_text_atomic

    t0 = time.perf_counter()
    if args.output:
        out = pathlib.Path(args.output)
        for ext in (".md", ".json"):
            target = out.with_name(out.name + ext)
            if target.exists() and not args.overwrite:
                raise FileExistsError(f"{target}: already exists (use --overwrite to replace it)")
        if not out.parent.is_dir():
            raise FileNotFoundError(f"--output {out}: the folder {out.parent} does not exist")
    report = getattr(args, "report", "table")
    if report == "paper" and args.dataset not in PAPER_DATASETS:
        raise UserError(f"--report paper: the SDDR paper reports {', '.join(PAPER_DATASETS)}; got "
                        f"{args.dataset!r}")
    result = evaluate(args)
    s = result["settings"]
    columns = {"prediction": "prediction", "refined": "refined", "low": "low input", "high": "high input"}
    bad = "".join(f" {n} image(s) could not be scored for {k} and are left out of its means." for k, n in
                  s.get("unscored", {}).items())
    rng = "" if s["depth_range"] == [None, None] else f", GT range {s['depth_range']}"
    caption = (f"{s['dataset']} ({s['split']}, {s['images']} images), {s['source']}; protocol {s['protocol']}: "
               f"alignment {s['align']} in {s['space']} space{rng}, GT {s['gt']}.{bad} Best in bold.")
    if report == "paper":
        table = paper_report(s["dataset"], result["summary"], gt=s["gt"], stage=args.paper_stage,
                             predictor=args.paper_predictor, images=s["images"], source=s["source"],
                             protocol=s["protocol"]) + bad
    else:
        table = metrics_table(result["summary"], columns, caption=caption)
    print(table)
    if args.output:
        out = pathlib.Path(args.output)
        write_text_atomic(out.with_name(out.name + ".md"), table, overwrite=args.overwrite)
        write_text_atomic(out.with_name(out.name + ".json"),
                          json.dumps(json_safe({k: result[k] for k in ("settings", "summary", "per_image")}),
                                     indent=1), overwrite=args.overwrite)
        print(f"wrote {out}.md and {out}.json")
    print(f"evaluated in {time.perf_counter() - t0:.1f} s")
    return 0
