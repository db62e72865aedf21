"""Pictures of a trained run: per-image panels of the inputs, the refined map, errors, G_S and the soft masks."""
from __future__ import annotations

import functools
import pathlib

import jax
import numpy as np

from sddr_jax import viz
from sddr_jax.checkpoints import load_training_checkpoint
from sddr_jax.data.pipeline import TrainData
from sddr_jax.eval import metrics
from sddr_jax.models.refiner import build_refiner
from sddr_jax.training.labels import label_body, label_options, label_predictor


def draw_panels(config, workdir: pathlib.Path, panels_dir: pathlib.Path, num: int) -> list[pathlib.Path]:
    """Panels of the first `num` held-out images with the trained params, G_S and the soft masks."""
    params, _, _ = load_training_checkpoint(workdir)
    model = build_refiner(config.model)
    apply = jax.jit(lambda p, low, high: model.apply({"params": p}, low, high, train=False))
    # The training loop's own label body (outside pmap: no device axis), invalid-depth fill included.
    labels_of = jax.jit(functools.partial(label_body, axis_name=None, **label_options(config)))
    _, predictor = label_predictor(config)

    data = TrainData(config)
    panels_dir.mkdir(parents=True, exist_ok=True)
    written, index = [], 0
    for batch, n_real in data.eval_batches(1):
        out = apply(params, batch["low"], batch["high"])
        labels = labels_of(params, {k: batch[k] for k in ("rgb", "low", "high", "depth", "valid", "key") if k in batch},
                           predictor)
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
