"""Load a refiner from any checkpoint a user may hold, with the model config it was trained with.

    params, model_config = load_refiner(path)

- an official `.pt` file (converted torch-free; cached under `cache_dir()` by the file's SHA-256, so the next
  call skips the conversion),
- a directory written by `sddr-jax convert` / `convert.save_params` (its `sddr_model.json`),
- a training workdir of `sddr-jax train` (its latest checkpoint, or `best=True`) or its `checkpoints/` /
  `best/` folder: the model config is the run's `model` section, stored with every checkpoint.

Every loader checks the params against the Refiner of the model config (one error naming every key/shape
difference), so a checkpoint of any `model` config refines and evaluates through the CLI and the Python API.
This module reads training checkpoints without importing `sddr_jax.training` (inference and evaluation
never depend on the training code); the layout it reads is written by `training/checkpointing.py`.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import pathlib
from typing import Any, Mapping

import numpy as np

from sddr_jax import convert
from sddr_jax.caches import cache_dir
from sddr_jax.errors import UserError, storage_problem
from sddr_jax.models.refiner import check_params, model_config_dict

# Items of a training checkpoint step (training/checkpointing.py writes them).
STATE, TEACHER, DATA, CONFIG = "state", "teacher", "data", "config"
CHECKPOINTS, BEST = "checkpoints", "best"


def file_digest(path: str | os.PathLike) -> str:
    """The first 24 hex digits of a file's SHA-256."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:24]


def is_training_dir(path: str | os.PathLike) -> bool:
    p = pathlib.Path(path)
    return p.is_dir() and ((p / CHECKPOINTS).is_dir() or (p / BEST).is_dir() or p.name in (CHECKPOINTS, BEST))


@contextlib.contextmanager
def quiet_orbax():
    """Orbax's read-only managers log warnings a user cannot act on ("read_only=True, setting create=False",
    items it was not asked to restore); they are silenced while we read."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_training_checkpoint(path: str | os.PathLike, *, best: bool = False,
                             step: int | None = None) -> tuple[dict[str, Any], dict[str, Any], int]:
    """(params, run config dict, step) of a training checkpoint: `path` is a workdir or its
    `checkpoints`/`best` folder; numpy arrays, restored without the run's optimizer state."""
    import orbax.checkpoint as ocp

    path = pathlib.Path(path).absolute()
    if (path / (BEST if best else CHECKPOINTS)).is_dir():
        path = path / (BEST if best else CHECKPOINTS)
    if not path.is_dir():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist")
    handlers = {STATE: ocp.PyTreeCheckpointHandler(), CONFIG: ocp.JsonCheckpointHandler()}
    with quiet_orbax(), ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(read_only=True),
                               item_handlers=handlers) as manager:
        if step is None:
            step = manager.latest_step()
            if step is None:
                raise FileNotFoundError(f"no checkpoint in {path}")
        elif step not in manager.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {step} in {path} (have {list(manager.all_steps())})")
        try:
            meta = manager.item_metadata(step)[STATE]
            tree = getattr(meta, "tree", meta)
            target = zeros_like_metadata(tree["params"])
            restored = manager.restore(step, args=ocp.args.Composite(**{
                STATE: ocp.args.PyTreeRestore(
                    item={"params": target},
                    restore_args={"params": ocp.checkpoint_utils.construct_restore_args(target)},
                    partial_restore=True),
                CONFIG: ocp.args.JsonRestore()}))
        except (KeyError, ValueError, OSError) as e:
            raise UserError(f"{path / str(step)}: not a readable training checkpoint ({storage_problem(e)})") from None
    params = restored[STATE]["params"]
    config = dict(restored[CONFIG] or {})
    return params, config, int(step)


def zeros_like_metadata(tree: Any) -> Any:
    """A numpy tree of zeros with the shapes/dtypes of an Orbax metadata tree (a restore target)."""
    import jax

    return jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), tree,
                        is_leaf=lambda x: hasattr(x, "shape") and hasattr(x, "dtype"))


def load_refiner(path: str | os.PathLike, *, cache: bool = True, best: bool = False) -> tuple[Mapping[str, Any],
                                                                                           dict[str, Any]]:
    """(params, model config) from any refiner checkpoint (see the module docstring); params checked."""
    p = pathlib.Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {p}: no such file or directory")
    if is_training_dir(p):
        params, config, step = load_training_checkpoint(p, best=best)
        model_config = model_config_dict(config.get("model"))
        check_params(params, model_config, where=f"{p} (step {step})")
        return params, model_config
    if p.is_file() and cache:
        target = cache_dir() / "converted" / file_digest(p)
        if target.exists():
            try:
                return convert.load_refiner(target)
            except (UserError, ValueError, OSError):
                pass  # a cache entry from another version; convert again below
        params, model_config = convert.load_refiner(p)
        try:
            convert.save_params(params, target, overwrite=True, model_config=model_config)
        except OSError:
            pass  # caching is an optimisation only
        return params, model_config
    return convert.load_refiner(p)
