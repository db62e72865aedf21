"""Training: the refiner trained with self-distillation (docs/method.md §10).

    from sddr_jax import training
    config = training.load_config("configs/synthetic.py:tiny")
    result = training.train_and_evaluate(config, "runs/tiny")

Modules: `train` (state, optimizer, step, loop), `parallel` (pmap / shard_map placement), `labels` (the edge
pseudo-labels G_S), `checkpointing` (Orbax), `config` (config files and checks), `log` (JSONL, TensorBoard).
"""
from sddr_jax.training.config import check_config, default_config, load_config
from sddr_jax.training.labels import edge_labels, label_body, label_options
from sddr_jax.training.log import MetricLog
from sddr_jax.training.parallel import AXIS, PARALLEL_MODES, Placement, allgather_json, make_mesh, parallelize
from sddr_jax.training.train import (
    TrainState,
    create_train_state,
    eval_body,
    finished_run,
    initial_params,
    make_optimizer,
    make_schedule,
    make_train_step,
    maybe_initialize_distributed,
    nonfinite_counts,
    train_and_evaluate,
    train_step,
)

__all__ = [
    "AXIS", "PARALLEL_MODES", "MetricLog", "Placement", "TrainState", "allgather_json", "check_config",
    "create_train_state", "default_config", "edge_labels", "eval_body", "finished_run", "initial_params", "label_body",
    "label_options", "load_config", "make_mesh", "make_optimizer", "make_schedule", "make_train_step",
    "maybe_initialize_distributed", "nonfinite_counts", "parallelize", "train_and_evaluate", "train_step",
]
