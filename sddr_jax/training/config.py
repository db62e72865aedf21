"""Training configs: `get_config(arg)` files (configs/), command-line overrides, and the start-up checks.

`default_config()` is `configs/default.py`'s `get_config()`: every default in one place.
"""
from __future__ import annotations

import pathlib
from typing import Any, Sequence

import jax
import ml_collections

from sddr_jax.errors import UserError
from sddr_jax.training.parallel import PARALLEL_MODES
from sddr_jax_configs.default import get_config as _default_get_config


def default_config() -> ml_collections.ConfigDict:
    """Every knob of `train_and_evaluate` with its default (configs/default.py)."""
    return _default_get_config()


def load_config(spec: str, overrides: Sequence[str] = ()) -> "ml_collections.ConfigDict":
    """`path/to/config.py[:arg]` -> its `get_config(arg)`, then `key.sub=value` overrides (values parsed as
    Python literals when they are, else kept as strings), as ml_collections' `--config.x=y` flags do."""
    import ast
    import importlib.util

    path, _, arg = str(spec).partition(":")
    file = pathlib.Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--config {path}: no such file (expected a config .py with get_config(arg))")
    module_spec = importlib.util.spec_from_file_location(f"_sddr_config_{file.stem}", file)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise UserError(f"--config {path}: defines no get_config(arg)")
    config = module.get_config(arg) if arg else module.get_config()
    for item in overrides:
        key, sep, value = item.partition("=")
        key = key.strip().removeprefix("--config.").removeprefix("config.")
        if not sep or not key:
            raise UserError(f"config override {item!r}: expected key.sub=value")
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        try:
            current = config
            for part in key.split(".")[:-1]:
                current = current[part]
            leaf = key.split(".")[-1]
            if leaf not in current:
                raise KeyError(leaf)
            old = current[leaf]
            if isinstance(old, float) and isinstance(parsed, int) and not isinstance(parsed, bool):
                parsed = float(parsed)
            if isinstance(old, tuple) and isinstance(parsed, (list, tuple)):
                parsed = tuple(tuple(x) if isinstance(x, list) else x for x in parsed)
        except (KeyError, AttributeError, TypeError):
            raise UserError(f"config override {item!r}: {key} is not a key of the config") from None
        try:
            current[leaf] = parsed
        except (TypeError, ValueError) as e:
            raise UserError(f"config override {item!r}: {e}") from None
    return config


def check_config(config: Any) -> None:
    """Refuses a training config whose values cannot train (a UserError naming the key)."""
    t = config.train
    for name, v in (("train.num_steps", t.num_steps), ("data.batch_size", config.data.batch_size)):
        if v is None or int(v) < 1:
            raise UserError(f"config.{name} must be a positive integer, got {v!r}")
    if int(t.gt_only_steps) < 0 or int(t.label_refresh_steps) < 1:
        raise UserError("config.train: gt_only_steps must be >= 0 and label_refresh_steps >= 1, got "
                        f"{t.gt_only_steps} and {t.label_refresh_steps}")
    if t.parallel not in PARALLEL_MODES:
        raise UserError(f"config.train.parallel: expected one of {PARALLEL_MODES}, got {t.parallel!r}")
    level = t.get("xla_cpu_optimization_level", -1)
    if not isinstance(level, int) or not -1 <= level <= 3:
        raise UserError(f"config.train.xla_cpu_optimization_level: expected an integer in -1..3 (-1: XLA's "
                        f"default), got {level!r}")
    poor = dict(config.data.get("edge_poor_gt", {}) or {})
    fraction, factor = poor.get("fraction", 0.0), poor.get("factor", 4)
    if not isinstance(fraction, (int, float)) or not 0 <= fraction <= 1 or not isinstance(factor, int) or factor < 1:
        raise UserError("config.data.edge_poor_gt: expected fraction in [0, 1] and an integer factor >= 1, got "
                        f"fraction={fraction!r}, factor={factor!r}")
    s = int(config.data.image_size)
    if s % 128:
        raise UserError(f"config.data.image_size: the refiner needs a multiple of 128, got {s}")
    if int(t.gt_only_steps) < int(t.num_steps):  # a self-distillation phase: its label pass must be able to run
        from sddr_jax.training.labels import check_label_config

        check_label_config(config)
    best = t.get("best_metric")
    if best in ("d3r", "ord_boost") and not config.eval.edge_metrics:
        raise UserError(f"config.train.best_metric {best!r} needs config.eval.edge_metrics=True "
                        "(or choose a depth metric such as 'abs_rel')")
    n = jax.device_count()
    if int(config.data.batch_size) % n:
        raise UserError(f"config.data.batch_size {config.data.batch_size} does not split over {n} devices")
