"""Data parallelism for training: one per-device body, wrapped by `jax.pmap` or `jax.jit(jax.shard_map)`.

`parallelize` wraps a per-device function; `Placement` moves host values into the layout it expects and
back; `allgather_json` collects host rows across processes (multi-host evaluation).
"""
from __future__ import annotations

import json
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from sddr_jax.errors import UserError

AXIS = "data"
PARALLEL_MODES = ("pmap", "shard_map")


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

    def _rows_per_device(self, key: str, rows: int) -> int:
        n = self.num_local_devices
        if rows % n:
            raise UserError(f"batch key {key!r}: {rows} rows do not split over {n} local devices; "
                            "choose a batch size that is a multiple of the device count")
        return rows // n

    def replicated_spec(self, tree: Any) -> Any:
        """`jax.ShapeDtypeStruct`s (with shardings) of what `replicate(tree)` returns, from shapes alone
        (`tree`'s leaves need `.shape` and `.dtype`): what a program compiled ahead of its call is built for."""
        if self.parallel == "pmap":
            n = self.num_local_devices
            return jax.tree.map(lambda x: jax.ShapeDtypeStruct((n,) + tuple(x.shape), x.dtype, sharding=self._local),
                                tree)
        sharding = NamedSharding(self.mesh, P())
        return jax.tree.map(lambda x: jax.ShapeDtypeStruct(tuple(x.shape), x.dtype, sharding=sharding), tree)

    def sharded_spec(self, batch: Mapping[str, Any]) -> dict[str, jax.ShapeDtypeStruct]:
        """Like `replicated_spec`, for what `shard(batch)` returns (this process's rows in `batch`)."""
        n = self.num_local_devices
        out = {}
        for k, v in batch.items():
            per_device = self._rows_per_device(k, int(v.shape[0]))
            if self.parallel == "pmap":
                out[k] = jax.ShapeDtypeStruct((n, per_device) + tuple(v.shape[1:]), v.dtype, sharding=self._local)
            else:
                out[k] = jax.ShapeDtypeStruct((int(v.shape[0]) * jax.process_count(),) + tuple(v.shape[1:]), v.dtype,
                                              sharding=NamedSharding(self.mesh, P(AXIS)))
        return out

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
            per_device = self._rows_per_device(k, v.shape[0])
            if self.parallel == "pmap":
                # explicit row count: -1 is ambiguous for empty entries such as labels' 'regions' (B, 0, H, W)
                out[k] = jax.device_put(v.reshape((n, per_device) + v.shape[1:]), self._local)
            else:
                out[k] = jax.make_array_from_process_local_data(NamedSharding(self.mesh, P(AXIS)), v)
        return out

    def gather(self, x: Any) -> np.ndarray:
        """This process's rows of a sharded device value, as host numpy (batch order kept)."""
        if self.parallel == "pmap":
            a = np.asarray(jax.device_get(x))
            return a.reshape((a.shape[0] * a.shape[1],) + a.shape[2:])
        shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
        return np.concatenate([np.asarray(s.data) for s in shards], axis=0)

    def metrics(self, metrics: Mapping[str, Any]) -> dict[str, float]:
        return {k: float(v) for k, v in self.unreplicate(dict(metrics)).items()}


def allgather_json(rows: list) -> list:
    """Every process's list of JSON-serialisable rows (e.g. per-image metrics), on every process (single process: unchanged)."""
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
