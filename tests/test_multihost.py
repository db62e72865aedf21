"""Multi-host data parallelism: 2 processes x 4 CPU devices on loopback run the train step (pmap and
jit + shard_map) and a checkpoint save/restore; both processes end with identical parameters, equal to one
process with 8 devices.

The worker is this file run as a script: `python tests/test_multihost.py WORKER_ARGS`.
"""
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
STEPS = 3
GLOBAL_BATCH = 16


def _setup(mode_count=None):
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import ml_collections

    class Net(nn.Module):
        @nn.compact
        def __call__(self, low, high, train=False):
            x = nn.relu(nn.Conv(4, (3, 3))(jnp.concatenate([low, high], -1)))
            x = nn.Dropout(0.2, deterministic=not train)(x)
            return nn.Conv(1, (3, 3))(x)

    def loss(out, batch, labels, config):
        v = jnp.mean((out - batch["depth"]) ** 2)
        return v, {"mse": v}

    opt = ml_collections.ConfigDict(dict(
        name="adamw", learning_rate=1e-2, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8, schedule="step",
        decay_steps=100, decay_rate=0.99, warmup_steps=0, end_factor=0.0, grad_clip_norm=1.0, skip_nonfinite=True))
    rng = np.random.default_rng(0)
    batch = {k: rng.random((GLOBAL_BATCH, 8, 8, 1), dtype=np.float32) for k in ("low", "high", "depth")}
    return Net(), loss, opt, batch


def _train(mode, process_index, process_count, workdir=None):
    """STEPS steps on this process's rows of the global batch; returns host params (and checks a
    checkpoint round trip when `workdir` is given)."""
    import jax

    from sddr_jax.training import checkpointing
    from sddr_jax import training as T

    net, loss, opt, batch = _setup()
    rows = GLOBAL_BATCH // process_count
    local = {k: v[process_index * rows:(process_index + 1) * rows] for k, v in batch.items()}
    params = net.init(jax.random.PRNGKey(0), batch["low"][:1], batch["high"][:1])["params"]
    tx = T.make_optimizer(opt, STEPS)
    placement = T.Placement(mode)
    state0 = T.create_train_state(params, tx, 0)
    state = placement.replicate(state0)
    step = T.make_train_step(net.apply, loss, None, tx, parallel=mode, mesh=placement.mesh)
    for _ in range(STEPS):
        state, _ = step(state, placement.shard(local))
    host = T.TrainState.to_host(placement.unreplicate(state))
    if workdir is not None:
        ck = checkpointing.Checkpointer(workdir, {"model": {"kind": "net"}}, save_every=1, keep=1)
        ck.save(STEPS, host)
        ck.wait()
        restored = ck.restore(T.TrainState.to_host(jax.device_get(state0)))
        ck.close()
        assert restored["step"] == STEPS
        for a, b in zip(jax.tree.leaves(restored["state"]), jax.tree.leaves(host)):
            np.testing.assert_array_equal(a, b)
    return host["params"]


def _worker(port: int, process_id: int, out: str) -> None:
    import jax
    import ml_collections

    from sddr_jax import training as T

    cfg = ml_collections.ConfigDict({"distributed": {
        "initialize": True, "coordinator_address": f"127.0.0.1:{port}", "num_processes": 2,
        "process_id": process_id, "local_device_ids": None}})
    T.maybe_initialize_distributed(cfg)
    assert jax.process_count() == 2 and jax.device_count() == 8 and jax.local_device_count() == 4
    results = {}
    for mode in T.PARALLEL_MODES:
        params = _train(mode, jax.process_index(), jax.process_count(),
                        workdir=os.path.join(out, f"ckpt_{mode}") if mode == "pmap" else None)
        flat = jax.tree_util.tree_flatten_with_path(params)[0]
        results.update({f"{mode}/{jax.tree_util.keystr(p)}": np.asarray(v) for p, v in flat})
    np.savez(os.path.join(out, f"params_{process_id}.npz"), **results)
    jax.distributed.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_four_devices_each(tmp_path):
    import jax

    port = _free_port()
    env = dict(os.environ)
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace("--xla_force_host_platform_device_count=8", "") + \
        " --xla_force_host_platform_device_count=4"
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, __file__, str(port), str(i), str(tmp_path)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=240)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, o in zip(procs, outputs):
        assert p.returncode == 0, o[-3000:]
    a = dict(np.load(tmp_path / "params_0.npz"))
    b = dict(np.load(tmp_path / "params_1.npz"))
    assert a.keys() == b.keys() and len(a) == 8
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])  # identical parameters on both processes
    # ...and the same as one process with 8 devices (the conftest's), pmap and shard_map alike.
    assert jax.device_count() == 8
    for mode in ("pmap", "shard_map"):
        ref = _train(mode, 0, 1)
        flat = jax.tree_util.tree_flatten_with_path(ref)[0]
        for p, v in flat:
            np.testing.assert_allclose(a[f"{mode}/{jax.tree_util.keystr(p)}"], v, atol=1e-6)
    assert (tmp_path / "ckpt_pmap" / "checkpoints" / str(STEPS) / "_CHECKPOINT_METADATA").exists()


if __name__ == "__main__":
    _worker(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3])
