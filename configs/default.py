"""Every default of `sddr-jax train`: the paper's recipe (docs/method.md §10) at S = 2048.

`get_config()` holds every knob that `sddr_jax.training.train_and_evaluate` reads; the other configs of this
folder start from it and change what they need.
"""
from __future__ import annotations

import ml_collections

from sddr_jax.inference.windows import OFFICIAL_SCHEDULE
from sddr_jax.losses import default_loss_config


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    """Every knob of `train_and_evaluate`, with the §10 recipe (docs/method.md)'s values (S = 2048, batch 2, lr 1e-4,
    AdamW wd 0.01, x0.99 every 100 steps, the `official` loss). The other configs start from this; `arg` is
    unused (every get_config file takes one)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.init_from = ""  # "" | official .pt / converted dir | "mit:PATH" (SegFormer ImageNet MiT weights)

    c.data = ml_collections.ConfigDict(dict(
        name="sddr_synthetic", config="s2048", data_dir="", build_if_missing=True,
        # Training mixture: ((name, config, weight), ...) drawn in proportion to the weights (the paper's
        # eight sets: configs/paper.py); () = train on `name`. The held-out split is always `name`'s.
        mixture=(),
        eval_name="", eval_config="",  # the held-out dataset (its `eval_split`); "" = `name` (and `config`)
        train_split="train", eval_split="test", image_size=2048, batch_size=2,
        num_threads=2, prefetch_buffer_size=8,
        # `simulate_prediction` settings: low/high resolutions (0 = S/4 and S), training resolution (0 = low),
        # texture copied from the RGB into the high map (docs/method.md §7).
        predictor=dict(low_res=0, high_res=0, train_res=0, texture=0.0),
        # Edge-poor training GT (docs/method.md §10): this fraction of the training examples gets its depth
        # area-averaged to 1/factor and upsampled back, like stereo / optical-flow GT; 0 = off. The simulated
        # predictor and the held-out split keep the sharp depth.
        edge_poor_gt=dict(fraction=0.0, factor=4),
        augment=dict(crop_scale=(0.6, 1.0), flip_prob=0.5, brightness=0.2, contrast=0.2, saturation=0.2,
                     gamma=(0.8, 1.25)),
    ))
    # upsample: the decoder's x2 resampling, "align_corners" (the official refiner) or "stride_aligned" (on the
    # strided convolutions' grid, without align_corners' scale error; docs/method.md §3.6).
    c.model = ml_collections.ConfigDict(dict(backbone="b0", cross_iterations=8, dtype="float32",
                                             upsample="align_corners"))
    c.loss = default_loss_config("official")
    c.labels = ml_collections.ConfigDict(dict(
        # The base predictor that the teacher re-runs on every window (training/labels.py): "auto" = the
        # data's simulated predictor; "depth-anything-v2-small" (base, large) with predictor_weights=FILE.
        predictor="auto", predictor_weights="", predictor_output="depth",
        schedule=OFFICIAL_SCHEDULE, size=0,  # window refiner size; 0: the training size S
        # adaptive rule: r = base_resolution (0: the predictor's training resolution), cap (0: 2048)
        blend="official", resolution="adaptive", base_resolution=0, max_resolution=0,
        edge_from="gradients",  # "gradients": G_S (the paper); "depth": G(D_S), the paper's Table 6 ablation
        bilateral=(), edge_quantile=0.85, flat_quantile=0.15, num_regions=4, top_fraction=0.05, region_margin=8,
    ))
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=1e-4, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8,
        schedule="step", decay_steps=100, decay_rate=0.99, warmup_steps=0, end_factor=0.0,
        grad_clip_norm=0.0, skip_nonfinite=True,
        # True: the optimizer runs on one flat vector of all parameters (optax.flatten): the same update to
        # float rounding; the step compiles faster and runs a little slower on CPU (docs/training.md)
        flatten=False,
    ))
    c.train = ml_collections.ConfigDict(dict(
        num_steps=30_000, gt_only_steps=10_000, label_refresh_steps=10_000, parallel="pmap",
        log_every=50, eval_every=2_000, checkpoint_every=1_000, keep_checkpoints=3, async_checkpoints=True,
        best_metric="d3r", best_mode="min", ema_decay=0.0, max_consecutive_nonfinite=100,
        progress_bar=True, tensorboard=True,
        xla_cpu_optimization_level=-1,  # -1: XLA's default; 0-3 on the CPU backend (0-1 compile faster)
        allow_schedule_change=False,  # resume a checkpoint whose gt_only / refresh / lr schedule differs
    ))
    c.eval = ml_collections.ConfigDict(dict(batch_size=2, num_examples=0, edge_metrics=True))
    c.distributed = ml_collections.ConfigDict(dict(
        initialize=False, coordinator_address="", num_processes=1, process_id=0, local_device_ids=None))
    return c
