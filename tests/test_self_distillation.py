"""Self-distillation as the paper defines it (docs/method.md §6, §7, §10): labels from the teacher's own
coarse-to-fine pass over the student's inputs, the simulated predictor behind both, no frame artefacts,
fresh ranking pairs."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sddr_jax import noise
from sddr_jax.data import pipeline
from sddr_jax.data.scenes import generate_scene
from sddr_jax.errors import UserError
from sddr_jax.eval import metrics
from sddr_jax.inference.predictors import SimulatedPredictor
from sddr_jax.training import labels as L
from sddr_jax.training.config import default_config

S = 128
PRED = dict(low_res=32, high_res=64, train_res=32, texture=0.1)  # the synthetic configs' ratios at S = 128


def copy_high(params, low, high):
    del params, low
    return high


@pytest.fixture(scope="module")
def scenes():
    sc = [generate_scene(seed, S) for seed in range(4)]
    depth = np.stack([s.depth for s in sc])[..., None].astype(np.float32)
    rgb = np.stack([s.rgb for s in sc]).astype(np.float32) / 255.0
    return depth, rgb


@pytest.fixture(scope="module")
def student_batch(scenes):
    """A batch as the data pipeline makes it: the simulated low/high maps and each example's key."""
    depth, rgb = scenes
    sim = pipeline.make_simulator(3, 0, **PRED)
    low, high, key = sim(depth, np.arange(len(depth), dtype=np.uint32), rgb)
    return {"rgb": rgb, "low": low, "high": high, "depth": depth, "valid": np.ones_like(depth, bool), "key": key}


def _config(**labels):
    c = default_config()
    c.data.image_size = S
    c.data.predictor = dict(PRED)
    c.labels.size = 128
    c.labels.update(labels)
    return c


def _labels(params, batch, refiner_fn, schedule, config=None):
    c = config or _config()
    opts = L.label_options(c)
    opts.update(refiner_fn=refiner_fn, schedule=schedule)
    _, predictor = L.label_predictor(c)
    fn = jax.jit(functools.partial(L.label_body, axis_name=None, with_depth=True, **opts))
    return jax.device_get(fn(params, batch, predictor))


def test_example_key_reproduces_the_students_maps(student_batch):
    """The pipeline's low/high maps are the simulated predictor with the example's own key (folds 0, 1):
    the label pass, which re-keys the same predictor per window from that key, sees the same predictor."""
    b = student_batch
    keys = jax.random.wrap_key_data(b["key"])
    image = np.concatenate([b["depth"], b["rgb"]], -1)
    opts = L.simulated_options(_config())
    for i in (0, 3):
        pred = SimulatedPredictor.create(jax.random.fold_in(keys[i], 1), **opts)
        high = noise.minmax_normalize(noise._resize(pred(image[i:i + 1], PRED["high_res"])[..., 0], (S, S)),
                                      axis=(-2, -1))
        np.testing.assert_allclose(np.asarray(high)[0], b["high"][i, ..., 0], atol=1e-5)
    # examples are independent: another index gives another draw
    assert np.abs(b["high"][0] - b["high"][1]).max() > 1e-3


def test_windows_add_detail_with_the_copy_high_stand_in(student_batch):
    """With a refiner that copies its high input, the label depth's boundary F1 rises at each window step
    (the windows' predictions are at more output pixels per image pixel than the global high map)."""
    b = student_batch
    f1 = []
    for k in range(3):
        lab = _labels({}, b, copy_high, L.OFFICIAL_SCHEDULE[:k])
        f1.append(np.mean([metrics.boundary_f1(np.asarray(metrics.align_prediction(lab["depth"][i, ..., 0],
                                                                                     b["depth"][i, ..., 0],
                                                                                     b["valid"][i, ..., 0])),
                                               b["depth"][i, ..., 0]) for i in range(len(b["depth"]))]))
    assert f1[1] > f1[0] + 0.02 and f1[2] >= f1[1] - 0.005, f1


def test_mask_edge_frame_share_and_no_frame_step(student_batch):
    """The 2-px border holds at most twice its pixel share of mask_edge; G_0 has no step at the frame."""
    b = student_batch
    lab = _labels({}, b, copy_high, L.OFFICIAL_SCHEDULE)
    m = lab["mask_edge"][..., 0]
    ring = np.ones(m.shape[1:], bool)
    ring[2:-2, 2:-2] = False
    share = (m & ring).sum() / m.sum()
    assert share <= 2 * ring.mean(), (share, ring.mean())
    ramp = np.tile(np.linspace(0, 1, S, dtype=np.float32), (S, 1))[None, ..., None]
    g0 = _labels({}, {**b, "low": np.repeat(ramp, 4, 0), "high": np.repeat(ramp, 4, 0)}, copy_high, ())["edge"]
    np.testing.assert_allclose(g0[0, :, 1:-1, 0], g0[0, 5, 5, 0], rtol=1e-4)  # uniform, frame rows included
    assert g0[0, 0, 0, 0] == pytest.approx(g0[0, 5, 0, 0], rel=1e-5)


@pytest.mark.parametrize("loss,with_depth", [("official", False), ("paper", True)])
def test_label_shapes_match_the_traced_label_pass(student_batch, loss, with_depth):
    """Phase 1's placeholder labels (`label_shapes`, no trace) have exactly the traced label pass's shapes."""
    from sddr_jax.losses import default_loss_config

    c = _config()
    c.loss = default_loss_config(loss)
    opts = dict(L.label_options(c), refiner_fn=copy_high, schedule=L.OFFICIAL_SCHEDULE[:1])
    _, predictor = L.label_predictor(c)
    spec = {k: jax.ShapeDtypeStruct(np.shape(v), np.asarray(v).dtype) for k, v in student_batch.items()}
    traced = jax.eval_shape(functools.partial(L.label_body, axis_name=None, with_depth=with_depth, **opts), {},
                            spec, predictor)
    got = L.label_shapes(student_batch, with_depth=with_depth, **opts)
    assert {k: (v.shape, v.dtype) for k, v in got.items()} == {k: (v.shape, v.dtype) for k, v in traced.items()}
    assert got["regions"].shape == (4, 4 if loss == "paper" else 0, S, S)


def test_labels_come_from_the_inputs_not_the_ground_truth(student_batch):
    """Global pass on the student's maps: replacing the GT (the predictor's input) changes the windows only,
    replacing the student's maps changes G_0."""
    b = student_batch
    base = _labels({}, b, copy_high, ())
    other_gt = _labels({}, {**b, "depth": b["depth"][::-1]}, copy_high, ())
    np.testing.assert_array_equal(base["edge"], other_gt["edge"])
    other_maps = _labels({}, {**b, "high": b["high"][::-1]}, copy_high, ())
    np.testing.assert_allclose(other_maps["edge"], base["edge"][::-1], atol=1e-6)


def test_edge_poor_gt_label_windows_look_at_the_scene(student_batch):
    """With edge-poor training GT (data.edge_poor_gt) the label pass's simulated predictor reads the sharp
    scene (`scene_depth`, through `train.label_extras`), not the degraded target: the labels equal those of
    the sharp batch and differ from windows predicted on the degraded depth."""
    from sddr_jax.training.train import STEP_KEYS, label_extras

    b = student_batch
    poor = np.stack([pipeline.edge_poor_depth(d, 4) for d in b["depth"]])
    host = {**b, "depth": poor, "scene_depth": b["depth"]}
    fed = {**{k: host[k] for k in STEP_KEYS}, **label_extras(host)}
    assert set(fed) == set(STEP_KEYS) | {"key"}
    sharp = _labels({}, b, copy_high, ((2, 0.2),))
    np.testing.assert_array_equal(_labels({}, fed, copy_high, ((2, 0.2),))["edge"], sharp["edge"])
    degraded = _labels({}, {**b, "depth": poor}, copy_high, ((2, 0.2),))
    assert np.abs(degraded["edge"] - sharp["edge"]).max() > 1e-2


def test_stored_predictions_need_a_named_predictor(student_batch):
    c = _config()
    with pytest.raises(UserError, match="stores the base predictor's low/high maps"):
        L.check_label_source(c, {**student_batch, "has_pred": np.array([True, False])})
    L.check_label_source(c, {**student_batch, "has_pred": np.zeros(4, bool)})
    with pytest.raises(UserError, match="simulation keys"):
        L.check_label_source(c, {k: v for k, v in student_batch.items() if k != "key"})
    with pytest.raises(UserError, match="predictor_weights"):
        L.label_predictor(_config(predictor="depth-anything-v2-small"))
    with pytest.raises(UserError, match="labels.predictor"):
        L.label_predictor(_config(predictor="zoe"))


def test_simulated_high_has_no_tiling_lattice(scenes):
    """The residual of the simulated high map has no step lattice at stride multiples: its horizontal
    gradient on those columns stays within 2x its mean (the old fixed, hard tiling gave ~19x)."""
    depth, _ = scenes
    d = np.repeat(depth[..., 0], 4, 0)  # 16 draws
    eps = np.asarray(noise.local_inconsistency_noise(d, jax.random.key(0), k_a=0.3, k_b=0.15, patch=32))
    e = np.asarray(noise.depth_edges(d))
    g = np.abs(np.diff(eps, axis=-1))
    ok = ~(e[..., 1:] | e[..., :-1])
    col = (g * ok).sum(axis=(0, 1)) / np.maximum(ok.sum(axis=(0, 1)), 1)
    at_stride = col[15::16]  # differences across columns 16k - 1 | 16k
    assert at_stride.mean() <= 2.0 * col.mean(), (at_stride.mean(), col.mean())
    fixed = np.asarray(noise.local_inconsistency_noise(d, jax.random.key(0), k_a=0.3, k_b=0.15, patch=32,
                                                       random_phase=False))
    assert np.abs(fixed - eps).max() > 1e-3  # the phase is drawn per map


def test_texture_option_copies_rgb_edges_off_depth_edges(scenes):
    depth, rgb = scenes
    key = jax.random.key(1)
    plain = np.asarray(noise.simulated_predict(depth, 64, key, train_res=32))
    tex = np.asarray(noise.simulated_predict(depth, 64, key, rgb=rgb, train_res=32, texture=0.2))
    grey = jax.image.resize(jnp.asarray(rgb @ np.array([0.299, 0.587, 0.114], np.float32)), (4, 64, 64), "linear")
    diff = (tex - plain)[..., 0]
    hp = np.asarray(noise._highpass(grey, 1.5))
    assert np.corrcoef(diff.ravel(), hp.ravel())[0, 1] > 0.5  # what was added is the image's texture
    with pytest.raises(UserError, match="rgb"):
        noise.simulated_predict(depth, 64, key, train_res=32, texture=0.2)
    low = np.asarray(noise.simulated_predict(depth, 32, key, rgb=rgb, train_res=32, texture=0.2))
    np.testing.assert_array_equal(low, np.asarray(noise.simulated_predict(depth, 32, key, train_res=32)))


def test_ranking_pairs_are_fresh_per_step_and_device():
    """train_step hands the loss `batch["rng"]` folded from the step and the device index, so the ranking
    loss draws new point pairs at every step and on every device (it used key(0) for all)."""
    import optax

    from sddr_jax.training import train as T
    from sddr_jax.training.parallel import Placement

    def loss_fn(outputs, batch, labels, config):
        u = jax.random.uniform(batch["rng"], ())
        return jnp.mean(outputs) * 0.0 + u, {"u": u}

    def apply_fn(variables, low, high, train, rngs):
        return variables["params"]["w"] * low

    tx = optax.sgd(0.0)
    placement = Placement("pmap")
    step = T.make_train_step(apply_fn, loss_fn, None, tx, parallel="pmap")
    n = placement.num_local_devices
    batch = {"low": np.ones((n, 4, 4, 1), np.float32), "high": np.ones((n, 4, 4, 1), np.float32)}
    state = placement.replicate(T.create_train_state({"w": jnp.ones(())}, tx, 7))
    us = []
    for k in range(2):
        state, m = step(state, placement.shard(batch))
        us.append(float(placement.metrics(m)["u"]))
    rng = jax.random.PRNGKey(7)
    for k, u in enumerate(us):  # the mean over devices of each device's own draw
        want = np.mean([float(jax.random.uniform(jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(
            rng, k), d), 0x52414E4B), ())) for d in range(n)])
        assert u == pytest.approx(want, rel=1e-6)
    assert us[0] != us[1]


def test_teacher_refreshes_only_at_round_starts():
    from sddr_jax.training.train import starts_label_round

    starts = [s for s in range(400) if starts_label_round(s, 200, 100)]
    assert starts == [200, 300]
    assert [s for s in range(7) if starts_label_round(s, 3, 2)] == [3, 5]


def test_labels_equal_under_pmap_and_shard_map(student_batch):
    """The label body gives the same labels when each device labels its own examples under pmap or shard_map
    (each example keeps its own key whatever device it lands on)."""
    from sddr_jax.training.parallel import Placement, parallelize

    c = _config()
    opts = L.label_options(c)
    opts.update(refiner_fn=copy_high, schedule=((2, 0.2),))
    _, predictor = L.label_predictor(c)
    b = {k: np.concatenate([v, v[::-1]]) for k, v in student_batch.items()}  # 8 examples, one per device
    out = {}
    for mode in ("pmap", "shard_map"):
        placement = Placement(mode)
        fn = parallelize(functools.partial(L.label_body, **opts), ("replicated", "sharded", "replicated"),
                         "sharded", parallel=mode, mesh=placement.mesh)
        res = fn(placement.replicate({}), placement.shard(b), placement.replicate(predictor))
        out[mode] = {k: placement.gather(res[k]) for k in ("edge", "mask_edge", "mask_flat")}
    for k in ("edge", "mask_edge", "mask_flat"):
        np.testing.assert_allclose(np.asarray(out["pmap"][k]), np.asarray(out["shard_map"][k]), atol=1e-6)
    single = _labels({}, b, copy_high, ((2, 0.2),))  # and equal to one call on the whole batch
    np.testing.assert_allclose(np.asarray(out["pmap"]["edge"]), single["edge"], atol=1e-5)


def test_model_predictor_runs_on_the_rgb_crops(student_batch):
    """kind="model": the windows' high inputs come from the predictor on the RGB crops (no keys needed)."""
    from sddr_jax.inference.predictors import ModelPredictor

    def grey(params, x):
        return params["w"] * x.mean(-1)

    pred = ModelPredictor(params={"w": jnp.float32(1.0)}, apply_fn=grey, mean=None, std=None)
    c = _config()
    opts = L.label_options(c)
    opts.update(refiner_fn=copy_high, schedule=((2, 0.2),), kind="model", texture=False)
    b = {k: v for k, v in student_batch.items() if k != "key"}
    lab = jax.device_get(jax.jit(functools.partial(L.label_body, axis_name=None, with_depth=True, **opts))(
        {}, b, pred))
    # with a copy-high refiner the label depth inside a window is the grey crop aligned (scale of either sign)
    # to the low input: an affine map of the image's grey level
    w = L.window_grid(S, S, 2, 0.2)[0]
    m = w.height // 4  # the centre, where the feather mask is ~1
    crop = lab["depth"][0, w.y0 + m:w.y1 - m, w.x0 + m:w.x1 - m, 0]
    g = b["rgb"][0, w.y0 + m:w.y1 - m, w.x0 + m:w.x1 - m].mean(-1)
    assert abs(np.corrcoef(crop.ravel(), g.ravel())[0, 1]) > 0.97
