"""Training checkpoints: a thin wrapper around Orbax's `CheckpointManager`.

One checkpoint (one step) holds, each as an Orbax item of a `Composite`:

    <workdir>/checkpoints/<step>/state/     params, opt_state, step, rng (and ema_params when used): numpy pytree
                                teacher/   the frozen teacher params of the current pseudo-label round (sec. 10),
                                           only in self-distillation phases
                                data/      the data iterator's state (grain: one JSON file per process)
                                config/    the run's config as JSON
    <workdir>/best/<step>/...              the same items, the single best checkpoint by an evaluation metric

Orbax writes every step into a temporary directory and renames it only when all items (of all processes) are
written, so a run killed at any moment leaves either a complete checkpoint or a temporary directory, which
the next run deletes (`cleanup_tmp_directories`). Saves are asynchronous: `save` copies the host arrays and
returns while a background thread writes them.

Resuming refuses a checkpoint whose config differs in a key that fixes the state's structure (`COMPAT_KEYS`)
or whose array tree does not match the new state: the message names each differing key or array path.
"""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import shutil
from typing import Any, Iterable, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

from sddr_jax.errors import UserError, storage_problem
from sddr_jax.models import DEFAULT_MODEL_CONFIG

# Config keys (dotted prefixes) that decide the shapes and structure of the saved state. A run resumed with a
# different value would restore arrays that do not fit, or silently train another model.
COMPAT_KEYS: tuple[str, ...] = (
    "model",
    "optimizer.name",
    "optimizer.grad_clip_norm",
    "optimizer.skip_nonfinite",
    "optimizer.flatten",
    "train.ema_decay",
)
# Values of COMPAT_KEYS that a checkpoint written before the key existed was trained with.
LEGACY_VALUES: dict[str, Any] = {"optimizer.flatten": False}
# Keys whose change on resume would relabel what the run's steps mean (the phase boundary, the label rounds,
# the learning-rate schedule): refused unless `train.allow_schedule_change` is set.
SCHEDULE_KEYS: tuple[str, ...] = (
    "train.gt_only_steps",
    "train.label_refresh_steps",
    "optimizer.learning_rate",
    "optimizer.schedule",
    "optimizer.decay_steps",
    "optimizer.decay_rate",
    "optimizer.warmup_steps",
)

from sddr_jax.checkpoints import CONFIG, DATA, STATE, TEACHER  # the layout that inference reads


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-safe plain dict of an ml_collections ConfigDict (or a mapping)."""
    if hasattr(config, "to_json_best_effort"):
        return json.loads(config.to_json_best_effort())
    return json.loads(json.dumps(dict(config), default=str))


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any],
                       keys: Iterable[str] = COMPAT_KEYS) -> list[str]:
    """Lines `key: checkpoint X, config Y` for every leaf under `keys` that differs. A model key the checkpoint
    lacks counts as its default (`models.DEFAULT_MODEL_CONFIG`), as `models.model_config_dict` reads it when
    the checkpoint is loaded: a checkpoint saved before `model.upsample` existed is an align_corners refiner.
    Other keys the checkpoint lacks count as `LEGACY_VALUES` (what it was written with before the key existed)."""
    a, b = _flatten(saved), _flatten(current)
    defaults = {f"model.{k}": v for k, v in DEFAULT_MODEL_CONFIG.items()} | LEGACY_VALUES
    a.update({k: v for k, v in defaults.items() if k in b and k not in a})
    diffs = []
    for key in sorted(set(a) | set(b)):
        if not any(key == p or key.startswith(p + ".") for p in keys):
            continue
        va, vb = a.get(key, "<absent>"), b.get(key, "<absent>")
        if va != vb:
            diffs.append(f"{key}: checkpoint {va!r}, config {vb!r}")
    return diffs


def _structure_differences(metadata_tree: Any, target: Any) -> list[str]:
    """Paths whose presence or shape differ between a saved state's metadata and the target state."""
    def shapes(tree):
        flat = jax.tree_util.tree_flatten_with_path(tree)[0]
        return {jax.tree_util.keystr(p, simple=True, separator="/"): tuple(getattr(v, "shape", ()) or ())
                for p, v in flat}

    saved, want = shapes(metadata_tree), shapes(jax.tree.map(np.asarray, target))
    diffs = []
    for k in sorted(set(saved) | set(want)):
        if k not in saved:
            diffs.append(f"{k}: missing in the checkpoint")
        elif k not in want:
            diffs.append(f"{k}: in the checkpoint but not in the new state")
        elif saved[k] != want[k]:
            diffs.append(f"{k}: checkpoint shape {saved[k]}, new shape {want[k]}")
    return diffs


def _restore_args(target: Any) -> ocp.args.PyTreeRestore:
    target = jax.tree.map(np.asarray, target)
    return ocp.args.PyTreeRestore(item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target))


class IteratorHandler(ocp.CheckpointHandler):
    """Saves a data iterator's state: one JSON file per process (`process_<i>-of-<n>.json`).

    Works for any iterator with `get_state() -> dict | bytes` and `set_state(state)`: grain's
    `DatasetIterator` (a dict) and `DataLoaderIterator` (JSON bytes) included. Each process writes its own
    file, since each reads its own shard of the data.
    """

    def _file(self, directory):
        return pathlib.Path(directory) / f"process_{jax.process_index()}-of-{jax.process_count()}.json"

    def save(self, directory, args: "IteratorSave"):
        state = args.item.get_state()
        text = state.decode() if isinstance(state, bytes) else json.dumps({"__dict__": state}, indent=1)
        self._file(directory).write_text(text)

    def restore(self, directory, args: "IteratorRestore"):
        path = self._file(directory)
        if not path.exists():
            raise UserError(f"data-iterator state {path} is missing: the checkpoint was written by a run with "
                            "another number of processes")
        text = path.read_text()
        loaded = json.loads(text)
        state = loaded["__dict__"] if isinstance(loaded, dict) and "__dict__" in loaded else text.encode()
        args.item.set_state(state)
        return args.item

    def metadata(self, directory):
        return None

    def finalize(self, directory):
        pass

    def close(self):
        pass


@ocp.args.register_with_handler(IteratorHandler, for_save=True)
@dataclasses.dataclass
class IteratorSave(ocp.args.CheckpointArgs):
    item: Any


@ocp.args.register_with_handler(IteratorHandler, for_restore=True)
@dataclasses.dataclass
class IteratorRestore(ocp.args.CheckpointArgs):
    item: Any


def _iterator_args(iterator: Any, restore: bool):
    return IteratorRestore(iterator) if restore else IteratorSave(iterator)


def _handlers() -> dict[str, Any]:
    # Declared up front so that a fresh manager can read an item's metadata before anything is restored.
    return {STATE: ocp.PyTreeCheckpointHandler(), TEACHER: ocp.PyTreeCheckpointHandler(),
            CONFIG: ocp.JsonCheckpointHandler(), DATA: IteratorHandler()}


class Checkpointer:
    """Saves and restores training checkpoints under `workdir` (layout in the module docstring).

    Args:
      workdir: the run's directory; checkpoints go to `workdir/checkpoints` and `workdir/best`.
      config: the run's config (ConfigDict or mapping); stored with every checkpoint and compared on restore.
      save_every: save every this many steps (`maybe_save`); `save(force=True)` saves any step.
      keep: number of latest checkpoints kept.
      best_metric: name of an evaluation metric; `save_best` keeps the single best checkpoint by it.
      best_mode: 'min' or 'max' for `best_metric`.
      async_save: write in a background thread (Orbax async checkpointing).
    """

    def __init__(self, workdir: str | os.PathLike, config: Any, *, save_every: int = 1000, keep: int = 3,
                 best_metric: str | None = None, best_mode: str = "min", async_save: bool = True):
        if save_every < 1:
            raise UserError(f"checkpoint save_every: expected a positive number of steps, got {save_every}")
        if keep < 1:
            raise UserError(f"checkpoint keep: expected at least 1, got {keep}")
        if best_mode not in ("min", "max"):
            raise UserError(f"checkpoint best_mode: expected 'min' or 'max', got {best_mode!r}")
        self.workdir = pathlib.Path(workdir).absolute()
        self.config = config_to_dict(config)
        self.save_every = int(save_every)
        self.best_metric = best_metric
        self._saved: set[int] = set()  # steps saved by this process (an async save may not be listed yet)
        # A kill during a save leaves `<step>.orbax-checkpoint-tmp-*` folders. Orbax removes them in a background
        # future, so a resumed run could still see them; process 0 removes them here, before anything reads.
        if jax.process_index() == 0:
            for sub in ("checkpoints", "best"):
                for stale in (self.workdir / sub).glob("*.orbax-checkpoint-tmp*"):
                    shutil.rmtree(stale, ignore_errors=True)
        common = dict(enable_async_checkpointing=async_save, cleanup_tmp_directories=True, create=True)
        self._manager = ocp.CheckpointManager(
            self.workdir / "checkpoints",
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, **common), item_handlers=_handlers())
        self._best = None
        if best_metric:
            self._best = ocp.CheckpointManager(
                self.workdir / "best",
                options=ocp.CheckpointManagerOptions(
                    max_to_keep=1, best_fn=lambda m: float(m[best_metric]), best_mode=best_mode,
                    keep_checkpoints_without_metrics=False, **common), item_handlers=_handlers())

    # ----------------------------------------------------------------------------------------------- saving
    def _args(self, state, teacher, data_iterator):
        items = {STATE: ocp.args.PyTreeSave(state), CONFIG: ocp.args.JsonSave(self.config)}
        if teacher is not None:
            items[TEACHER] = ocp.args.PyTreeSave(teacher)
        if data_iterator is not None:
            items[DATA] = _iterator_args(data_iterator, restore=False)
        return ocp.args.Composite(**items)

    def save(self, step: int, state: Mapping[str, Any], *, teacher: Any = None, data_iterator: Any = None,
             force: bool = True) -> bool:
        """Saves host `state` (a dict of numpy pytrees) at `step`; returns whether a save started."""
        if not force and step % self.save_every:
            return False
        if step in self._saved or step in self._manager.all_steps():
            return False
        self._saved.add(step)
        return self._manager.save(step, args=self._args(state, teacher, data_iterator), force=True)

    def maybe_save(self, step: int, state_fn, *, teacher: Any = None, data_iterator: Any = None) -> bool:
        """Saves `state_fn()` if `step` is a multiple of `save_every` (the state is built only then)."""
        if step % self.save_every:
            return False
        return self.save(step, state_fn(), teacher=teacher, data_iterator=data_iterator, force=True)

    def save_best(self, step: int, state: Mapping[str, Any], metrics: Mapping[str, float], *,
                  teacher: Any = None, data_iterator: Any = None) -> bool:
        """Offers a checkpoint to the best-by-metric slot; Orbax keeps it only if its metric is the best."""
        if self._best is None:
            return False
        if self.best_metric not in metrics:
            raise UserError(f"best_metric {self.best_metric!r} is not among the evaluation metrics "
                            f"{sorted(metrics)}")
        if step in self._best.all_steps():
            return False
        metrics = {k: float(v) for k, v in metrics.items()}
        return self._best.save(step, args=self._args(state, teacher, data_iterator), metrics=metrics,
                               force=True)

    def wait(self) -> None:
        """Blocks until every asynchronous save is written and renamed into place."""
        self._manager.wait_until_finished()
        if self._best is not None:
            self._best.wait_until_finished()

    def close(self) -> None:
        self.wait()
        self._manager.close()
        if self._best is not None:
            self._best.close()

    # ---------------------------------------------------------------------------------------------- restoring
    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None."""
        self._manager.reload()
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        self._manager.reload()
        return list(self._manager.all_steps())

    def best_step(self) -> int | None:
        if self._best is None:
            return None
        self._best.reload()
        return self._best.best_step()

    def check_config(self, step: int) -> None:
        """Refuses (UserError) a config that differs from the one checkpoint `step` was written with: an
        incompatible one, or another schedule unless `train.allow_schedule_change`."""
        self._check_config(self._manager, step)

    def _check_config(self, manager, step: int) -> set[str]:
        directory = manager.directory / str(step)
        present = {p.name for p in directory.iterdir()} if directory.is_dir() else set()
        if CONFIG in present:
            saved_config = manager.restore(step, args=ocp.args.Composite(**{CONFIG: ocp.args.JsonRestore()}))[CONFIG]
            diffs = config_differences(saved_config, self.config)
            if diffs:
                raise UserError(
                    f"checkpoint {directory} was written with an incompatible config ("
                    + "; ".join(diffs) + "). Use a new --workdir, or set these values back.")
            diffs = config_differences(saved_config, self.config, SCHEDULE_KEYS)
            allow = bool(dict(dict(self.config).get("train", {})).get("allow_schedule_change", False))
            if diffs and not allow:
                raise UserError(
                    f"checkpoint {directory} was trained with another schedule (" + "; ".join(diffs)
                    + "): resuming would relabel its steps. Use a new --workdir, set these values back, or pass "
                    "--config.train.allow_schedule_change=True to continue it on purpose.")
        return present

    def _check(self, manager, step: int, target_state: Any) -> set[str]:
        present = self._check_config(manager, step)
        directory = manager.directory / str(step)
        meta = manager.item_metadata(step)[STATE]
        tree = getattr(meta, "tree", meta)
        diffs = _structure_differences(tree, target_state)
        if diffs:
            shown = "; ".join(diffs[:6]) + (f"; ... {len(diffs) - 6} more" if len(diffs) > 6 else "")
            raise UserError(f"checkpoint {directory}: its state does not fit the model of this config ({shown}). "
                            "Use a new --workdir or the config the checkpoint was trained with.")
        return present

    def restore(self, target_state: Mapping[str, Any], *, step: int | None = None, teacher_target: Any = None,
                data_iterator: Any = None, best: bool = False) -> dict[str, Any]:
        """Restores the checkpoint at `step` (default: the latest; `best=True`: the best one).

        `target_state` is a host pytree with the new run's structure (its values are not used);
        `teacher_target` the params structure for the teacher item; `data_iterator` gets its state set in
        place. Returns {'step', 'state', 'teacher' (None if not saved), 'config'}.
        """
        manager = self._best if best else self._manager
        if manager is None:
            raise UserError("restore(best=True): this Checkpointer has no best_metric")
        manager.reload()
        if step is None:
            step = manager.best_step() if best else manager.latest_step()
            if step is None:
                raise FileNotFoundError(f"no checkpoint in {manager.directory}")
        elif step not in manager.all_steps():
            raise FileNotFoundError(f"no checkpoint for step {step} in {manager.directory} "
                                    f"(have {list(manager.all_steps())})")
        present = self._check(manager, step, target_state)
        items = {STATE: _restore_args(target_state), CONFIG: ocp.args.JsonRestore()}
        if TEACHER in present and teacher_target is not None:
            items[TEACHER] = _restore_args(teacher_target)
        if data_iterator is not None:
            if DATA not in present:
                raise UserError(f"checkpoint {manager.directory / str(step)} has no data-iterator state")
            items[DATA] = _iterator_args(data_iterator, restore=True)
        try:
            restored = manager.restore(step, args=ocp.args.Composite(**items))
        except UserError:
            raise
        except (KeyError, ValueError, OSError) as e:
            raise UserError(f"checkpoint {manager.directory / str(step)}: cannot be read ({storage_problem(e)}); "
                            "delete that step's folder to resume from the one before, or use a new --workdir"
                            ) from None
        return {"step": int(step), "state": restored[STATE], "config": restored[CONFIG],
                "teacher": restored[TEACHER] if TEACHER in items else None}
