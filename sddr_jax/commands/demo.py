"""`sddr-jax demo`: the whole method on a fresh machine, with no downloads.

1. builds a small `sddr_synthetic` set (procedural RGB-D scenes; the simulated predictor of spec 7 makes the
   blurry-but-consistent low and sharp-but-inconsistent high inputs),
2. trains the refiner from scratch with self-distillation (`configs/synthetic.py`: L_gt first, then
   pseudo-label rounds with G_S from the model's own coarse-to-fine refinement),
3. evaluates the refined depth against BOTH inputs on the held-out split,
4. writes `demo_out/`: `metrics.md` / `metrics.json`, `panels/*.png` (RGB | low | high | refined | ground
   truth | error maps | G_S | soft masks), `training_curve.png`, and the run (checkpoints, logs) in `run/`.

Re-running resumes an unfinished run in the same folder; a finished one is refused unless `--overwrite`.
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


def _prepare_out(out: pathlib.Path, overwrite: bool) -> None:
    from sddr_jax.commands.common import check_writable_dir

    finished = (out / "metrics.md").exists()
    if finished and not overwrite:
        raise UserError(f"{out}: holds a finished demo (metrics.md); pass --overwrite (make demo "
                        f"DEMO_ARGS=--overwrite) to run it again, or --out DIR for another folder")
    if finished and overwrite:
        for name in ("run", "panels", "metrics.md", "metrics.json", "training_curve.png"):
            p = out / name
            if p.is_dir():
                shutil.rmtree(p)
            elif p.exists():
                p.unlink()
    check_writable_dir(out, "output folder")


def draw_panels(config, workdir: pathlib.Path, panels_dir: pathlib.Path, num: int) -> list[pathlib.Path]:
    """Panels of the first `num` held-out images with the trained params, G_S and the soft masks."""
    import jax
    import numpy as np

    from sddr_jax import checkpointing, coarse_to_fine, metrics, train, viz
    from sddr_jax.predictors import SimulatedPredictor

    params, _ = checkpointing.load_params(workdir)
    model = train.make_model(config)
    opts = train.label_options(config)
    pred_options = dict(opts.pop("predictor_options"))
    apply = jax.jit(lambda p, low, high: model.apply({"params": p}, low, high, train=False))

    @jax.jit
    def labels_of(p, depth, key):
        predictor = SimulatedPredictor.create(key, **pred_options)
        return coarse_to_fine.edge_labels(p, depth, predictor, **opts)

    data = train.TrainData(config)
    panels_dir.mkdir(parents=True, exist_ok=True)
    written, index = [], 0
    for batch, n_real in data.eval_batches(1):
        out = apply(params, batch["low"], batch["high"])
        labels = labels_of(params, batch["depth"], jax.random.PRNGKey(int(config.seed)))
        for i in range(n_real):
            if index >= num:
                return written
            gt, valid = np.asarray(batch["depth"][i, ..., 0]), np.asarray(batch["valid"][i, ..., 0])
            maps = {k: np.asarray(v[i, ..., 0]) for k, v in
                    (("low", batch["low"]), ("high", batch["high"]), ("refined", out.refined))}
            aligned = {k: np.asarray(metrics.align_prediction(v, gt, valid)) for k, v in maps.items()}
            err = {f"error {k}": np.where(valid, np.abs(a - gt), np.nan) for k, a in aligned.items()}
            panels = [("rgb", np.asarray(batch["rgb"][i])), *((k, aligned[k]) for k in maps),
                      ("ground truth", np.where(valid, gt, np.nan)), *err.items(),
                      ("G_S (pseudo-label)", np.asarray(labels["edge"][i, ..., 0])),
                      ("soft mask m5", np.asarray(out.mask_quart[i, ..., 0])),
                      ("soft mask m6", np.asarray(out.mask_half[i, ..., 0]))]
            path = panels_dir / f"test_{index:03d}.png"
            viz.save_panels(path, panels, ncols=6, overwrite=True,
                            shared_range=("low", "high", "refined", "ground truth"))
            written.append(path)
            index += 1
    return written


def run(args) -> int:
    from sddr_jax import train, viz
    from sddr_jax.commands.common import metrics_table, write_text_atomic

    t0 = time.perf_counter()
    out = pathlib.Path(args.out).absolute()
    if args.num_panels < 0:
        raise UserError(f"--num-panels: expected a count >= 0, got {args.num_panels}")
    _prepare_out(out, args.overwrite)
    spec = args.config or str(default_config_path())
    config = train.load_config(spec, args.overrides)
    if not config.data.get("data_dir"):
        config.data.data_dir = str(out / "data")
    workdir = out / "run"
    print(f"sddr-jax demo: {config.data.name} ({config.data.config}) at S={config.data.image_size}, "
          f"{config.train.num_steps} steps ({config.train.gt_only_steps} with L_gt only, then self-distillation "
          f"with G_S refreshed every {config.train.label_refresh_steps} steps)", flush=True)

    print("[1/4] data and training (the dataset is built on first use)", flush=True)
    result = train.train_and_evaluate(config, workdir)
    summary = result["eval"]
    if not summary:
        raise UserError(f"{workdir}: training finished without an evaluation")

    print("[2/4] metrics on the held-out split", flush=True)
    n = int(config.eval.num_examples) or "all"
    caption = (f"Held-out `{config.data.name}` images ({n}), S={config.data.image_size}; every prediction "
               f"aligned to the ground truth by least-squares scale and shift before the metrics. Best in bold.")
    table = metrics_table(summary, COLUMNS, caption=caption)
    write_text_atomic(out / "metrics.md", table, overwrite=True)
    write_text_atomic(out / "metrics.json", json.dumps({"step": result["step"], "eval": summary}, indent=1),
                      overwrite=True)

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
