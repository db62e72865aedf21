"""Self-distillation training of the refiner (spec 8, 10).

The centre is one pure per-device step body, `train_step`, that averages gradients with
`lax.pmean(..., 'data')`. `parallelize` wraps it either with `jax.pmap` (the default) or with
`jax.jit(jax.shard_map(...))` over a one-axis mesh; both give the same parameters. The state's buffers are
donated. `train_and_evaluate(config, workdir)` is the whole program: data, model, optimizer, the
self-distillation rounds, evaluation, logs and checkpoints (resumed automatically).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import time
from typing import Any, Callable, Mapping, Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax import lax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sddr_jax.errors import UserError

AXIS = "data"
PARALLEL_MODES = ("pmap", "shard_map")


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
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
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
    """optax AdamW (spec 10 defaults: weight decay 0.01, b1 0.9, b2 0.999, eps 1e-8; weight decay is set
    explicitly because optax's default, 1e-4, differs from PyTorch's), an optional global-norm clip before
    it, and `optax.apply_if_finite`, which skips (and counts) any update with a non-finite gradient."""
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
               ema_decay: float = 0.0, axis_name: str = AXIS) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on this device's share of the batch; gradients averaged over `axis_name`.

    `apply_fn(variables, low, high, train=True, rngs={'dropout': key}) -> RefinerOutput`;
    `loss_fn(outputs, batch, labels, loss_config) -> (scalar, aux)` (labels None: L_gt only).
    Returns the new state and device-averaged metrics (loss, aux terms, grad_norm, skipped).
    """
    dropout_key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), lax.axis_index(axis_name))

    def objective(params):
        outputs = apply_fn({"params": params}, batch["low"], batch["high"], train=True,
                           rngs={"dropout": dropout_key})
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
               "grad_norm": optax.global_norm(grads)}
    if isinstance(opt_state, optax.ApplyIfFiniteState):
        metrics["skipped"] = 1.0 - opt_state.last_finite.astype(jnp.float32)
    metrics = lax.pmean(jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), metrics), axis_name)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema)
    return new_state, metrics


# -------------------------------------------------------------------------------------- parallelism
def make_mesh(devices: Sequence[jax.Device] | None = None, axis_name: str = AXIS) -> Mesh:
    """A one-axis mesh over all (global) devices."""
    devices = np.asarray(jax.devices() if devices is None else devices)
    return Mesh(devices.reshape(-1), (axis_name,))


def parallelize(fn: Callable, kinds_in: Sequence[str], kinds_out: Sequence[str] | str, *, parallel: str = "pmap",
                mesh: Mesh | None = None, donate_argnums: Sequence[int] = (), axis_name: str = AXIS) -> Callable:
    """Wraps a per-device function for data parallelism.

    `kinds_in` / `kinds_out` say for each argument / output whether it is 'replicated' (same on every
    device: state, params) or 'sharded' (split along the batch). With `parallel='pmap'` replicated values
    carry a leading device axis and sharded ones are (devices, per-device batch, ...); with 'shard_map'
    both are global arrays (replicated resp. split along `axis_name` of `mesh`).
    """
    if parallel not in PARALLEL_MODES:
        raise UserError(f"train.parallel: expected one of {PARALLEL_MODES}, got {parallel!r}")
    if parallel == "pmap":
        return jax.pmap(fn, axis_name=axis_name, donate_argnums=tuple(donate_argnums))
    if mesh is None:
        mesh = make_mesh(axis_name=axis_name)
    spec = {"replicated": P(), "sharded": P(axis_name)}
    out = spec[kinds_out] if isinstance(kinds_out, str) else tuple(spec[k] for k in kinds_out)
    # check_vma=False: with varying-axis tracking, shard_map would psum the gradient of a replicated input
    # on its own (the transpose of the implicit broadcast); the body's explicit pmean must see the
    # per-device gradients, exactly as under pmap, so that one body serves both wrappers.
    mapped = jax.shard_map(fn, mesh=mesh, in_specs=tuple(spec[k] for k in kinds_in), out_specs=out,
                           check_vma=False)
    return jax.jit(mapped, donate_argnums=tuple(donate_argnums))


def make_train_step(apply_fn: Callable, loss_fn: Callable, loss_config: Any, tx: optax.GradientTransformation, *,
                    parallel: str = "pmap", mesh: Mesh | None = None, ema_decay: float = 0.0,
                    with_labels: bool = False) -> Callable:
    """`step(state, batch[, labels]) -> (state, metrics)`, `train_step` wrapped by `parallelize`,
    with the state donated. Metrics come back replicated (pmap: with a device axis)."""
    body = functools.partial(train_step, apply_fn=apply_fn, loss_fn=loss_fn, loss_config=loss_config, tx=tx,
                             ema_decay=ema_decay)
    if with_labels:
        fn, kinds = body, ("replicated", "sharded", "sharded")
    else:
        def fn(state, batch):
            return body(state, batch, None)
        kinds = ("replicated", "sharded")
    return parallelize(fn, kinds, ("replicated", "replicated"), parallel=parallel, mesh=mesh, donate_argnums=(0,))


class Placement:
    """Moves host values to the devices in the layout `parallelize` expects, and back.

    Multi-host: every process passes its own share of the global batch (its `process_batch_size` rows);
    replicated values must be the same on every process.
    """

    def __init__(self, parallel: str = "pmap", mesh: Mesh | None = None):
        if parallel not in PARALLEL_MODES:
            raise UserError(f"train.parallel: expected one of {PARALLEL_MODES}, got {parallel!r}")
        self.parallel = parallel
        self.mesh = mesh if mesh is not None or parallel == "pmap" else make_mesh()
        self.local_devices = jax.local_devices()
        # pmap takes (local devices, ...) arrays; laying them out over a mesh of the local devices is what
        # `jax.pmap` expects without a copy (the old device_put_sharded/replicated are gone from JAX).
        self._local = NamedSharding(Mesh(np.asarray(self.local_devices), ("_local",)), P("_local"))

    @property
    def num_local_devices(self) -> int:
        return len(self.local_devices)

    def replicate(self, tree: Any) -> Any:
        if self.parallel == "pmap":
            n = self.num_local_devices
            return jax.tree.map(lambda x: jax.device_put(np.stack([np.asarray(x)] * n), self._local), tree)
        sharding = NamedSharding(self.mesh, P())
        return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree)

    def unreplicate(self, tree: Any) -> Any:
        """Host numpy copy of a replicated value (the first local device's copy)."""
        if self.parallel == "pmap":
            return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data)[0], tree)
        return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data), tree)

    def shard(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """This process's rows of a batch -> device arrays split along the batch."""
        n = self.num_local_devices
        out = {}
        for k, v in batch.items():
            v = np.asarray(v)
            if v.shape[0] % n:
                raise UserError(f"batch key {k!r}: {v.shape[0]} rows do not split over {n} local devices; "
                                "choose a batch size that is a multiple of the device count")
            if self.parallel == "pmap":
                out[k] = jax.device_put(v.reshape((n, -1) + v.shape[1:]), self._local)
            else:
                out[k] = jax.make_array_from_process_local_data(NamedSharding(self.mesh, P(AXIS)), v)
        return out

    def gather(self, x: Any) -> np.ndarray:
        """This process's rows of a sharded device value, as host numpy (batch order kept)."""
        if self.parallel == "pmap":
            a = np.asarray(jax.device_get(x))
            return a.reshape((-1,) + a.shape[2:])
        shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
        return np.concatenate([np.asarray(s.data) for s in shards], axis=0)

    def metrics(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        return {k: float(v) for k, v in self.unreplicate(dict(metrics)).items()}
