"""Training: optimizer and schedules, the non-finite guard, pmap vs shard_map, and the real program on
`configs/synthetic.py:tiny` (loss falls; SIGKILL + resume is bit-identical; nothing half-written)."""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from sddr_jax import training as T
from sddr_jax.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ a tiny model and loss
class TinyNet(nn.Module):
    """Stands in for the Refiner: (low, high) -> map, with dropout to exercise the per-device rng."""

    rate: float = 0.0

    @nn.compact
    def __call__(self, low, high, train=False):
        x = jnp.concatenate([low, high], -1)
        x = nn.relu(nn.Conv(4, (3, 3))(x))
        x = nn.Dropout(self.rate, deterministic=not train)(x)
        return nn.Conv(1, (3, 3))(x)


def mse_loss(outputs, batch, labels, config):
    target = batch["depth"] if labels is None else labels["edge"]
    loss = jnp.mean((outputs - target) ** 2)
    return loss, {"mse": loss}


def _opt_config(**kw):
    base = dict(name="adamw", learning_rate=1e-2, weight_decay=0.01, b1=0.9, b2=0.999, eps=1e-8, schedule="step",
                decay_steps=100, decay_rate=0.99, warmup_steps=0, end_factor=0.0, grad_clip_norm=0.0,
                skip_nonfinite=True)
    base.update(kw)
    return ml_collections.ConfigDict(base)


def _batch(n=16, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.random((n, size, size, 1), dtype=np.float32) for k in ("low", "high", "depth")}


# ----------------------------------------------------------------------------------------- optimizer
def test_adamw_first_step_matches_closed_form():
    # Step 1 of AdamW: m_hat = g, v_hat = g^2, so p <- p - lr (g / (|g| + eps) + wd p) (decoupled decay).
    tx = T.make_optimizer(_opt_config(learning_rate=0.1, skip_nonfinite=False), 10)
    p = {"w": jnp.asarray([1.0, -2.0, 3.0])}
    g = {"w": jnp.asarray([0.5, 0.25, -4.0])}
    updates, _ = tx.update(g, tx.init(p), p)
    want = -0.1 * (np.asarray(g["w"]) / (np.abs(np.asarray(g["w"])) + 1e-8) + 0.01 * np.asarray(p["w"]))
    # float32: 1 - 0.999 and the bias corrections round at ~1e-5 relative.
    np.testing.assert_allclose(np.asarray(updates["w"]), want, rtol=2e-5)


def test_schedules():
    step = T.make_schedule(_opt_config(learning_rate=1e-4), 1000)
    for n in (0, 99, 100, 250, 1000):
        np.testing.assert_allclose(float(step(n)), 1e-4 * 0.99 ** (n // 100), rtol=1e-6)
    cos = T.make_schedule(_opt_config(learning_rate=1e-4, schedule="cosine", warmup_steps=10), 110)
    np.testing.assert_allclose([float(cos(0)), float(cos(10)), float(cos(60)), float(cos(110))],
                               [0.0, 1e-4, 0.5e-4, 0.0], atol=1e-10)
    with pytest.raises(UserError, match="optimizer.schedule"):
        T.make_schedule(_opt_config(schedule="linear"), 10)
    with pytest.raises(UserError, match="optimizer.name"):
        T.make_optimizer(_opt_config(name="sgd"), 10)


def test_nonfinite_update_is_skipped_and_counted():
    tx = T.make_optimizer(_opt_config(grad_clip_norm=1.0), 10)
    p = {"w": jnp.ones(3)}
    s = tx.init(p)
    u, s = tx.update({"w": jnp.asarray([1.0, jnp.nan, 0.0])}, s, p)
    np.testing.assert_array_equal(np.asarray(u["w"]), 0.0)
    assert T.nonfinite_counts(s) == (1, 1)
    u, s = tx.update({"w": jnp.asarray([1.0, 1.0, 0.0])}, s, p)
    assert np.all(np.isfinite(np.asarray(u["w"]))) and np.any(np.asarray(u["w"]) != 0)
    assert T.nonfinite_counts(s) == (0, 1)


def test_flat_optimizer_is_the_per_array_optimizer_on_one_vector():
    # optimizer.flatten (on in the tiny configs): the same clipped AdamW with skipping, run on the parameters
    # concatenated into one vector. Against the per-array optax chain on a tree of mixed shapes: the same
    # updates to float rounding (the global norm sums in another order), flat state arrays, the same skip of a
    # NaN gradient.
    rng = np.random.default_rng(0)

    def draw(shape, scale=1.0):
        return jnp.asarray(rng.normal(size=shape) * scale, jnp.float32)

    p = {"a": draw((3, 4)), "b": {"c": draw((5,)), "d": draw(())}}
    per_array = T.make_optimizer(_opt_config(grad_clip_norm=1.0), 10)
    flat = T.make_optimizer(_opt_config(grad_clip_norm=1.0, flatten=True), 10)
    s0, s1 = per_array.init(p), flat.init(p)
    assert {x.shape for x in jax.tree.leaves(s1.inner_state) if np.ndim(x)} == {(18,)}
    q0 = q1 = p
    for k in range(5):
        g = jax.tree.map(lambda x: draw(np.shape(x), k + 1), p)
        u0, s0 = per_array.update(g, s0, q0)
        u1, s1 = flat.update(g, s1, q1)
        for a, b in zip(jax.tree.leaves(u0), jax.tree.leaves(u1)):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-6, atol=1e-9)
        q0, q1 = optax.apply_updates(q0, u0), optax.apply_updates(q1, u1)
    u1, s1 = flat.update(jax.tree.map(lambda x: x * jnp.nan, p), s1, q1)
    assert all(np.all(np.asarray(x) == 0) for x in jax.tree.leaves(u1))
    assert T.nonfinite_counts(s1) == (1, 1)


# ------------------------------------------------------------------------------------- parallelism
def _run(mode, rate, steps=4, batch=None, donate_check=False):
    model = TinyNet(rate)
    batch = _batch() if batch is None else batch
    params = model.init(jax.random.PRNGKey(0), batch["low"][:1], batch["high"][:1])["params"]
    tx = T.make_optimizer(_opt_config(grad_clip_norm=1.0), steps)
    placement = T.Placement(mode)
    state = placement.replicate(T.create_train_state(params, tx, 0))
    step = T.make_train_step(model.apply, mse_loss, None, tx, parallel=mode, mesh=placement.mesh)
    losses = []
    for _ in range(steps):
        old = state
        state, metrics = step(state, placement.shard(batch))
        losses.append(placement.metrics(metrics)["loss"])
        if donate_check:
            assert jax.tree.leaves(old.params)[0].is_deleted()  # the state's buffers were donated
    return placement.unreplicate(state.params), losses, placement.unreplicate(state.step)


def test_pmap_and_shard_map_agree_on_8_devices():
    assert jax.device_count() == 8
    p_pmap, l_pmap, s_pmap = _run("pmap", 0.3, donate_check=True)
    p_smap, l_smap, s_smap = _run("shard_map", 0.3, donate_check=True)
    assert int(s_pmap) == int(s_smap) == 4
    np.testing.assert_allclose(l_pmap, l_smap, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(p_pmap), jax.tree.leaves(p_smap)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert l_pmap[-1] < l_pmap[0]


def test_switched_step_is_one_program_for_both_phases():
    # with_labels="switch": use_labels=False gives the L_gt-only step, True the step with labels, both from
    # one compiled program; aux entries only one branch has are zeros in the other.
    def loss(outputs, batch, labels, config):
        l, aux = mse_loss(outputs, batch, labels, config)
        return l, aux if labels is None else {**aux, "edge_mean": jnp.mean(labels["edge"])}

    model = TinyNet(0.3)
    batch = _batch()
    labels = {"edge": _batch(seed=1)["depth"] * 3.0}
    params = model.init(jax.random.PRNGKey(0), batch["low"][:1], batch["high"][:1])["params"]
    tx = T.make_optimizer(_opt_config(grad_clip_norm=1.0), 8)
    pl = T.Placement("shard_map")  # jit: its compiled-program cache can be counted
    kw = dict(parallel="shard_map", mesh=pl.mesh)
    ref = {flag: T.make_train_step(model.apply, loss, None, tx, with_labels=flag, **kw) for flag in (False, True)}
    switched = T.make_train_step(model.apply, loss, None, tx, with_labels="switch", **kw)
    flags = {f: pl.replicate(np.bool_(f)) for f in (False, True)}
    s_ref = pl.replicate(T.create_train_state(params, tx, 0))
    s_sw = pl.replicate(T.create_train_state(params, tx, 0))
    for flag in (False, False, True, True, False):
        args = (pl.shard(batch),) + ((pl.shard(labels),) if flag else ())
        s_ref, m_ref = ref[flag](s_ref, *args)
        s_sw, m_sw = switched(s_sw, pl.shard(batch), pl.shard(labels), flags[flag])
        m_ref, m_sw = pl.metrics(m_ref), pl.metrics(m_sw)
        np.testing.assert_allclose(m_sw["loss"], m_ref["loss"], rtol=1e-6)
        np.testing.assert_allclose(m_sw["edge_mean"], m_ref.get("edge_mean", 0.0), rtol=1e-6)
        assert (m_sw["edge_mean"] > 1.0) == flag  # the labels' mean is ~1.5; 0 when unused
    for a, b in zip(jax.tree.leaves(pl.unreplicate(s_ref.params)), jax.tree.leaves(pl.unreplicate(s_sw.params))):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert switched._cache_size() == 1


def test_data_parallel_equals_one_device_full_batch():
    # With equal per-device shares, the pmean of per-device gradients is the full-batch gradient.
    batch = _batch()
    p_par, losses, _ = _run("pmap", 0.0, steps=3, batch=batch)
    model = TinyNet(0.0)
    params = model.init(jax.random.PRNGKey(0), batch["low"][:1], batch["high"][:1])["params"]
    tx = T.make_optimizer(_opt_config(grad_clip_norm=1.0), 3)
    opt = tx.init(params)
    for _ in range(3):
        g = jax.grad(lambda p: mse_loss(model.apply({"params": p}, batch["low"], batch["high"]), batch, None, None)[0])(params)
        u, opt = tx.update(g, opt, params)
        params = optax.apply_updates(params, u)
    for a, b in zip(jax.tree.leaves(p_par), jax.tree.leaves(params)):
        np.testing.assert_allclose(a, np.asarray(b), atol=1e-6)


def test_placement_round_trips():
    for mode in T.PARALLEL_MODES:
        pl = T.Placement(mode)
        tree = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.int32(7)}
        back = pl.unreplicate(pl.replicate(tree))
        np.testing.assert_array_equal(back["a"], tree["a"])
        assert int(back["b"]) == 7
        b = _batch(16)
        np.testing.assert_array_equal(pl.gather(pl.shard(b)["low"]), b["low"])
        # empty entries (labels' "regions" with num_regions=0) keep their shape
        assert pl.gather(pl.shard({"r": np.zeros((16, 0, 5), bool)})["r"]).shape == (16, 0, 5)
        with pytest.raises(UserError, match="do not split over 8 local devices"):
            pl.shard(_batch(12))
    with pytest.raises(UserError, match="train.parallel"):
        T.Placement("pjit")


def test_load_config_overrides(tmp_path):
    c = T.load_config(str(REPO / "configs/synthetic.py") + ":tiny,gt_only",
                      ["--config.train.num_steps=9", "optimizer.learning_rate=1", "labels.schedule=[[2, 0.2]]"])
    assert c.train.num_steps == 9 and c.train.gt_only_steps == 6 and c.optimizer.learning_rate == 1.0
    assert c.data.image_size == 128 and c.labels.schedule == ((2, 0.2),)
    with pytest.raises(UserError, match="train.nope is not a key"):
        T.load_config(str(REPO / "configs/synthetic.py"), ["train.nope=1"])
    with pytest.raises(FileNotFoundError, match="no such file"):
        T.load_config(str(tmp_path / "missing.py"))
    p = T.load_config(str(REPO / "configs/paper.py"))
    assert (p.data.image_size, p.data.batch_size, p.optimizer.learning_rate, p.loss.w_grad, p.loss.w_mask) == (
        2048, 2, 1e-4, 0.5, 0.1)
    q = T.load_config(str(REPO / "configs/paper.py") + ":paper_loss")
    assert (q.loss.name, q.loss.lambda_grad, q.loss.lambda_fusion) == ("paper", 0.5, 0.1)
    # The paper's mixture: half natural-scene sets, half synthetic, equal shares inside a half.
    from sddr_jax.data.pipeline import mixture_of

    assert mixture_of(p) == [(name, None, 0.125) for name in (
        "holopix50k", "ibims1", "wsvd", "vdw", "tartanair", "irs", "unrealstereo4k", "mvs_synth")]
    assert mixture_of(T.load_config(str(REPO / "configs/paper.py") + ":single")) == []


# ----------------------------------------------------------------------- the real program (subprocess)
def _train_cmd(workdir, data_dir, *extra):
    return [sys.executable, "-m", "sddr_jax", "train", "--config", str(REPO / "configs/synthetic.py") + ":tiny",
            "--workdir", str(workdir), f"--config.data.data_dir={data_dir}", *extra]


@pytest.fixture(scope="module")
def tiny_env(tmp_path_factory):
    """Environment for subprocess runs: 8 CPU devices (inherited from conftest), one shared persistent
    compilation cache (the runs compile the same programs once), and the built `tiny` dataset."""
    root = tmp_path_factory.mktemp("train_tiny")
    env = dict(os.environ)
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(root / "jax_cache"))
    env.update(JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    data_dir = os.environ.get("SDDR_JAX_TEST_DATA_DIR") or str(root / "data")
    return env, data_dir, root


def _params(workdir):
    from sddr_jax.checkpoints import load_training_checkpoint

    params, _, step = load_training_checkpoint(workdir)
    return params, step


@pytest.mark.slow
def test_tiny_run_kill_and_resume_is_bit_identical(tiny_env):
    env, data_dir, root = tiny_env
    # 1. The uninterrupted run (it also builds the dataset and fills the compilation cache).
    a = root / "a"
    r = subprocess.run(_train_cmd(a, data_dir), env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    log = [json.loads(line) for line in (a / "train.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in log] == [1, 2, 3, 4, 5, 6]
    assert [rec["phase"] for rec in log] == [1, 1, 1, 2, 2, 2]
    # The loss falls during phase 1 (L_gt only; later phases add terms).
    assert log[2]["l_gt"] < log[0]["l_gt"]
    assert log[3]["l_local"] > 0 and all(np.isfinite(rec["loss"]) for rec in log)
    result = json.loads((a / "result.json").read_text())
    assert set(result["eval"]) == {"refined", "low", "high"}
    assert 0 < result["eval"]["refined"]["delta1"] <= 1
    # Every program ran as built ahead of its call, from shapes alone (nothing compiled twice).
    assert {k: v["fallback_calls"] for k, v in result["compile"].items()} == {"step": 0, "eval": 0, "labels": 0}, \
        result["compile"]

    # The checkpoint carries its model config (cross_iterations=2): refine and evaluate build that model.
    _tiny_checkpoint_through_the_cli(a, data_dir, root)

    # 2. The same run, killed with SIGKILL as soon as the step-4 checkpoint starts being written.
    b = root / "b"
    proc = subprocess.Popen(_train_cmd(b, data_dir), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
        ck = b / "checkpoints"
        if ck.is_dir() and any(p.name.startswith("4") for p in ck.iterdir()):
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    # Nothing half-written: every step directory is either finalised or an Orbax temporary directory,
    # and every JSON line is whole or is the one cut short (the resume drops it).
    for p in (b / "checkpoints").iterdir():
        assert p.name.isdigit() and (p / "_CHECKPOINT_METADATA").exists() or ".orbax-checkpoint-tmp" in p.name, p
    # 3. Resume: ends bit-identical to the uninterrupted run.
    r = subprocess.run(_train_cmd(b, data_dir), env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not [p for p in (b / "checkpoints").iterdir() if "tmp" in p.name]
    pa, sa = _params(a)
    pb, sb = _params(b)
    assert sa == sb == 6
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        np.testing.assert_array_equal(x, y)
    log_b = [json.loads(line) for line in (b / "train.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in log_b] == [1, 2, 3, 4, 5, 6]
    assert [rec["loss"] for rec in log_b] == [rec["loss"] for rec in log]
    resumed = json.loads((b / "result.json").read_text())["compile"]
    assert {k: v["fallback_calls"] for k, v in resumed.items()} == {"step": 0, "eval": 0, "labels": 0}, resumed
    assert all(v["error"] is None for v in resumed.values()), resumed
    # 4. An incompatible config is refused with a clear message (exit code 2).
    r = subprocess.run(_train_cmd(b, data_dir, "--config.model.cross_iterations=3"), env=env, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 2
    assert "incompatible config (model.cross_iterations: checkpoint 2, config 3)" in r.stderr


def _tiny_checkpoint_through_the_cli(workdir, data_dir, root):
    from sddr_jax import cli, io
    from sddr_jax.checkpoints import load_refiner
    from sddr_jax.inference.one_stage import refine_one_stage

    params, model_config = load_refiner(workdir)
    assert model_config["cross_iterations"] == 2
    rng = np.random.default_rng(0)
    low, high = rng.random((40, 56)).astype(np.float32), rng.random((80, 112)).astype(np.float32)
    io.write_depth(root / "low.npy", low)
    io.write_depth(root / "high.npy", high)
    out = root / "refined.npy"
    assert cli.main(["refine", "--checkpoint", str(workdir), "--low", str(root / "low.npy"), "--high",
                     str(root / "high.npy"), "--output", str(out), "--size", "128"]) == 0
    want = refine_one_stage(params, low, high, size=128, model_config=model_config)
    np.testing.assert_allclose(np.load(out), want, atol=1e-6)
    report = root / "eval_tiny"
    assert cli.main(["evaluate", "--checkpoint", str(workdir), "--dataset", "sddr_synthetic", "--data_dir",
                     str(data_dir), "--config", "tiny", "--size", "128", "--limit", "2", "--no-edge-metrics", "--simulate",
                     "--output", str(report)]) == 0
    summary = json.loads(report.with_name(report.name + ".json").read_text())["summary"]
    assert set(summary) == {"refined", "low", "high"} and 0 < summary["refined"]["delta1"] <= 1
    # A finished run answers at once: nothing is trained, evaluated or written again.
    import contextlib
    import io as _io

    files = {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()}
    out = _io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["train", "--config", str(REPO / "configs/synthetic.py") + ":tiny", "--workdir",
                         str(workdir), f"--config.data.data_dir={data_dir}"]) == 0
    assert "already trained to step 6 (train.num_steps); nothing to do" in out.getvalue()
    assert "refined" in out.getvalue()
    assert {p: p.stat().st_mtime_ns for p in workdir.rglob("*") if p.is_file()} == files
    # A finished run is not relabelled by a config with fewer steps.
    before = sorted(p.name for p in (workdir / "checkpoints").iterdir())
    assert cli.main(["train", "--config", str(REPO / "configs/synthetic.py") + ":tiny", "--workdir", str(workdir),
                     f"--config.data.data_dir={data_dir}", "--config.train.num_steps=4"]) == 2
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before
    assert json.loads((workdir / "result.json").read_text())["step"] == 6
    # ... nor by another schedule (here: where phase 1 ends), unless asked explicitly
    buf = _io.StringIO()
    with contextlib.redirect_stderr(buf):
        assert cli.main(["train", "--config", str(REPO / "configs/synthetic.py") + ":tiny", "--workdir",
                         str(workdir), f"--config.data.data_dir={data_dir}", "--config.train.num_steps=8",
                         "--config.train.gt_only_steps=5"]) == 2
    err = buf.getvalue()
    assert "another schedule (train.gt_only_steps: checkpoint 3, config 5)" in err and "allow_schedule_change" in err
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == before



def test_finished_demo_is_not_retrained(tmp_path, capsys):
    from sddr_jax import cli

    out = tmp_path / "demo_out"
    out.mkdir()
    (out / "metrics.md").write_text("| | refined (ours) |\n|---|---|\n| δ1 | **0.95** |\n")
    (out / "metrics.json").write_text(json.dumps({"step": 140, "eval": {"refined": {"delta1": 0.95}}}))
    assert cli.main(["demo", "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert "already trained to step 140; nothing was trained or evaluated again" in said
    assert "| δ1 | **0.95** |" in said
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "metrics.md"]


def test_demo_table_shows_the_phase1_model_beside_the_final_one(tmp_path):
    from sddr_jax.commands.demo import demo_table, phase1_eval
    from sddr_jax_configs import synthetic

    # The demo's config evaluates at the end of phase 1 (the model its self-distillation rounds start from).
    c = synthetic.get_config()
    assert 0 < c.train.gt_only_steps < c.train.num_steps and c.train.eval_every == c.train.gt_only_steps
    run = tmp_path / "run"
    run.mkdir()
    recs = [{"step": 90, "refined/delta1": 0.5, "refined/d3r": 0.09, "low/delta1": 0.4},
            {"step": 90, "refined/delta1": 0.91, "refined/d3r": 0.08, "low/delta1": 0.9},  # resumed: last wins
            {"step": 140, "refined/delta1": 0.95, "refined/d3r": 0.07}]
    (run / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + '{"step": 14')  # torn last line
    assert phase1_eval(run, 90) == {"delta1": 0.91, "d3r": 0.08}
    assert phase1_eval(run, 100) is None and phase1_eval(run, 0) is None and phase1_eval(tmp_path, 90) is None
    summary = {"low": {"delta1": 0.90, "d3r": 0.09}, "high": {"delta1": 0.92, "d3r": 0.05},
               "refined": {"delta1": 0.95, "d3r": 0.07}}
    table, shown = demo_table(summary, phase1_eval(run, 90), 90, "caption")
    assert list(shown) == ["low", "high", "gt_only", "refined"]
    assert "| metric | low input | high input | refined, L_gt only (step 90) | refined (ours) |" in table
    assert "| δ1 ↑ | 0.9000 | 0.9200 | 0.9100 | **0.9500** |" in table
    assert "| D3R ↓ | 0.0900 | **0.0500** | 0.0800 | 0.0700 |" in table
    table, shown = demo_table(summary, None, 90, "")
    assert list(shown) == ["low", "high", "refined"] and "L_gt only" not in table


def test_background_compile_runs_its_program(caplog):
    """A `BackgroundCompile` call runs the program built in its thread (nothing compiles at the call; pmap, as
    the training loop uses it), with its compiler options; without options that program is also the one a
    plain call of the function finds in JAX's cache. Another signature falls back to the function, counted."""
    import logging

    from sddr_jax.training.train import BackgroundCompile

    fn = jax.pmap(lambda x: jnp.tanh(x) @ x.T + 0.123)
    x = jnp.ones((1, 8, 8))
    spec = jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
    fast = BackgroundCompile(fn, spec, compiler_options={"xla_backend_optimization_level": 0})
    plain = BackgroundCompile(fn, x)
    plain.wait()
    fast.wait()  # else its thread may log its compilation inside the capture below (seen on a loaded machine)
    assert plain.error is None and plain.seconds > 0
    with jax.log_compiles(True), caplog.at_level(logging.WARNING, logger="jax"):
        caplog.clear()
        np.testing.assert_allclose(np.asarray(fast(x))[0], np.tanh(1.0) * 8 + 0.123, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(fn(x))[0], np.tanh(1.0) * 8 + 0.123, rtol=1e-6)
        assert not [r for r in caplog.records if "Finished XLA compilation" in r.getMessage()]
        assert fast.fallback_calls == 0
        np.testing.assert_allclose(np.asarray(fast(jnp.ones((1, 4, 4))))[0], np.tanh(1.0) * 4 + 0.123, rtol=1e-6)
        assert [r for r in caplog.records if "Finished XLA compilation" in r.getMessage()]
        assert fast.fallback_calls == 1
    failing = BackgroundCompile(jax.jit(lambda x: x @ x), jnp.ones((2, 3)))  # shape error, kept for the call
    failing.wait()
    assert failing.error is not None
    with pytest.raises(TypeError):
        failing(jnp.ones((2, 3)))
    assert failing.thread_error is not None and "TypeError" in failing.thread_error
    assert failing.fallback_calls == 1  # built in its thread, again at the call, then the plain call raised


def test_background_compile_survives_a_lazy_import_window_in_another_thread():
    """etils' `epy.lazy_imports()` (tensorflow_datasets imports inside one) replaces `builtins.__import__` for
    the whole process while it is open, so a trace running in a thread meanwhile gets lazy stubs for its own
    function-level imports and fails (the resumed run of the kill-and-resume test once ran its step through the
    fallback path this way). The build is redone at the first call, in the calling thread: the call runs the
    executable built ahead of it, and the first failure is kept for result.json."""
    from etils import epy

    from sddr_jax.training.train import BackgroundCompile

    fn = jax.jit(lambda x: jnp.sin(x) * 2.0 + 0.5)
    x = jnp.linspace(0.0, 1.0, 8)
    with epy.lazy_imports():
        job = BackgroundCompile(fn, x)
        job.wait()
    assert job.compiled is None and job.error is not None  # the window broke the thread's trace
    np.testing.assert_allclose(np.asarray(job(x)), np.sin(np.linspace(0.0, 1.0, 8)) * 2.0 + 0.5, rtol=1e-6)
    assert job.fallback_calls == 0 and job.compiled is not None and job.error is None
    assert job.thread_error is not None and "Traceback" in job.thread_error


@pytest.mark.parametrize("parallel", ["pmap", "shard_map"])
def test_early_compile_specs_are_the_first_calls_signature(parallel):
    """The step, the label pass and the evaluation are compiled from `early_compile_specs` before any parameter
    is drawn or data read; their signatures must be those of the loop's calls (else they are built twice)."""
    from sddr_jax.models.refiner import build_refiner
    from sddr_jax.training.config import load_config
    from sddr_jax.training.labels import label_options, label_predictor, label_shapes
    from sddr_jax.training.train import EVAL_KEYS, STEP_KEYS, _signature, early_compile_specs, label_extras

    config = load_config(str(REPO / "configs/synthetic.py") + ":tiny,edge_poor")
    model = build_refiner(config.model)
    tx = T.make_optimizer(config.optimizer, 6)
    placement = T.Placement(parallel)
    label_kwargs = dict(label_options(config), with_depth=False)
    kind, predictor = label_predictor(config)
    specs = early_compile_specs(config, model, tx, placement, ema=True, label_kwargs=label_kwargs,
                                label_predictor=(kind, predictor))
    params = T.initial_params(config, model, 0)
    state = placement.replicate(jax.device_get(T.create_train_state(params, tx, 0, ema=True)))
    rows, size = config.data.batch_size, config.data.image_size
    rng = np.random.default_rng(0)
    host = {"rgb": rng.random((rows, size, size, 3), np.float32), "valid": np.ones((rows, size, size, 1), bool),
            "key": rng.integers(0, 2**32, (rows, 2), dtype=np.uint32), "has_pred": np.zeros(rows, bool),
            **{k: rng.random((rows, size, size, 1), np.float32) for k in ("low", "high", "depth", "scene_depth")}}
    dev = placement.shard({k: host[k] for k in STEP_KEYS})
    placeholder = placement.shard({k: np.zeros(v.shape, v.dtype) for k, v in label_shapes(host, **label_kwargs).items()})
    assert _signature(specs["step"]) == _signature((state, dev, placeholder, placement.replicate(np.bool_(False))))
    inputs = {**dev, **placement.shard(label_extras(host, simulated=kind == "simulated"))}
    assert _signature(specs["labels"]) == _signature((state.params, inputs, placement.replicate(predictor)))
    ev_rows = config.eval.batch_size
    assert _signature(specs["eval"]) == _signature((state.params, placement.shard(
        {k: host[k][:ev_rows] for k in EVAL_KEYS})))
    plain = early_compile_specs(config, model, tx, placement, ema=False)
    assert set(plain) == {"step", "eval"} and len(plain["step"]) == 2 and plain["step"][0].ema_params is None


def test_metric_log_writes_tensorboard_without_importing_torch(tmp_path):
    """TensorBoard events are written (the scalar reads back) and tensorboardX's optional `import torch` is not
    paid (about 3 s where torch is installed); torch still imports afterwards."""
    code = f"""
import sys, pathlib
from sddr_jax.training.log import MetricLog
log = MetricLog(pathlib.Path({str(tmp_path)!r}), "train")
log.write(3, {{"loss": 0.25, "note": "x"}}, prefix="train/")
log.close()
print("torch" in sys.modules)
import struct
from tensorboardX.proto.event_pb2 import Event
(path,) = pathlib.Path({str(tmp_path / "tensorboard")!r}).iterdir()
data, scalars = path.read_bytes(), []
while data:  # TFRecord framing: length (8), its CRC (4), the record, its CRC (4)
    (n,) = struct.unpack("<Q", data[:8])
    event = Event.FromString(data[12:12 + n])
    data = data[16 + n:]
    scalars += [(event.step, v.simple_value) for v in event.summary.value if v.tag == "train/loss"]
print(scalars)
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["False", "[(3,", "0.25)]"]
