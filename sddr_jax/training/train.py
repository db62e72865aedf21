"""Self-distillation training of the refiner (docs/method.md §8, §10).

The centre is one pure per-device step body, `train_step`, that averages gradients with
`lax.pmean(..., 'data')`. `training.parallel.parallelize` wraps it either with `jax.pmap` (the default) or with
`jax.jit(jax.shard_map(...))` over a one-axis mesh; both give the same parameters. The state's buffers are
donated. `train_and_evaluate(config, workdir)` is the whole program: data, model, optimizer, the
self-distillation rounds, evaluation, logs and checkpoints (resumed automatically).
"""
from __future__ import annotations

import functools
import json
import math
import os
import pathlib
import threading
import time
import traceback
from typing import Any, Callable, Mapping

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh

from sddr_jax import convert, losses
from sddr_jax.checkpoints import load_refiner
from sddr_jax.data.pipeline import TrainData, batch_spec
from sddr_jax.errors import UserError
from sddr_jax.eval.evaluate import evaluate_maps, summarize
from sddr_jax.io import write_json_atomic
from sddr_jax.models.refiner import build_refiner, check_params
from sddr_jax.training import checkpointing
from sddr_jax.training.config import check_config
from sddr_jax.training.labels import check_label_source, label_body, label_options, label_predictor, label_shapes
from sddr_jax.training.log import MetricLog
from sddr_jax.training.parallel import AXIS, Placement, allgather_json, parallelize


# ------------------------------------------------------------------------------------------------ state
class TrainState(flax.struct.PyTreeNode):
    """Everything that changes during training (and is checkpointed).

    step: int32 scalar, the number of optimizer steps taken (skipped non-finite updates included).
    params: the model parameters. opt_state: the optax state. rng: a raw uint32[2] PRNG key, folded with
    the step and the device index for the dropout key of each step. ema_params: an exponential moving
    average of params, or None when `ema_decay` is 0.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array
    ema_params: Any = None

    def to_host(self) -> dict[str, Any]:
        """A dict of numpy arrays (the checkpoint's `state` item)."""
        out = {"step": self.step, "params": self.params, "opt_state": self.opt_state, "rng": self.rng}
        if self.ema_params is not None:
            out["ema_params"] = self.ema_params
        return jax.tree.map(lambda x: np.array(x), jax.device_get(out))

    @classmethod
    def from_host(cls, d: Mapping[str, Any], like: "TrainState") -> "TrainState":
        """Rebuilds a state from `to_host`'s dict, with the pytree structure of `like`."""
        return like.replace(
            step=jnp.asarray(d["step"], jnp.int32),
            params=jax.tree.map(jnp.asarray, d["params"]),
            opt_state=jax.tree.unflatten(jax.tree.structure(like.opt_state),
                                         [jnp.asarray(x) for x in jax.tree.leaves(d["opt_state"])]),
            rng=jnp.asarray(d["rng"], jnp.uint32),
            ema_params=jax.tree.map(jnp.asarray, d["ema_params"]) if like.ema_params is not None else None)


def create_train_state(params: Any, tx: optax.GradientTransformation, rng: jax.Array | int,
                       ema: bool = False) -> TrainState:
    """The initial state: step 0, `tx.init(params)`, a raw PRNG key (from an int seed or a key)."""
    if isinstance(rng, int):
        rng = jax.random.PRNGKey(rng)
    params = jax.tree.map(jnp.asarray, params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=jax.jit(tx.init)(params),
                      rng=jnp.asarray(rng, jnp.uint32),
                      ema_params=jax.tree.map(jnp.copy, params) if ema else None)


# -------------------------------------------------------------------------------------------- optimizer
def make_schedule(config: Any, num_steps: int) -> optax.Schedule:
    """Learning-rate schedule from `config` (the `optimizer` section).

    'step' (default, GBDF's): lr * decay_rate ** floor(count / decay_steps) (x0.99 every 100 steps);
    'cosine': linear warm-up for warmup_steps, then cosine decay to lr * end_factor at num_steps;
    'constant'. `count` is the optimizer's own step count, which skipped non-finite updates do not advance.
    """
    lr = float(config.learning_rate)
    name = config.schedule
    warmup = int(config.get("warmup_steps", 0))
    if name == "constant":
        sched = optax.constant_schedule(lr)
    elif name == "step":
        sched = optax.exponential_decay(lr, transition_steps=int(config.decay_steps),
                                        decay_rate=float(config.decay_rate), staircase=True)
    elif name == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0 if warmup else lr, peak_value=lr, warmup_steps=warmup,
            decay_steps=max(int(num_steps), warmup + 1), end_value=lr * float(config.get("end_factor", 0.0)))
    else:
        raise UserError(f"optimizer.schedule: expected 'step', 'cosine' or 'constant', got {name!r}")
    if warmup:
        sched = optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), sched], [warmup])
    return sched


def make_optimizer(config: Any, num_steps: int) -> optax.GradientTransformation:
    """optax AdamW (docs/method.md §10 defaults: weight decay 0.01, b1 0.9, b2 0.999, eps 1e-8; weight decay is set
    explicitly because optax's default, 1e-4, differs from PyTorch's), an optional global-norm clip before
    it, and `optax.apply_if_finite`, which skips (and counts) any update with a non-finite gradient; with
    `flatten` (off by default) all of it runs on the parameters concatenated into one vector (`optax.flatten`)."""
    if config.name != "adamw":
        raise UserError(f"optimizer.name: only 'adamw' is implemented, got {config.name!r}")
    tx = optax.adamw(make_schedule(config, num_steps), b1=float(config.b1), b2=float(config.b2),
                     eps=float(config.eps), weight_decay=float(config.weight_decay))
    if float(config.grad_clip_norm) > 0:
        tx = optax.chain(optax.clip_by_global_norm(float(config.grad_clip_norm)), tx)
    if config.skip_nonfinite:
        # The loop itself stops the run after `max_consecutive_nonfinite` skips in a row; optax's own limit
        # (after which it would apply the non-finite update) is set beyond reach.
        tx = optax.apply_if_finite(tx, max_consecutive_errors=2**30)
    if config.get("flatten", False):
        # One vector instead of one set of ops per parameter array (305 in the refiner): the step program
        # compiles faster; each step copies into and out of the vector (5-10 % slower on CPU, docs/training.md).
        # The optimizer state keeps its type (optax.flatten adds no wrapper), so `nonfinite_counts` reads it
        # as before; its arrays are flat vectors.
        tx = optax.flatten(tx)
    return tx


def nonfinite_counts(opt_state: Any) -> tuple[int, int]:
    """(consecutive, total) skipped non-finite updates recorded by `apply_if_finite` (0, 0 without it)."""
    if isinstance(opt_state, optax.ApplyIfFiniteState):
        return int(np.asarray(opt_state.notfinite_count).reshape(-1)[0]), int(
            np.asarray(opt_state.total_notfinite).reshape(-1)[0])
    return 0, 0


# ------------------------------------------------------------------------------------ the step body
def train_step(state: TrainState, batch: Mapping[str, jax.Array], labels: Mapping[str, jax.Array] | None, *,
               apply_fn: Callable, loss_fn: Callable, loss_config: Any, tx: optax.GradientTransformation,
               ema_decay: float = 0.0, axis_name: str = AXIS,
               use_labels: jax.Array | None = None) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on this device's share of the batch; gradients averaged over `axis_name`.

    `apply_fn(variables, low, high, train=True, rngs={'dropout': key}) -> RefinerOutput`;
    `loss_fn(outputs, batch, labels, loss_config) -> (scalar, aux)` (labels None: L_gt only).
    `use_labels` (a traced bool scalar, with `labels` given): the loss with the labels when true, L_gt only
    (`loss_fn(..., None, ...)`, the labels unused) when false, in one program (see `switched_loss`).
    Returns the new state and device-averaged metrics (loss, aux terms, grad_norm, skipped).
    """
    dropout_key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), lax.axis_index(axis_name))
    if "rng" not in batch:  # the ranking loss draws fresh point pairs per step and device
        batch = {**batch, "rng": jax.random.fold_in(dropout_key, 0x52414E4B)}

    def objective(params):
        outputs = apply_fn({"params": params}, batch["low"], batch["high"], train=True,
                           rngs={"dropout": dropout_key})
        if use_labels is not None and labels is not None:
            return switched_loss(use_labels, loss_fn, outputs, batch, labels, loss_config)
        return loss_fn(outputs, batch, labels, loss_config)

    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    # Each device's loss is normalised over its own share of the batch; with equal shares the mean of the
    # per-device gradients is the gradient of the mean per-device loss.
    grads = lax.pmean(grads, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema_params
    if ema is not None:
        ema = jax.tree.map(lambda e, p: ema_decay * e + (1.0 - ema_decay) * p, ema, params)
    metrics = {"loss": loss, **{k: v for k, v in dict(aux).items() if jnp.ndim(v) == 0},
               "grad_norm": optax.tree.norm(grads)}
    if isinstance(opt_state, optax.ApplyIfFiniteState):
        metrics["skipped"] = 1.0 - opt_state.last_finite.astype(jnp.float32)
    metrics = lax.pmean(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), metrics), axis_name)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
    return new_state, metrics


def switched_loss(use_labels: jax.Array, loss_fn: Callable, outputs: Any, batch: Mapping[str, jax.Array],
                  labels: Mapping[str, jax.Array], loss_config: Any) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`loss_fn(outputs, batch, labels)` when `use_labels`, else `loss_fn(outputs, batch, None)`, as one
    `lax.cond` on the outputs: the refiner's forward and backward are traced and compiled once for both
    training phases (only the loss terms are in the branches, and only the taken one runs). Aux entries one
    branch lacks are zeros in it."""
    def gt(o):
        return loss_fn(o, batch, None, loss_config)

    def sd(o):
        return loss_fn(o, batch, labels, loss_config)

    shapes: dict[str, jax.ShapeDtypeStruct] = {}
    for fn in (sd, gt):
        for k, v in dict(jax.eval_shape(fn, outputs)[1]).items():
            shapes.setdefault(k, v)

    def padded(fn):
        def run(o):
            loss, aux = fn(o)
            aux = dict(aux)
            return loss, {k: aux[k] if k in aux else jnp.zeros(v.shape, v.dtype) for k, v in shapes.items()}
        return run

    return lax.cond(use_labels, padded(sd), padded(gt), outputs)


def make_train_step(apply_fn: Callable, loss_fn: Callable, loss_config: Any, tx: optax.GradientTransformation, *,
                    parallel: str = "pmap", mesh: Mesh | None = None, ema_decay: float = 0.0,
                    with_labels: bool | str = False) -> Callable:
    """`step(state, batch[, labels]) -> (state, metrics)`, `train_step` wrapped by `parallelize`,
    with the state donated. Metrics come back replicated (pmap: with a device axis).

    `with_labels="switch"`: `step(state, batch, labels, use_labels)`, one program for both phases
    (`use_labels` replicated, a bool scalar; phase 1 passes placeholder labels of the right shapes)."""
    body = functools.partial(train_step, apply_fn=apply_fn, loss_fn=loss_fn, loss_config=loss_config, tx=tx,
                             ema_decay=ema_decay)
    if with_labels == "switch":
        def fn(state, batch, labels, use_labels):
            return body(state, batch, labels, use_labels=use_labels)
        kinds = ("replicated", "sharded", "sharded", "replicated")
    elif with_labels:
        fn, kinds = body, ("replicated", "sharded", "sharded")
    else:
        def fn(state, batch):
            return body(state, batch, None)
        kinds = ("replicated", "sharded")
    return parallelize(fn, kinds, ("replicated", "replicated"), parallel=parallel, mesh=mesh, donate_argnums=(0,))


STEP_KEYS = ("rgb", "low", "high", "depth", "valid")


def label_extras(batch: Mapping[str, Any], *, simulated: bool = True) -> dict[str, Any]:
    """What the label pass reads beyond the step's inputs (`STEP_KEYS`): with the simulated predictor
    (`simulated`) the examples' simulation keys, and as `depth` the scene's sharp depth when the ground truth is
    an edge-poor measurement of it (`data.edge_poor_gt`): the predictor looks at the scene, as in the data
    pipeline."""
    extra = {"key": batch["key"]} if simulated and "key" in batch else {}
    if "scene_depth" in batch:
        extra["depth"] = batch["scene_depth"]
    return extra


def label_input_keys(simulated: bool) -> tuple[str, ...]:
    """The keys of the label pass's batch: the step's, and the simulation keys with the simulated predictor."""
    return STEP_KEYS + (("key",) if simulated else ())


def _signature(args: Any) -> tuple:
    """What a compiled program is specialised to: the tree of the arguments and each leaf's shape, dtype and
    sharding (None where it has none)."""
    leaves, tree = jax.tree.flatten(args)
    return tree, tuple((tuple(a.shape), np.dtype(a.dtype), getattr(a, "sharding", None)) for a in leaves)


class BackgroundCompile:
    """`fn` compiled for `args` (shapes, dtypes and shardings only; arrays or `jax.ShapeDtypeStruct`s) in a
    thread, so that XLA builds it on a second core while the main thread compiles and runs other programs.

    Calling the object waits for the thread, then runs that executable for arguments of the same signature
    and `fn` itself for any other (which compiles it the usual way). `compiler_options` are XLA options of
    this build (`train.xla_cpu_optimization_level`, see `compiler_options`); without them the executable is
    also the one a plain call of `fn` finds in JAX's cache.

    A build that failed in its thread is built once more by the first call of its signature, in the calling
    thread, before anything falls back: tracing in a thread is not safe while another thread imports a module
    that patches `builtins.__import__` for the length of its import (etils' `epy.lazy_imports`, used by
    tensorflow_datasets), because the trace's own function-level imports then get lazy stubs (seen as
    `ModuleNotFoundError: No module named 'jax._src.state.types.TransformedRef'` in a resumed run, and
    reproduced in tests/test_train.py). `thread_error` keeps that first failure (with its traceback) and
    `error` the failure of the build in use (None once a rebuild succeeded); a failure is not raised here:
    `fn`'s call raises it."""

    def __init__(self, fn: Callable, *args: Any, compiler_options: Mapping[str, Any] | None = None):
        self.fn = fn
        self._specs = jax.tree.map(
            lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=getattr(a, "sharding", None)), args)
        self._signature = _signature(self._specs)
        self._options = dict(compiler_options) if compiler_options else None
        self.compiled = None
        self.fallback_calls = 0  # calls whose signature differed (or whose build failed twice): `fn` ran instead
        self.seconds = 0.0  # seconds spent building (the thread's build, plus a rebuild if there was one)
        self.error: BaseException | None = None
        self.thread_error: str | None = None  # set when the call rebuilds: at most one rebuild
        self._thread = threading.Thread(target=self._build, name="sddr-jax-compile", daemon=True)
        self._thread.start()

    def _build(self) -> None:
        t0 = time.perf_counter()
        try:
            self.compiled = self.fn.lower(*self._specs).compile(self._options)
            self.error = None
        except Exception as e:  # noqa: BLE001 -- reported by the real call
            self.error = e
        self.seconds += time.perf_counter() - t0

    def wait(self) -> None:
        self._thread.join()

    def __call__(self, *args: Any) -> Any:
        self.wait()
        same = _signature(args) == self._signature
        if same and self.compiled is None and self.thread_error is None:
            e = self.error
            self.thread_error = "".join(traceback.format_exception(type(e), e, e.__traceback__))[-4000:]
            self._build()
        if same and self.compiled is not None:
            return self.compiled(*args)
        self.fallback_calls += 1
        return self.fn(*args)


def compiler_options(config: Any) -> dict[str, Any]:
    """XLA options of the training programs: `train.xla_cpu_optimization_level` (-1: XLA's default) on the CPU
    backend. Level 0-1 compiles the tiny run's step in 16-21 s instead of 25 s on 2 cores and costs up to 2.6x
    its run time (docs/training.md); other backends ignore it."""
    level = int(config.train.get("xla_cpu_optimization_level", -1))
    if level < 0 or jax.default_backend() != "cpu":
        return {}
    return {"xla_backend_optimization_level": level}


EVAL_KEYS = ("low", "high")


def early_compile_specs(config: Any, model, tx: optax.GradientTransformation, placement: Placement, *,
                        ema: bool, label_kwargs: Mapping[str, Any] | None = None,
                        label_predictor: tuple[str, Any] | None = None) -> dict[str, tuple]:
    """The arguments of the training loop's programs as `jax.ShapeDtypeStruct`s with their shardings, from the
    config alone (no parameters drawn, no data read), so that they can be compiled ahead of their calls:

    "step": `(state, batch[, placeholder labels, use_labels])` for `make_train_step` (with
    `with_labels="switch"` when `label_kwargs` is given); "eval": `(params, {low, high})` for `eval_body`;
    "labels" (with `label_kwargs` and `label_predictor` = `labels.label_predictor(config)`):
    `(params, label batch, predictor)` for `label_body`. `tests/test_train.py` checks them against the real
    arguments, whose programs must be the ones compiled from these."""
    x = jax.ShapeDtypeStruct((1, 128, 128, 1), jnp.float32)
    params = jax.eval_shape(lambda k, lo, hi: model.init(k, lo, hi, train=False)["params"],
                            jax.ShapeDtypeStruct((2,), jnp.uint32), x, x)
    state = jax.eval_shape(lambda p: create_train_state(p, tx, 0, ema=ema), params)
    rows = int(config.data.batch_size) // jax.process_count()
    size = int(config.data.image_size)
    batch = batch_spec(size, rows, STEP_KEYS)
    step = (placement.replicated_spec(state), placement.sharded_spec(batch))
    if label_kwargs is not None:
        step += (placement.sharded_spec(label_shapes(batch, **label_kwargs)),
                 placement.replicated_spec(jax.ShapeDtypeStruct((), jnp.bool_)))
    out = {"step": step, "eval": (placement.replicated_spec(params), placement.sharded_spec(
        batch_spec(size, int(config.eval.batch_size), EVAL_KEYS)))}
    if label_kwargs is not None and label_predictor is not None:
        kind, predictor = label_predictor
        out["labels"] = (placement.replicated_spec(params),
                         placement.sharded_spec(batch_spec(size, rows, label_input_keys(kind == "simulated"))),
                         placement.replicated_spec(predictor))
    return out


def starts_label_round(step: int, gt_only_steps: int, refresh_steps: int) -> bool:
    """Whether the teacher is refreshed before step `step` (0-based): at gt_only_steps, then every
    refresh_steps. Between refreshes the labels come from the same frozen teacher, never the live params."""
    return step >= gt_only_steps and (step - gt_only_steps) % refresh_steps == 0


def eval_body(params: Any, batch: Mapping[str, jax.Array], *, apply_fn: Callable) -> jax.Array:
    """The refined depth (B, S, S, 1) of this device's batch (inference mode)."""
    return apply_fn({"params": params}, batch["low"], batch["high"], train=False).refined


# ------------------------------------------------------------------------------------------ the program
def maybe_initialize_distributed(config: Any) -> None:
    """`jax.distributed.initialize` with the config's coordinator when `distributed.initialize` is set."""
    d = config.get("distributed")
    if d is None or not d.get("initialize", False):
        return
    if jax.distributed.is_initialized():
        return
    kwargs = {}
    if d.get("coordinator_address"):
        kwargs = dict(coordinator_address=d.coordinator_address, num_processes=int(d.num_processes),
                      process_id=int(d.process_id))
    if d.get("local_device_ids") is not None:
        kwargs["local_device_ids"] = list(d.local_device_ids)
    jax.distributed.initialize(**kwargs)


# XLA options of the init program (see `initial_params`); GPU/TPU backends ignore the CPU backend's level.
INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def initial_params(config: Any, model, seed: int) -> Any:
    """Fresh params (docs/method.md §3.7 init) or, with `config.init_from`, an official checkpoint (a `.pt` file or a
    converted directory) or `mit:PATH` to put SegFormer's ImageNet MiT weights into a fresh init."""
    x = jnp.zeros((1, 128, 128, 1), jnp.float32)
    # One compiled init instead of hundreds of small eager ops (slow on a CPU). The program is only the
    # initializers' random draws (the forward pass is dead code): compiled without LLVM optimisation it
    # builds ~3x faster on XLA:CPU (11 s against 32 s for the tiny config on 2 cores) and draws the same
    # numbers up to float32 rounding (1.3e-7 relative; the run time of the program is negligible).
    init = jax.jit(lambda k: model.init(k, x, x, train=False)["params"], compiler_options=INIT_COMPILER_OPTIONS)
    params = init(jax.random.PRNGKey(seed))
    params = jax.device_get(params)
    src = str(config.get("init_from", "") or "")
    if not src:
        return params
    if src.startswith("mit:"):
        loaded = convert.load_mit_imagenet(src[4:], params, backbone=config.model.backbone)
    else:
        loaded, _ = load_refiner(src)
    check_params(loaded, config.model, where=f"init_from {src}")
    return jax.tree.map(lambda a: np.asarray(a, np.float32), loaded)


def finished_run(config: Any, workdir: str | os.PathLike) -> dict[str, Any] | None:
    """The saved result of `workdir` when it is a run of this config already trained to `train.num_steps`
    (its latest checkpoint is that step and its result.json was written after it), with
    `already_trained=True`; else None. A config the checkpoint refuses raises, as a resume would."""
    if jax.process_count() > 1:  # every process must take the same path; result.json is process 0's
        return None
    workdir = pathlib.Path(workdir).absolute()
    num_steps = int(config.train.num_steps)
    try:
        result = json.loads((workdir / "result.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict) or result.get("step") != num_steps or not result.get("eval"):
        return None
    if not (workdir / "checkpoints" / str(num_steps)).is_dir():
        return None
    ckpt = checkpointing.Checkpointer(workdir, config, save_every=max(int(config.train.checkpoint_every), 1),
                                      keep=max(int(config.train.keep_checkpoints), 1), async_save=False)
    try:
        if ckpt.latest_step() != num_steps:
            return None
        ckpt.check_config(num_steps)
    finally:
        ckpt.close()
    return {**result, "already_trained": True}


def train_and_evaluate(config: Any, workdir: str | os.PathLike) -> dict[str, Any]:
    """Trains the refiner with self-distillation (docs/method.md §10) and evaluates it; resumes from `workdir`.

    Phase 1 (steps < train.gt_only_steps): L_gt only. Later steps: the full loss (`loss.name`) with pseudo-labels
    G_S from a teacher, a frozen copy of the params taken at gt_only_steps and every label_refresh_steps after;
    labels are recomputed on device for every batch from the teacher (see docs/training.md).
    Returns {'step', 'train': last logged train metrics, 'eval': last evaluation (per prediction name)}.
    A workdir already trained to train.num_steps is not touched: its saved result comes back at once, with
    'already_trained': True (`finished_run`).
    """
    maybe_initialize_distributed(config)
    check_config(config)
    workdir = pathlib.Path(workdir).absolute()
    t = config.train
    num_steps, gt_steps, refresh = int(t.num_steps), int(t.gt_only_steps), int(t.label_refresh_steps)
    finished = finished_run(config, workdir)
    if finished is not None:  # nothing to train: answer at once, without building the model or the data
        return finished
    workdir.mkdir(parents=True, exist_ok=True)
    # Model, optimizer, state.
    model = build_refiner(config.model)
    loss_fn = losses.get_loss(config.loss.name)
    loss_config = config.loss
    tx = make_optimizer(config.optimizer, num_steps)
    ema_decay = float(t.get("ema_decay", 0.0))
    placement = Placement(t.parallel)
    mesh = placement.mesh
    self_distill = gt_steps < num_steps
    # With self-distillation both phases run one compiled step (`switched_loss`): phase 1 passes placeholder
    # labels and use_labels=False. A run without it needs only the L_gt step.
    step_fn = make_train_step(model.apply, loss_fn, loss_config, tx, parallel=t.parallel, mesh=mesh,
                              ema_decay=ema_decay, with_labels="switch" if self_distill else False)
    eval_fn = parallelize(functools.partial(eval_body, apply_fn=model.apply), ("replicated", "sharded"), "sharded",
                          parallel=t.parallel, mesh=mesh)
    label_kwargs = dict(label_options(config), with_depth=float(config.loss.get("w_rank", 0.0)) != 0.0)
    label_fn = label_pred = placeholder = label_job = None
    if self_distill:
        kind, predictor = label_predictor(config)
        label_fn = parallelize(functools.partial(label_body, **label_kwargs), ("replicated", "sharded", "replicated"),
                               "sharded", parallel=t.parallel, mesh=mesh)
    # The programs are built from shapes alone, in threads, while the parameters are drawn and the data is
    # built (the longest compilation first); each call then runs the executable its thread built.
    specs = early_compile_specs(config, model, tx, placement, ema=ema_decay > 0,
                                label_kwargs=label_kwargs if self_distill else None,
                                label_predictor=(kind, predictor) if self_distill else None)
    options = compiler_options(config)
    step_job = BackgroundCompile(step_fn, *specs["step"], compiler_options=options)
    eval_job = BackgroundCompile(eval_fn, *specs["eval"], compiler_options=options)
    host_state = jax.device_get(create_train_state(initial_params(config, model, int(config.seed)), tx,
                                                   int(config.seed), ema=ema_decay > 0))

    # Data (each process reads its own shard) and the checkpoint to resume from.
    data = TrainData(config)
    train_iter = data.train_iterator()
    ckpt = checkpointing.Checkpointer(workdir, config, save_every=int(t.checkpoint_every),
                                      keep=int(t.keep_checkpoints), best_metric=t.get("best_metric") or None,
                                      best_mode=t.get("best_mode", "min"), async_save=bool(t.async_checkpoints))
    teacher_host = None
    start = 0
    if ckpt.latest_step() is not None:
        r = ckpt.restore(TrainState.to_host(host_state), teacher_target=host_state.params, data_iterator=train_iter)
        host_state = TrainState.from_host(r["state"], host_state)
        teacher_host, start = r["teacher"], r["step"]
        if start > num_steps:
            ckpt.close()
            raise UserError(f"{workdir}: already trained to step {start}, beyond train.num_steps={num_steps}; "
                            "resuming would relabel the run (use another --workdir, or raise train.num_steps)")
    elif jax.process_index() == 0:
        write_json_atomic(workdir / "config.json", checkpointing.config_to_dict(config))

    state = placement.replicate(host_state)
    del host_state
    if self_distill:
        label_pred = placement.replicate(predictor)
        use_labels = {flag: placement.replicate(np.bool_(flag)) for flag in (False, True)}

        def label_inputs(batch: Mapping[str, np.ndarray], dev: Mapping[str, Any]) -> dict[str, Any]:
            """The label pass's inputs on device: the step's (`dev`) with `label_extras(batch)` laid over."""
            extra = label_extras(batch, simulated=kind == "simulated")
            return {**dev, **placement.shard(extra)} if extra else dict(dev)

        def placeholder_labels(label_inputs: Mapping[str, np.ndarray]) -> dict[str, Any]:
            """Zeros shaped like this process's labels (what phase 1 passes to the step; never read)."""
            shapes = label_shapes(label_inputs, **label_kwargs)
            return placement.shard({k: np.zeros(v.shape, v.dtype) for k, v in shapes.items()})
    # The teacher's copy keeps the params' layout (a plain jit may lay a one-device copy out otherwise, and the
    # label program compiled for the params' layout would then be missed).
    copy_tree = parallelize(lambda tree: jax.tree.map(jnp.copy, tree), ("replicated",), "replicated",
                            parallel=t.parallel, mesh=mesh)
    teacher = placement.replicate(teacher_host) if teacher_host is not None else None

    log = MetricLog(workdir, "train", resume_step=start, tensorboard=bool(t.tensorboard))
    eval_log = MetricLog(workdir, "eval", resume_step=start, tensorboard=False)
    result: dict[str, Any] = {"step": start, "train": {}, "eval": {}}

    def host_state_fn():
        return TrainState.to_host(placement.unreplicate(state))

    def run_eval(step: int) -> dict[str, dict[str, float]]:
        rows = []
        params = state.ema_params if state.ema_params is not None else state.params
        for batch, n_real in data.eval_batches(placement.num_local_devices):
            refined = placement.gather(eval_job(params, placement.shard({k: batch[k] for k in EVAL_KEYS})))
            preds = {"refined": refined, "low": np.asarray(batch["low"]), "high": np.asarray(batch["high"])}
            rows += evaluate_maps({k: v[:n_real] for k, v in preds.items()}, np.asarray(batch["depth"])[:n_real],
                                  np.asarray(batch["valid"])[:n_real], edge_metrics=bool(config.eval.edge_metrics))
        rows = allgather_json(rows)
        summary = summarize(rows)
        flat = {f"{name}/{k}": v for name, m in summary.items() for k, v in m.items()}
        eval_log.write(step, {**flat, "num_images": len(rows)})
        if log._tb is not None:
            for k, v in flat.items():
                if math.isfinite(v):
                    log._tb.add_scalar(f"eval/{k}", v, step)
        best = t.get("best_metric")
        if best:
            ckpt.save_best(step, host_state_fn(), {best: summary["refined"][best]},
                           teacher=placement.unreplicate(teacher) if teacher is not None else None,
                           data_iterator=train_iter)
        return summary

    bar = None
    if bool(t.progress_bar) and jax.process_index() == 0:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_steps, initial=start, desc="train", dynamic_ncols=True, mininterval=1.0)
    global_batch = int(config.data.batch_size)
    max_skips = int(t.max_consecutive_nonfinite)
    schedule = make_schedule(config.optimizer, num_steps)
    tick, tick_step = time.perf_counter(), start
    metrics = None
    if self_distill:  # started once the parameters and the data are ready (a third build before slows the step's)
        label_job = BackgroundCompile(label_fn, *specs["labels"], compiler_options=options)
    for step in range(start, num_steps):
        if starts_label_round(step, gt_steps, refresh) or (step >= gt_steps and teacher is None):
            # A new pseudo-label round: the teacher is a frozen copy of the current params (docs/method.md §10).
            teacher = copy_tree(state.params)
        batch = next(train_iter)
        if step == start and self_distill:  # before any step: the labels must come from the inputs' predictor
            check_label_source(config, batch)
        dev = placement.shard({k: batch[k] for k in STEP_KEYS if k in batch})
        if not self_distill:
            state, metrics = step_job(state, dev)
        elif teacher is None:  # phase 1 of a self-distillation run
            if placeholder is None:
                placeholder = placeholder_labels({k: batch[k] for k in label_input_keys(True) if k in batch})
            state, metrics = step_job(state, dev, placeholder, use_labels[False])
        else:
            labels = label_job(teacher, label_inputs(batch, dev), label_pred)
            state, metrics = step_job(state, dev, labels, use_labels[True])
        done = step + 1
        if done % int(t.log_every) == 0 or done == num_steps:
            m = placement.metrics(metrics)
            now = time.perf_counter()
            m["images_per_s"] = (done - tick_step) * global_batch / max(now - tick, 1e-9)
            m["lr"] = float(schedule(step))  # the rate of the step just taken (skipped updates aside)
            m["phase"] = 1 if teacher is None else 2
            consecutive, total = nonfinite_counts(placement.unreplicate(state.opt_state))
            m["nonfinite_skipped"] = total
            log.write(done, m, prefix="train/")
            result["train"] = m
            tick, tick_step = now, done
            if bar is not None:
                bar.set_postfix(loss=f"{m['loss']:.4f}", img_s=f"{m['images_per_s']:.1f}", phase=m["phase"])
            if consecutive >= max_skips:
                ckpt.close()
                raise UserError(f"training diverged: {consecutive} consecutive non-finite updates skipped at "
                                f"step {done}; lower optimizer.learning_rate or set optimizer.grad_clip_norm")
        if bar is not None:
            bar.update(1)
        ckpt.maybe_save(done, host_state_fn, teacher=placement.unreplicate(teacher) if teacher is not None and
                        done % ckpt.save_every == 0 else None, data_iterator=train_iter)
        if int(t.eval_every) and done % int(t.eval_every) == 0 and done != num_steps:
            result["eval"] = run_eval(done)
    if bar is not None:
        bar.close()
    if start < num_steps or not result["eval"]:
        result["eval"] = run_eval(num_steps)
    ckpt.save(num_steps, host_state_fn(), teacher=placement.unreplicate(teacher) if teacher is not None else None,
              data_iterator=train_iter)
    ckpt.close()
    log.close()
    eval_log.close()
    result["step"] = num_steps
    # Seconds each program took to build ahead of its first call, calls that missed it (0 unless shapes
    # changed), the error of a thread's build that had to be redone in the calling thread (with its
    # traceback), and the error of a build that failed twice (its calls then compiled the usual way).
    jobs = {"step": step_job, "eval": eval_job, "labels": label_job}
    result["compile"] = {name: {"seconds": round(job.seconds, 2), "fallback_calls": job.fallback_calls,
                                "thread_error": job.thread_error,
                                "error": None if job.error is None else repr(job.error)[:500]}
                         for name, job in jobs.items() if job is not None}
    if jax.process_index() == 0:
        write_json_atomic(workdir / "result.json", result)
    return result
