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
               "grad_norm": optax.tree.norm(grads)}
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
        # pmap takes (local devices, ...) arrays. Laid out over a mesh of the local devices whose axis has
        # pmap's axis name, they carry exactly the sharding of pmap's outputs: a state fed back into the step
        # then hits the same compiled program (another axis name would compile it a second time).
        self._local = NamedSharding(Mesh(np.asarray(self.local_devices), (AXIS,)), P(AXIS))

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


# ------------------------------------------------------------------------ labels and evaluation bodies
@dataclasses.dataclass(frozen=True)
class RefinerFn:
    """`refiner_fn(params, low, high) -> refined` for the pseudo-label pipeline, with the model of the config
    (hashable, as coarse_to_fine needs of a static function); inputs min-max normalised as at inference."""

    backbone: str = "b0"
    cross_iterations: int = 8

    def __call__(self, params, low, high):
        from sddr_jax.models import Refiner

        def minmax(x):  # per image, as the official preprocessing; a constant map becomes zeros
            lo = jnp.min(x, axis=(1, 2, 3), keepdims=True)
            rng = jnp.max(x, axis=(1, 2, 3), keepdims=True) - lo
            return (x - lo) / jnp.where(rng > 0, rng, 1.0)

        model = Refiner(backbone=self.backbone, cross_iterations=self.cross_iterations)
        return model.apply({"params": params}, minmax(low), minmax(high), train=False).refined


def label_options(config: Any) -> dict[str, Any]:
    """Static keyword arguments of `edge_labels` from `config.labels` and the data's simulated predictor.

    The teacher's predictor is the pipeline's simulated predictor: the whole-image pass uses the pipeline's
    low/high resolutions (default S/4 and S) and its training resolution (default the low one).
    """
    c, d = config.labels, config.data
    s = int(d.image_size)
    pk = dict(d.predictor)
    low_res = int(pk.pop("low_res", None) or max(8, s // 4))
    high_res = int(pk.pop("high_res", None) or s)
    pk["train_res"] = int(pk.get("train_res") or low_res)
    return dict(
        predictor_options=tuple(sorted(pk.items())), schedule=tuple(tuple(x) for x in c.schedule),
        size=int(c.size or s), blend=c.blend, resolution=c.resolution,
        base_resolution=int(c.base_resolution or pk["train_res"]), max_resolution=int(c.max_resolution or high_res),
        global_sizes=(low_res, high_res), bilateral=tuple(c.bilateral) if c.bilateral else None,
        edge_quantile=float(c.edge_quantile), flat_quantile=float(c.flat_quantile), num_regions=int(c.num_regions),
        top_fraction=float(c.top_fraction), region_margin=int(c.region_margin),
        refiner_fn=RefinerFn(config.model.backbone, int(config.model.cross_iterations)))


def label_body(teacher_params: Any, batch: Mapping[str, jax.Array], key: jax.Array, *,
               predictor_options: tuple = (), axis_name: str = AXIS, **edge_label_kwargs) -> dict[str, jax.Array]:
    """Edge pseudo-labels G_S (spec 6) of this device's batch from the frozen teacher params.

    The simulated predictor (spec 7) sees the ground-truth depth as its image, exactly as the data pipeline's
    low/high inputs do; its noise key is folded with the device index so devices draw different noise.
    Runs inside the same jit/pmap as the rest of the program; no gradient flows into the labels.
    """
    from sddr_jax import coarse_to_fine
    from sddr_jax.predictors import SimulatedPredictor

    key = jax.random.fold_in(key, lax.axis_index(axis_name))
    predictor = SimulatedPredictor.create(key, **dict(predictor_options))
    depth = batch["depth"].astype(jnp.float32)
    # Invalid ground truth would poison the predictor's resizing; the pipeline marks it, we fill it with the
    # image's valid mean (only the labels see this; the losses keep using `valid`).
    valid = batch["valid"].astype(bool) & jnp.isfinite(depth) & (depth > 0)
    fill = jnp.sum(jnp.where(valid, depth, 0.0), axis=(1, 2, 3), keepdims=True) / jnp.maximum(
        jnp.sum(valid, axis=(1, 2, 3), keepdims=True), 1)
    image = jnp.where(valid, depth, fill)
    labels = coarse_to_fine.edge_labels(lax.stop_gradient(teacher_params), image, predictor, **edge_label_kwargs)
    return {k: lax.stop_gradient(v) for k, v in labels.items() if k in ("edge", "mask_edge", "mask_flat", "regions")}


def eval_body(params: Any, batch: Mapping[str, jax.Array], *, apply_fn: Callable) -> jax.Array:
    """The refined depth (B, S, S, 1) of this device's batch (inference mode)."""
    return apply_fn({"params": params}, batch["low"], batch["high"], train=False).refined


def evaluate_maps(preds: Mapping[str, np.ndarray], depth: np.ndarray, valid: np.ndarray,
                  edge_metrics: bool = True) -> list[dict[str, dict[str, float]]]:
    """Per-image metrics (spec 9) of several predictions of the same images.

    `preds` maps a name ('refined', 'low', 'high') to (B, H, W, 1) maps; returns one dict per image:
    {name: {abs_rel, ..., delta1, [d3r, ord_boost, boundary_f1]}} from `metrics.image_metrics` (least-squares
    alignment in depth; Boost's protocol for depth-valued predictions; ORD_rank left out for speed).
    """
    from sddr_jax import metrics as M

    out = []
    for i in range(depth.shape[0]):
        gt, v = depth[i, ..., 0], valid[i, ..., 0].astype(bool)
        out.append({name: M.image_metrics(p[i, ..., 0], gt, v, edge_metrics=edge_metrics, ord_rank=False)
                    for name, p in preds.items()})
    return out


# ----------------------------------------------------------------------------------------------- logging
class MetricLog:
    """Metrics as JSON lines (`<workdir>/<name>.jsonl`) and TensorBoard events (`<workdir>/tensorboard`).

    Only process 0 writes. Opening for a resumed run drops the lines of steps after `resume_step` (they are
    about to be trained again) and a partial last line left by a kill, rewriting the file atomically.
    """

    def __init__(self, workdir: pathlib.Path, name: str, resume_step: int = 0, tensorboard: bool = True):
        self.active = jax.process_index() == 0
        self.path = workdir / f"{name}.jsonl"
        self._tb = None
        if not self.active:
            return
        if self.path.exists():
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
                if int(rec.get("step", 0)) <= resume_step:
                    kept.append(line)
            tmp = self.path.with_suffix(".jsonl.tmp")
            tmp.write_text("".join(k + "\n" for k in kept))
            os.replace(tmp, self.path)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(workdir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

    def write(self, step: int, values: Mapping[str, Any], prefix: str = "") -> None:
        if not self.active:
            return
        rec = {"step": int(step), **{k: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) else v)
                                     for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(float(v)):
                    self._tb.add_scalar(f"{prefix}{k}", float(v), step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def _write_json_atomic(path: pathlib.Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=True))
    os.replace(tmp, path)


# -------------------------------------------------------------------------------------------- the config
def default_config() -> "ml_collections.ConfigDict":
    """Every knob of `train_and_evaluate`, with the spec-10 recipe's values (S = 2048, batch 2, lr 1e-4,
    AdamW wd 0.01, x0.99 every 100 steps, the `official` loss). `configs/*.py` start from this."""
    import ml_collections

    from sddr_jax.losses import default_loss_config
    from sddr_jax.windows import OFFICIAL_SCHEDULE

    c = ml_collections.ConfigDict()
    c.seed = 0
    c.init_from = ""  # "" | official .pt / converted dir | "mit:PATH" (SegFormer ImageNet MiT weights)

    c.data = ml_collections.ConfigDict(dict(
        name="sddr_synthetic", config="s2048", data_dir="", build_if_missing=True,
        train_split="train", eval_split="test", image_size=2048, batch_size=2,
        num_threads=2, prefetch_buffer_size=8,
        # `simulate_prediction` settings: low/high resolutions (0 = S/4 and S), training resolution (0 = low).
        predictor=dict(low_res=0, high_res=0, train_res=0),
        augment=dict(crop_scale=(0.6, 1.0), flip_prob=0.5, brightness=0.2, contrast=0.2, saturation=0.2,
                     gamma=(0.8, 1.25)),
    ))
    c.model = ml_collections.ConfigDict(dict(backbone="b0", cross_iterations=8, dtype="float32"))
    c.loss = default_loss_config("official")
    c.labels = ml_collections.ConfigDict(dict(
        schedule=OFFICIAL_SCHEDULE, size=0,  # 0: the training size S
        blend="official", resolution="adaptive", base_resolution=0, max_resolution=0,  # 0: from data.predictor
        bilateral=(), edge_quantile=0.85, flat_quantile=0.15, num_regions=4, top_fraction=0.05, region_margin=8,
    ))
    c.optimizer = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=1e-4, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8,
        schedule="step", decay_steps=100, decay_rate=0.99, warmup_steps=0, end_factor=0.0,
        grad_clip_norm=0.0, skip_nonfinite=True,
    ))
    c.train = ml_collections.ConfigDict(dict(
        num_steps=30_000, gt_only_steps=10_000, label_refresh_steps=10_000, parallel="pmap",
        log_every=50, eval_every=2_000, checkpoint_every=1_000, keep_checkpoints=3, async_checkpoints=True,
        best_metric="d3r", best_mode="min", ema_decay=0.0, max_consecutive_nonfinite=100,
        progress_bar=True, tensorboard=True,
    ))
    c.eval = ml_collections.ConfigDict(dict(batch_size=2, num_examples=0, edge_metrics=True))
    c.distributed = ml_collections.ConfigDict(dict(
        initialize=False, coordinator_address="", num_processes=1, process_id=0, local_device_ids=None))
    return c


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


# ---------------------------------------------------------------------------------------------- the data
def data_dir_of(config: Any) -> pathlib.Path:
    """`config.data.data_dir`, else $SDDR_JAX_DATA_DIR, else ~/tensorflow_datasets."""
    d = config.data.get("data_dir") or os.environ.get("SDDR_JAX_DATA_DIR") or "~/tensorflow_datasets"
    return pathlib.Path(d).expanduser()


class TrainData:
    """The training stream and the held-out batches of `config.data` (built with `sddr_jax.input_pipeline`).

    Each process reads its own shard; batches are flat (this process's rows) and `Placement.shard` lays
    them out. A generated dataset (`sddr_synthetic`) that is not built yet is built first when
    `data.build_if_missing` is set (process 0 builds, the others wait at a barrier).
    """

    def __init__(self, config: Any):
        from sddr_jax import data_registry, input_pipeline

        self.config = config
        d = config.data
        self.data_dir = data_dir_of(config)
        self.builder_config = d.get("config") or None
        kind = data_registry.DATASETS.get(d.name, ("", ""))[0]
        builder = data_registry.get_builder(d.name, self.data_dir, self.builder_config)
        if not builder.is_prepared() and kind == "generated" and d.get("build_if_missing", False):
            if jax.process_index() == 0:
                data_registry.build(d.name, self.data_dir, None, self.builder_config)
            if jax.process_count() > 1:
                from jax.experimental import multihost_utils

                multihost_utils.sync_global_devices("sddr_jax data build")
        self._ip = input_pipeline
        # 0 / empty = simulate_prediction's own default (low S/4, high S, training resolution = low).
        self.predictor_kwargs = {k: v for k, v in dict(d.predictor).items() if v not in (0, None, "")}

    def _dataset(self, split: str, train: bool, batch_size: int, num_epochs=None):
        d = self.config.data
        source = self._ip.data_source(d.name, self.data_dir, split, self.builder_config)
        augment = self._ip.AugmentConfig(**{k: tuple(v) if isinstance(v, (list, tuple)) else v
                                            for k, v in d.augment.items()}) if train else None
        return self._ip.make_dataset(
            source, image_size=int(d.image_size), global_batch_size=batch_size, seed=int(self.config.seed),
            train=train, num_epochs=num_epochs, augment=augment, layout="flat", drop_remainder=train,
            predictor_kwargs=self.predictor_kwargs, num_threads=int(d.num_threads),
            prefetch_buffer_size=int(d.prefetch_buffer_size))

    def train_iterator(self):
        """A checkpointable grain iterator over training batches (shuffled, augmented, repeated forever)."""
        return iter(self._dataset(self.config.data.train_split, True, int(self.config.data.batch_size)))

    def eval_batches(self, num_local_devices: int):
        """Yields (batch, n_real): the held-out split in order, at most `eval.num_examples` images per
        process (0 = all); a short last batch is padded by repeating its last row to split over the devices."""
        e = self.config.eval
        limit = int(e.num_examples) // jax.process_count() if int(e.num_examples) else None
        per_process = int(e.batch_size)
        seen = 0
        for batch in self._dataset(self.config.data.eval_split, False, per_process * jax.process_count(), 1):
            n = len(batch["depth"])
            if limit is not None:
                n = min(n, limit - seen)
                if n <= 0:
                    return
            seen += n
            pad = (-n) % num_local_devices
            batch = {k: np.concatenate([v[:n]] + [v[n - 1:n]] * pad) for k, v in batch.items()}
            yield batch, n


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


def make_model(config: Any):
    """The Refiner of `config.model` (backbone, cross_iterations, dtype)."""
    from sddr_jax.models import Refiner

    m = config.model
    dtype = {"float32": None, "bfloat16": jnp.bfloat16, "float16": jnp.float16}.get(m.get("dtype", "float32"), "bad")
    if dtype == "bad":
        raise UserError(f"model.dtype: expected 'float32', 'bfloat16' or 'float16', got {m.dtype!r}")
    return Refiner(backbone=m.backbone, cross_iterations=int(m.cross_iterations), dtype=dtype)


def initial_params(config: Any, model, seed: int) -> Any:
    """Fresh params (spec 3.7 init) or, with `config.init_from`, an official checkpoint (a `.pt` file or a
    converted directory) or `mit:PATH` to put SegFormer's ImageNet MiT weights into a fresh init."""
    x = jnp.zeros((1, 128, 128, 1), jnp.float32)
    # One compiled init instead of hundreds of small eager ops (slow on a CPU).
    params = jax.jit(lambda k: model.init(k, x, x, train=False)["params"])(jax.random.PRNGKey(seed))
    params = jax.device_get(params)
    src = str(config.get("init_from", "") or "")
    if not src:
        return params
    from sddr_jax import convert

    if src.startswith("mit:"):
        loaded = convert.load_mit_imagenet(src[4:], params, backbone=config.model.backbone)
    else:
        loaded = convert.load_params(src)
    want = jax.tree.structure(params)
    if jax.tree.structure(loaded) != want or any(
            np.shape(a) != np.shape(b) for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params))):
        raise UserError(f"init_from {src}: its parameters do not fit model {dict(config.model)}")
    return jax.tree.map(lambda a: np.asarray(a, np.float32), loaded)


def _check_config(config: Any) -> None:
    t = config.train
    for name, v in (("train.num_steps", t.num_steps), ("data.batch_size", config.data.batch_size)):
        if v is None or int(v) < 1:
            raise UserError(f"config.{name} must be a positive integer, got {v!r}")
    if int(t.gt_only_steps) < 0 or int(t.label_refresh_steps) < 1:
        raise UserError("config.train: gt_only_steps must be >= 0 and label_refresh_steps >= 1, got "
                        f"{t.gt_only_steps} and {t.label_refresh_steps}")
    if t.parallel not in PARALLEL_MODES:
        raise UserError(f"config.train.parallel: expected one of {PARALLEL_MODES}, got {t.parallel!r}")
    s = int(config.data.image_size)
    if s % 128:
        raise UserError(f"config.data.image_size: the refiner needs a multiple of 128, got {s}")
    best = t.get("best_metric")
    if best in ("d3r", "ord_boost") and not config.eval.edge_metrics:
        raise UserError(f"config.train.best_metric {best!r} needs config.eval.edge_metrics=True "
                        "(or choose a depth metric such as 'abs_rel')")
    n = jax.device_count()
    if int(config.data.batch_size) % n:
        raise UserError(f"config.data.batch_size {config.data.batch_size} does not split over {n} devices")


def train_and_evaluate(config: Any, workdir: str | os.PathLike) -> dict[str, Any]:
    """Trains the refiner with self-distillation (spec 10) and evaluates it; resumes from `workdir`.

    Phase 1 (steps < train.gt_only_steps): L_gt only. Later steps: the full loss (`loss.name`) with pseudo-labels
    G_S from a teacher, a frozen copy of the params taken at gt_only_steps and every label_refresh_steps after;
    labels are recomputed on device for every batch from the teacher (see docs/training.md).
    Returns {'step', 'train': last logged train metrics, 'eval': last evaluation (per prediction name)}.
    """
    from sddr_jax import checkpointing, losses

    maybe_initialize_distributed(config)
    _check_config(config)
    workdir = pathlib.Path(workdir).absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    t = config.train
    num_steps, gt_steps, refresh = int(t.num_steps), int(t.gt_only_steps), int(t.label_refresh_steps)
    size = int(config.data.image_size)

    # Model, optimizer, state.
    model = make_model(config)
    loss_fn = losses.get_loss(config.loss.name)
    loss_config = config.loss
    tx = make_optimizer(config.optimizer, num_steps)
    ema_decay = float(t.get("ema_decay", 0.0))
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
    elif jax.process_index() == 0:
        _write_json_atomic(workdir / "config.json", checkpointing.config_to_dict(config))

    placement = Placement(t.parallel)
    mesh = placement.mesh
    state = placement.replicate(host_state)
    del host_state
    step_gt = make_train_step(model.apply, loss_fn, loss_config, tx, parallel=t.parallel, mesh=mesh,
                              ema_decay=ema_decay, with_labels=False)
    step_sd = make_train_step(model.apply, loss_fn, loss_config, tx, parallel=t.parallel, mesh=mesh,
                              ema_decay=ema_decay, with_labels=True)
    label_fn = parallelize(functools.partial(label_body, **label_options(config)),
                           ("replicated", "sharded", "replicated"), "sharded", parallel=t.parallel, mesh=mesh)
    eval_fn = parallelize(functools.partial(eval_body, apply_fn=model.apply), ("replicated", "sharded"), "sharded",
                          parallel=t.parallel, mesh=mesh)
    copy_tree = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree))
    label_key = jax.random.fold_in(jax.random.PRNGKey(int(config.seed)), 0x5DD2)
    teacher = placement.replicate(teacher_host) if teacher_host is not None else None

    log = MetricLog(workdir, "train", resume_step=start, tensorboard=bool(t.tensorboard))
    eval_log = MetricLog(workdir, "eval", resume_step=start, tensorboard=False)
    result: dict[str, Any] = {"step": start, "train": {}, "eval": {}}

    def host_state_fn():
        return TrainState.to_host(placement.unreplicate(state))

    def run_eval(step: int) -> dict[str, dict[str, float]]:
        from sddr_jax import metrics as M

        rows = []
        params = state.ema_params if state.ema_params is not None else state.params
        for batch, n_real in data.eval_batches(placement.num_local_devices):
            refined = placement.gather(eval_fn(params, placement.shard(batch)))
            preds = {"refined": refined, "low": np.asarray(batch["low"]), "high": np.asarray(batch["high"])}
            rows += evaluate_maps({k: v[:n_real] for k, v in preds.items()}, np.asarray(batch["depth"])[:n_real],
                                  np.asarray(batch["valid"])[:n_real], edge_metrics=bool(config.eval.edge_metrics))
        rows = _allgather_rows(rows)
        summary = {name: M.aggregate([r[name] for r in rows]) for name in rows[0]} if rows else {}
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
    for step in range(start, num_steps):
        if step >= gt_steps and (teacher is None or (step - gt_steps) % refresh == 0):
            # A new pseudo-label round: the teacher is a frozen copy of the current params (spec 10).
            teacher = copy_tree(state.params)
        batch = next(train_iter)
        dev = placement.shard({k: batch[k] for k in ("rgb", "low", "high", "depth", "valid") if k in batch})
        if teacher is None:
            state, metrics = step_gt(state, dev)
        else:
            key = placement.replicate(np.asarray(jax.random.fold_in(label_key, step)))
            labels = label_fn(teacher, dev, key)
            state, metrics = step_sd(state, dev, labels)
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
    if jax.process_index() == 0:
        _write_json_atomic(workdir / "result.json", result)
    return result


def _allgather_rows(rows: list[dict[str, dict[str, float]]]) -> list[dict[str, dict[str, float]]]:
    """Every process's per-image metric rows, on every process (single process: unchanged)."""
    if jax.process_count() == 1:
        return rows
    from jax.experimental import multihost_utils

    payload = json.dumps(rows).encode()
    n = multihost_utils.process_allgather(np.asarray([len(payload)], np.int64))
    buf = np.zeros(int(np.max(n)), np.uint8)
    buf[: len(payload)] = np.frombuffer(payload, np.uint8)
    bufs = multihost_utils.process_allgather(buf)
    out = []
    for b, k in zip(np.asarray(bufs), np.asarray(n).reshape(-1)):
        out += json.loads(bytes(b[: int(k)]).decode())
    return out
