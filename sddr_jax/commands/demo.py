"""`sddr-jax demo`: the whole method on a fresh machine, with no downloads.

1. builds a small `sddr_synthetic` set (procedural RGB-D scenes; the simulated predictor of docs/method.md §7 makes the
   blurry-but-consistent low and sharp-but-inconsistent high inputs),
2. trains the refiner from scratch with self-distillation (`configs/synthetic.py`: L_gt first, then
   pseudo-label rounds with G_S from the model's own coarse-to-fine refinement),
3. evaluates the refined depth against BOTH inputs on the held-out split,
4. writes `demo_out/`: `metrics.md` / `metrics.json`, `panels/*.png` (RGB | low | high | refined | ground
   truth | error maps | G_S | soft masks), `training_curve.png`, and the run (checkpoints, logs) in `run/`.

Re-running resumes an unfinished run in the same folder. A finished one is not retrained: the demo says to which
step it was trained and prints its saved table; `--overwrite` trains it again from scratch.
"""
from __future__ import annotations

import json
import pathlib
import shutil
import sys
import time

from sddr_jax.errors import UserError

HELP = "run the embedded end-to-end demo (synthetic data, self-distillation, metrics, pictures)"

COLUMNS = {"low": "low input", "high": "high input", "refined": "refined (ours)"}
GT_ONLY = "gt_only"  # the summary key of the phase-1 model's refined maps


def phase1_eval(workdir: pathlib.Path, step: int) -> dict[str, float] | None:
    """The refined maps' held-out metrics at `step` (the end of phase 1: train.gt_only_steps) from the run's
    eval.jsonl, or None when that step was not evaluated."""
    from sddr_jax.viz import read_jsonl

    path = workdir / "eval.jsonl"
    if not path.is_file():
        return None
    found = None
    for rec in read_jsonl(path):  # a resumed run may log a step twice: the last record wins
        if rec.get("step") == step:
            found = {k.removeprefix("refined/"): v for k, v in rec.items() if k.startswith("refined/")}
    return found or None


def demo_table(summary: dict, gt_only: dict | None, gt_only_steps: int, caption: str) -> tuple[str, dict]:
    """The demo's table (and the summary it shows): low, high, the phase-1 model when it was evaluated, the
    final refined model; best of each row in bold."""
    from sddr_jax.eval.evaluate import metrics_table

    columns = {"low": COLUMNS["low"], "high": COLUMNS["high"]}
    shown = {k: summary[k] for k in ("low", "high") if k in summary}
    if gt_only is not None:
        columns[GT_ONLY] = f"refined, L_gt only (step {gt_only_steps})"
        shown[GT_ONLY] = gt_only
    columns["refined"] = COLUMNS["refined"]
    shown["refined"] = summary["refined"]
    return metrics_table(shown, columns, caption=caption), shown


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--config", default=None,
                        help="config file[:arg] (default: the bundled configs/synthetic.py)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results of a finished demo in --out (its run is retrained)")
    parser.add_argument("--num-panels", type=int, default=4, help="held-out images drawn as panels (default 4)")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help="config overrides, e.g. train.num_steps=100 (as `sddr-jax train --config.KEY=VALUE`)")


def default_config_path() -> pathlib.Path:
    import sddr_jax_configs

    return pathlib.Path(sddr_jax_configs.__file__).parent / "synthetic.py"


def _finished(out: pathlib.Path) -> str | None:
    """What to say about a finished demo in `out` (its metrics.md and metrics.json are there), else None."""
    try:
        table = (out / "metrics.md").read_text()
        step = json.loads((out / "metrics.json").read_text())["step"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (f"sddr-jax demo: {out} is already trained to step {step}; nothing was trained or evaluated again "
            f"(--overwrite, or make demo DEMO_ARGS=--overwrite, runs it again from scratch). Its saved table:\n\n"
            f"{table}")


def _prepare_out(out: pathlib.Path, overwrite: bool) -> None:
    from sddr_jax.io import check_writable_dir

    finished = (out / "metrics.md").exists()
    if finished and overwrite:
        for name in ("run", "panels", "metrics.md", "metrics.json", "training_curve.png"):
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    check_writable_dir(out, "output folder")


def run(args) -> int:
    from sddr_jax import training, viz
    from sddr_jax.training.panels import draw_panels
    from sddr_jax.io import write_text_atomic

    t0 = time.perf_counter()
    out = pathlib.Path(args.out).absolute()
    if args.num_panels < 0:
        raise UserError(f"--num-panels: expected a count >= 0, got {args.num_panels}")
    said = None if args.overwrite else _finished(out)
    if said is not None:
        print(said)
        return 0
    _prepare_out(out, args.overwrite)
    spec = args.config or str(default_config_path())
    config = training.load_config(spec, args.overrides)
    if not config.data.get("data_dir"):
        config.data.data_dir = str(out / "data")
    workdir = out / "run"
    print(f"sddr-jax demo: {config.data.name} ({config.data.config}) at S={config.data.image_size}, "
          f"{config.train.num_steps} steps ({config.train.gt_only_steps} with L_gt only, then self-distillation "
          f"with G_S refreshed every {config.train.label_refresh_steps} steps)", flush=True)

    print("[1/4] data and training (the dataset is built on first use)", flush=True)
    result = training.train_and_evaluate(config, workdir)
    if result.get("already_trained"):
        print(f"      {workdir}: already trained to step {result['step']}; its saved evaluation is used", flush=True)
    summary = result["eval"]
    if not summary:
        raise UserError(f"{workdir}: training finished without an evaluation")

    print("[2/4] metrics on the held-out split", flush=True)
    n = int(config.eval.num_examples) or "all"
    caption = (f"Held-out `{config.data.name}` images ({n}), S={config.data.image_size}; every prediction "
               f"aligned to the ground truth by least-squares scale and shift before the metrics. Best in bold.")
    gt_steps = int(config.train.gt_only_steps)
    gt_only = phase1_eval(workdir, gt_steps) if 0 < gt_steps < int(config.train.num_steps) else None
    if gt_only is not None:
        caption += (f" `{COLUMNS['refined']}` is the final model (step {result['step']}); `L_gt only` is the same "
                    f"run at the end of phase 1, the model its self-distillation rounds started from.")
    table, shown = demo_table(summary, gt_only, gt_steps, caption)
    write_text_atomic(out / "metrics.md", table, overwrite=True)
    write_text_atomic(out / "metrics.json", json.dumps({"step": result["step"], "gt_only_step": gt_steps if gt_only
                                                        else None, "eval": shown}, indent=1), overwrite=True)

    print("[3/4] pictures", flush=True)
    panels = draw_panels(config, workdir, out / "panels", args.num_panels) if args.num_panels else []
    curve = out / "training_curve.png"
    records = [{k.removeprefix("train/"): v for k, v in r.items()} for r in viz.read_jsonl(workdir / "train.jsonl")]
    keys = [k for k in ("loss", "loss_gt", "l_gt", "images_per_s") if any(k in r for r in records)] or None
    viz.plot_training_curves(records, curve, keys=keys, overwrite=True)

    print("[4/4] done in %.0f s\n" % (time.perf_counter() - t0), flush=True)
    print(table)
    print(f"metrics:        {out / 'metrics.md'}")
    print(f"panels:         {out / 'panels'}/ ({len(panels)} images)")
    print(f"training curve: {curve}")
    print(f"run:            {workdir} (checkpoints, train.jsonl, eval.jsonl, tensorboard/)")
    sys.stdout.flush()
    return 0
