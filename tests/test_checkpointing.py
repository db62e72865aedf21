"""Checkpointing: round trip, keep-K, best-by-metric, incompatible configs, data-iterator state, temp dirs."""
import json
import logging
import os

import jax
import ml_collections
import numpy as np
import optax
import pytest

from sddr_jax.checkpoints import load_training_checkpoint
from sddr_jax.training import checkpointing as ckpt
from sddr_jax.errors import UserError


def _config(**model):
    return ml_collections.ConfigDict({
        "model": {"width": 4, **model},
        "optimizer": {"name": "adamw", "grad_clip_norm": 1.0, "skip_nonfinite": True, "learning_rate": 1e-4},
        "train": {"ema_decay": 0.0, "num_steps": 10},
    })


def _state(width=4, seed=0):
    rng = np.random.default_rng(seed)
    params = {"conv": {"kernel": rng.standard_normal((3, 3, 2, width)).astype(np.float32),
                       "bias": rng.standard_normal(width).astype(np.float32)}}
    tx = optax.apply_if_finite(optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-3)), 10)
    opt_state = jax.tree.map(np.asarray, tx.init(params))
    return {"step": np.int32(seed), "params": params, "opt_state": opt_state,
            "rng": np.asarray(jax.random.PRNGKey(seed))}


class _Iterator:
    """A stand-in for a grain iterator: get_state/set_state with a JSON-able dict."""

    def __init__(self):
        self.position = 0

    def get_state(self):
        return {"position": self.position}

    def set_state(self, state):
        self.position = state["position"]


def _assert_tree_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_keep_and_iterator(tmp_path, caplog):
    c = ckpt.Checkpointer(tmp_path, _config(), save_every=2, keep=2)
    it = _Iterator()
    states = {}
    for step in range(1, 8):
        it.position = 10 * step
        states[step] = _state(seed=step)
        c.maybe_save(step, lambda: states[step], data_iterator=it, teacher=states[step]["params"])
    c.wait()
    assert c.all_steps() == [4, 6]  # saved 2, 4, 6; keep the latest 2
    assert c.latest_step() == 6
    it2 = _Iterator()
    r = c.restore(_state(seed=99), data_iterator=it2, teacher_target=_state()["params"])
    assert r["step"] == 6 and it2.position == 60
    _assert_tree_equal(r["state"], states[6])
    _assert_tree_equal(r["teacher"], states[6]["params"])
    assert isinstance(r["state"]["opt_state"], optax.ApplyIfFiniteState)
    assert r["config"]["model"]["width"] == 4
    # Only finished steps exist; no temporary directories are left once the saves are done.
    names = sorted(os.listdir(tmp_path / "checkpoints"))
    assert names == ["4", "6"], names
    with caplog.at_level(logging.WARNING):
        params, config, step = load_training_checkpoint(tmp_path)
    assert not [r for r in caplog.records if r.name == "absl"], [r.getMessage() for r in caplog.records]
    assert config["model"]["width"] == 4
    assert step == 6
    _assert_tree_equal(params, states[6]["params"])
    c.close()


def test_incompatible_config_is_refused(tmp_path):
    c = ckpt.Checkpointer(tmp_path, _config(), save_every=1, keep=1)
    c.save(1, _state())
    c.close()
    c2 = ckpt.Checkpointer(tmp_path, _config(width=8), save_every=1, keep=1)
    with pytest.raises(UserError, match=r"model.width: checkpoint 4, config 8"):
        c2.restore(_state(width=8))
    # Same config, but a state of another shape: refused with the path of the differing array.
    c3 = ckpt.Checkpointer(tmp_path, _config(), save_every=1, keep=1)
    with pytest.raises(UserError, match=r"params/conv/bias: checkpoint shape \(4,\), new shape \(8,\)"):
        c3.restore(_state(width=8))
    # A change outside COMPAT_KEYS (e.g. the number of steps) is allowed.
    cfg = _config()
    cfg.train.num_steps = 99
    r = ckpt.Checkpointer(tmp_path, cfg, save_every=1, keep=1).restore(_state())
    assert r["step"] == 1


def test_best_by_metric(tmp_path):
    c = ckpt.Checkpointer(tmp_path, _config(), save_every=100, keep=1, best_metric="d3r", best_mode="min")
    for step, d3r in [(1, 0.5), (2, 0.3), (3, 0.4)]:
        c.save_best(step, _state(seed=step), {"d3r": d3r, "delta1": 0.9})
    c.wait()
    assert c.best_step() == 2
    r = c.restore(_state(), best=True)
    _assert_tree_equal(r["state"], _state(seed=2))
    with pytest.raises(UserError, match="best_metric 'd3r' is not among"):
        c.save_best(4, _state(), {"absrel": 0.1})
    c.close()


def test_temporary_directory_is_removed_and_bad_args(tmp_path):
    c = ckpt.Checkpointer(tmp_path, _config(), save_every=1, keep=3)
    c.save(1, _state())
    c.close()
    # What a kill during an asynchronous save leaves behind: a step directory that was never renamed.
    tmp = tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp-1234567"
    (tmp / "state").mkdir(parents=True)
    (tmp / "state" / "half_written").write_bytes(b"\0" * 10)
    c = ckpt.Checkpointer(tmp_path, _config(), save_every=1, keep=3)
    assert c.latest_step() == 1
    assert not tmp.exists()
    with pytest.raises(FileNotFoundError, match="no checkpoint for step 5"):
        c.restore(_state(), step=5)
    with pytest.raises(UserError, match="save_every"):
        ckpt.Checkpointer(tmp_path, _config(), save_every=0)
    with pytest.raises(FileNotFoundError, match="no checkpoint in"):
        ckpt.Checkpointer(tmp_path / "empty", _config()).restore(_state())


def test_config_differences_lists_each_key():
    saved = json.loads(_config().to_json())
    now = json.loads(_config(width=8, depth=2).to_json())
    assert ckpt.config_differences(saved, now) == [
        "model.depth: checkpoint '<absent>', config 2", "model.width: checkpoint 4, config 8"]


def test_config_differences_reads_a_key_added_later_as_its_old_value():
    """`model.upsample` appeared after checkpoints were written without it: those are align_corners refiners,
    so resuming them with the default config is allowed and with the other grid is refused."""
    saved = {"model": {"backbone": "b0"}}
    assert ckpt.config_differences(saved, {"model": {"backbone": "b0", "upsample": "align_corners"}}) == []
    assert ckpt.config_differences(saved, {"model": {"backbone": "b0", "upsample": "stride_aligned"}}) == [
        "model.upsample: checkpoint 'align_corners', config 'stride_aligned'"]
    # Checkpoints from before `optimizer.flatten` hold per-array optimizer state: they resume with the option
    # off (the default), and a config with it on is refused with a message naming the key.
    saved = {"optimizer": {"name": "adamw"}}
    assert ckpt.config_differences(saved, {"optimizer": {"name": "adamw", "flatten": False}}) == []
    assert ckpt.config_differences(saved, {"optimizer": {"name": "adamw", "flatten": True}}) == [
        "optimizer.flatten: checkpoint False, config True"]
