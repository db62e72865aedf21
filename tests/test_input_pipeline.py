"""Input pipeline: sddr_synthetic -> tfds.data_source -> grain -> batches; exact resume (grain state, Orbax)."""
import sys

import cv2
import jax
import numpy as np
import pytest

from sddr_jax.data import pipeline as ip
from sddr_jax.errors import UserError
from sddr_jax_datasets import common
from sddr_jax_datasets.sddr_synthetic import sddr_synthetic_dataset_builder as synth

S = 64


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 12-scene sddr_synthetic build (64x64, one process) read back with the tfds data source."""
    data_dir = tmp_path_factory.mktemp("tfds")
    builder = synth.Builder(data_dir=str(data_dir), num_workers=1,
                            config=synth.SyntheticConfig(name="pytest", size=S, num_train=12, num_test=4))
    builder.download_and_prepare()
    return builder.as_data_source(split="train")


def _record(name, rgb, depth, low=b"", high=b""):
    return {"name": name.encode(), "rgb": common.encode_png(rgb), "depth": depth.astype(np.float32),
            "low": low, "high": high}


def _batches(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k])


def test_synthetic_streams_with_contract(source):
    assert len(source) == 12
    (batch,) = _batches(ip.make_dataset(source, image_size=S, global_batch_size=4, seed=0, simulate=False,
                                        shard=(1, 0)), 1)
    assert set(batch) == {"rgb", "low", "high", "depth", "valid", "has_pred"}  # no simulation: no "key"
    assert batch["has_pred"].dtype == np.bool_ and not batch["has_pred"].any()
    shapes = {"rgb": (4, S, S, 3), "low": (4, S, S, 1), "high": (4, S, S, 1), "depth": (4, S, S, 1),
              "valid": (4, S, S, 1)}
    for k, shape in shapes.items():
        assert batch[k].shape == shape, k
    assert batch["rgb"].dtype == np.float32 and 0 <= batch["rgb"].min() and batch["rgb"].max() <= 1
    assert batch["valid"].dtype == np.bool_ and batch["valid"].all()  # synthetic depth is dense
    assert batch["depth"].min() >= 1.0
    assert "tensorflow" not in sys.modules


def test_eval_mode_is_the_resized_record(source):
    (batch,) = _batches(ip.make_dataset(source, image_size=32, global_batch_size=2, seed=0, train=False,
                                        simulate=False, shard=(1, 0)), 1)
    for i in range(2):
        rec = ip.decode_record(source[i])  # eval keeps the source order
        rgb = cv2.resize(rec["rgb"], (32, 32), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255
        np.testing.assert_allclose(batch["rgb"][i], rgb, atol=1e-6)
        np.testing.assert_array_equal(batch["depth"][i, ..., 0],
                                      cv2.resize(rec["depth"], (32, 32), interpolation=cv2.INTER_NEAREST))


def test_seeded_shuffle_and_process_shards(source):
    kw = dict(image_size=S, global_batch_size=4, simulate=False)
    a = _batches(ip.make_dataset(source, seed=3, shard=(1, 0), **kw), 3)
    _assert_same(a, _batches(ip.make_dataset(source, seed=3, shard=(1, 0), **kw), 3))
    b = _batches(ip.make_dataset(source, seed=4, shard=(1, 0), **kw), 1)
    assert not np.array_equal(a[0]["depth"], b[0]["depth"])
    # Two processes see disjoint halves of the records (whole-image eval batches identify each record).
    seen = []
    for p in range(2):
        ds = ip.make_dataset(source, image_size=S, global_batch_size=2, seed=0, train=False, simulate=False,
                             shard=(2, p))
        seen.append({arr.tobytes() for batch in ds for arr in batch["depth"]})
    assert len(seen[0]) == len(seen[1]) == 6 and not seen[0] & seen[1]


def test_flip_moves_rgb_and_depth_together():
    rgb = np.zeros((S, S, 3), np.uint8)
    rgb[:, :10] = 255
    depth = np.full((S, S), 5.0, np.float32)
    depth[:, :10] = 1.0
    aug = ip.AugmentConfig(crop_scale=(1.0, 1.0), flip_prob=1.0, brightness=0, contrast=0, saturation=0,
                           gamma=(1.0, 1.0))
    (batch,) = _batches(ip.make_dataset([_record("a", rgb, depth)], image_size=S, global_batch_size=1,
                                        augment=aug, simulate=False, shard=(1, 0)), 1)
    np.testing.assert_array_equal(batch["depth"][0, :, -10:, 0], 1.0)
    np.testing.assert_array_equal(batch["depth"][0, :, :-10, 0], 5.0)
    np.testing.assert_array_equal(batch["rgb"][0, :, -10:], 1.0)
    np.testing.assert_array_equal(batch["rgb"][0, :, :-10], 0.0)


def test_precomputed_predictions_are_used_and_normalised():
    rgb = np.zeros((32, 48, 3), np.uint8)
    depth = np.ones((32, 48), np.float32)
    depth[0, 0] = 0  # invalid pixel
    low = np.arange(16 * 24, dtype=np.uint16).reshape(16, 24) * 7 + 100
    high = np.tile(np.arange(48, dtype=np.uint8), (32, 1)) + 10
    rec = _record("a", rgb, depth, common.encode_png(low), common.encode_png(high))
    (batch,) = _batches(ip.make_dataset([rec], image_size=16, global_batch_size=1, train=False,
                                        shard=(1, 0)), 1)
    exp_low = cv2.resize(low.astype(np.float32), (16, 16), interpolation=cv2.INTER_NEAREST)
    exp_low = (exp_low - exp_low.min()) / (exp_low.max() - exp_low.min())
    np.testing.assert_allclose(batch["low"][0, ..., 0], exp_low, atol=1e-7)
    assert batch["high"].min() == 0 and batch["high"].max() == 1
    assert not batch["valid"][0, 0, 0, 0] and batch["valid"].sum() == 16 * 16 - 1


def test_corrupt_record_raises_or_is_counted():
    good = _record("good", np.zeros((S, S, 3), np.uint8), np.ones((S, S), np.float32))
    bad = dict(good, name=b"bad", rgb=b"garbage")
    kw = dict(image_size=S, global_batch_size=1, train=False, simulate=False, shard=(1, 0))
    with pytest.raises(UserError, match="record bad rgb: corrupt PNG.*skip_corrupt"):
        list(ip.make_dataset([good, bad], **kw))
    counter = ip.SkipCounter()
    out = list(ip.make_dataset([good, bad, good], skip_corrupt=True, skip_counter=counter, **kw))
    assert len(out) == 2 and counter.count == 1 and "record bad" in counter.reasons[0]


def test_bad_arguments(source, tmp_path):
    with pytest.raises(UserError, match="multiple of the process count"):
        ip.make_dataset(source, image_size=S, global_batch_size=3, shard=(2, 0), simulate=False)
    with pytest.raises(UserError, match="crop_scale"):
        ip.make_dataset(source, image_size=S, global_batch_size=2, simulate=False, shard=(1, 0),
                        augment=ip.AugmentConfig(crop_scale=(0.0, 1.0)))
    with pytest.raises(UserError, match="not built.*sddr-jax datasets build sddr_synthetic"):
        ip.data_source("sddr_synthetic", tmp_path, "train", "tiny")


# --- the simulated predictor and exact resume (one jit compile shared by these tests) ---------------------

@pytest.fixture(scope="module")
def simulated(source):
    pytest.importorskip("sddr_jax.noise")
    return ip.make_dataset(source, image_size=S, global_batch_size=4, seed=5, shard=(1, 0))


def test_simulated_predictions(simulated, source):
    (batch,) = _batches(simulated, 1)
    for k in ("low", "high"):
        assert batch[k].dtype == np.float32 and batch[k].shape == (4, S, S, 1)
        np.testing.assert_allclose(batch[k].min(axis=(1, 2, 3)), 0, atol=1e-6)
        np.testing.assert_allclose(batch[k].max(axis=(1, 2, 3)), 1, atol=1e-6)
    # The predictions follow the ground truth: strongly correlated with depth.
    c = np.corrcoef(batch["high"][0].ravel(), batch["depth"][0].ravel())[0, 1]
    assert abs(c) > 0.5
    # Per-example keys: an example's noise does not depend on the rest of its batch.
    sim = ip.make_simulator(5, 0)
    low0, high0, key0 = sim(np.repeat(batch["depth"][:1], 4, axis=0), np.zeros(4, np.uint32))
    np.testing.assert_array_equal(low0[0], batch["low"][0])
    np.testing.assert_array_equal(high0[0], batch["high"][0])
    # each example carries its key (for the label pass): fold_in(fold_in(key(seed), process), stream index)
    np.testing.assert_array_equal(key0[0], batch["key"][0])
    want = jax.random.key_data(jax.random.fold_in(jax.random.fold_in(jax.random.key(5), 0), 0))
    np.testing.assert_array_equal(batch["key"][0], np.asarray(want))
    assert len({tuple(k) for k in batch["key"]}) == 4


def test_iterator_state_resumes_exactly(simulated):
    it = iter(simulated)
    for _ in range(2):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(3)]  # crosses the epoch boundary (12 records, batch 4)
    fresh = iter(simulated)
    fresh.set_state(state)
    _assert_same([next(fresh) for _ in range(3)], expected)


def test_orbax_checkpoint_of_the_iterator(simulated, tmp_path):
    import grain
    import orbax.checkpoint as ocp

    it = iter(simulated)
    next(it)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(1, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    expected = [next(it) for _ in range(2)]
    fresh = iter(simulated)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.restore(1, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    _assert_same([next(fresh) for _ in range(2)], expected)


def test_test_split_does_not_depend_on_the_training_count(tmp_path):
    """`s256` (1,000 training scenes) is scored on tiny's 32 test scenes: the test split is fixed by size and
    count alone, so runs on either build compare on the same held-out images."""
    cfgs = {c.name: c for c in synth.Builder.BUILDER_CONFIGS}
    assert (cfgs["s256"].size, cfgs["s256"].num_test) == (cfgs["tiny"].size, cfgs["tiny"].num_test)
    assert cfgs["s256"].num_train > cfgs["tiny"].num_train
    splits = []
    for name, num_train in (("few", 2), ("more", 5)):
        b = synth.Builder(data_dir=str(tmp_path / name), num_workers=1,
                          config=synth.SyntheticConfig(name=name, size=32, num_train=num_train, num_test=3))
        b.download_and_prepare()
        test = b.as_data_source(split="test")
        splits.append(sorted((r["name"], r["depth"].tobytes(), r["rgb"]) for r in (test[i] for i in range(len(test)))))
        assert len(b.as_data_source(split="train")) == num_train
    assert splits[0] == splits[1]


def test_edge_poor_depth_closed_form():
    # A step at column 8 of a 16-wide map, factor 4: the area average is exactly [1, 1, 3, 3] per row, and
    # OpenCV's bilinear upsampling (half-pixel centres, src = (x + 0.5) / 4 - 0.5, clamped) gives a ramp.
    d = np.where(np.arange(16) < 8, 1.0, 3.0).astype(np.float32)[None].repeat(8, 0)
    out = ip.edge_poor_depth(d, 4)
    small = np.array([1.0, 1.0, 3.0, 3.0])
    src = np.clip((np.arange(16) + 0.5) / 4 - 0.5, 0, 3)
    want = small[np.floor(src).astype(int)] * (1 - src % 1) + small[np.minimum(np.floor(src).astype(int) + 1, 3)] * (src % 1)
    np.testing.assert_allclose(out, np.broadcast_to(want, (8, 16)), atol=1e-6)
    assert out[0, 6] == pytest.approx(1.25) and out[0, 9] == pytest.approx(2.75)  # the edge spreads over 8 px
    # constant maps are unchanged; invalid pixels stay what they were and do not leak into their neighbours
    np.testing.assert_allclose(ip.edge_poor_depth(np.full((12, 12, 1), 2.5, np.float32), 4), 2.5, atol=1e-6)
    holes = np.full((8, 8), 2.0, np.float32)
    holes[2, 3], holes[5, 5] = 0.0, np.nan
    out = ip.edge_poor_depth(holes, 2)
    assert out[2, 3] == 0.0 and np.isnan(out[5, 5])
    np.testing.assert_allclose(out[np.isfinite(holes) & (holes > 0)], 2.0, atol=1e-6)
    np.testing.assert_array_equal(ip.edge_poor_depth(d, 1), d)
    with pytest.raises(UserError, match="factor"):
        ip.edge_poor_depth(d, 0)


def test_edge_poor_gt_degrades_only_the_target(source):
    """The edge-poor GT option changes `depth` only: same crops, and the simulated predictor still reads the
    sharp scene (`scene_depth`), so low/high/key are those of a run without it."""
    kw = dict(image_size=S, global_batch_size=4, seed=5, shard=(1, 0))
    (plain,) = _batches(ip.make_dataset(source, **kw), 1)
    (poor,) = _batches(ip.make_dataset(source, edge_poor=(1.0, 4), **kw), 1)
    (none,) = _batches(ip.make_dataset(source, edge_poor=(0.0, 4), **kw), 1)
    for k in ("rgb", "low", "high", "valid", "key"):
        np.testing.assert_array_equal(poor[k], plain[k])
    np.testing.assert_array_equal(poor["scene_depth"], plain["depth"])
    for i in range(4):
        np.testing.assert_allclose(poor["depth"][i], ip.edge_poor_depth(plain["depth"][i], 4), atol=1e-6)
    assert np.abs(poor["depth"] - plain["depth"]).max() > 0.1  # the synthetic scenes have depth edges
    np.testing.assert_array_equal(none["depth"], plain["depth"])
    np.testing.assert_array_equal(none["scene_depth"], plain["depth"])
    with pytest.raises(UserError, match="edge_poor"):
        ip.make_dataset(source, edge_poor=(1.5, 4), **kw)


def test_batch_spec_is_the_batches_layout(source):
    """`batch_spec` (what the training step is compiled for before any data is read) is the layout of real
    batches: training (simulated, edge-poor) and held-out, every key."""
    kw = dict(image_size=S, global_batch_size=4, seed=5, shard=(1, 0))
    for ds in (ip.make_dataset(source, edge_poor=(0.5, 4), **kw), ip.make_dataset(source, train=False, **kw)):
        (batch,) = _batches(ds, 1)
        spec = ip.batch_spec(S, 4, tuple(batch))
        assert {k: (v.shape, np.dtype(v.dtype)) for k, v in spec.items()} == {
            k: (v.shape, v.dtype) for k, v in batch.items()}
    with pytest.raises(UserError, match="unknown key.*'name'"):
        ip.batch_spec(S, 4, ("rgb", "name"))


def _mixture_sources():
    """Two in-memory sources told apart by their depth: A = 1.0 + i / 100 (6 records), B = 3.0 + i / 100 (4)."""
    def recs(base, n, tag):
        return [_record(f"{tag}{i}", np.zeros((8, 8, 3), np.uint8), np.full((8, 8), base + i / 100, np.float32))
                for i in range(n)]
    return recs(1.0, 6, "a"), recs(3.0, 4, "b")


def test_mixture_draws_in_proportion_and_each_source_in_its_own_shuffled_epochs():
    a, b = _mixture_sources()
    kw = dict(image_size=8, global_batch_size=4, seed=3, simulate=False, shard=(1, 0), num_threads=1,
              augment=ip.AugmentConfig.none())
    batches = _batches(ip.make_dataset([a, b], weights=[3.0, 1.0], **kw), 24)
    values = np.concatenate([bt["depth"][:, 0, 0, 0] for bt in batches])  # 96 examples
    from_a = values[values < 2]
    from_b = values[values > 2]
    assert len(from_a) == 72 and len(from_b) == 24  # 3 : 1
    # Every epoch of a source holds each of its records once, in an order that changes between epochs.
    ids_a = np.rint((from_a - 1.0) * 100).astype(int)
    ids_b = np.rint((from_b - 3.0) * 100).astype(int)
    for ids, n in ((ids_a, 6), (ids_b, 4)):
        epochs = ids[:len(ids) // n * n].reshape(-1, n)
        assert all(sorted(e) == list(range(n)) for e in epochs)
        assert len({tuple(e) for e in epochs}) > 1
    # Source i is shuffled with seed + i: source 0's order is the one-source stream's.
    alone = _batches(ip.make_dataset(a, **kw), 3)
    np.testing.assert_array_equal(ids_a[:12], np.rint((np.concatenate([bt["depth"][:, 0, 0, 0] for bt in alone])
                                                       - 1.0) * 100).astype(int))


def test_mixture_resumes_exactly_and_checks_its_arguments():
    a, b = _mixture_sources()
    kw = dict(image_size=8, global_batch_size=2, seed=0, simulate=False, shard=(1, 0), num_threads=1)
    ds = ip.make_dataset([a, b], weights=[1.0, 2.0], **kw)
    it = iter(ds)
    for _ in range(5):
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(4)]
    fresh = iter(ds)
    fresh.set_state(state)
    _assert_same([next(fresh) for _ in range(4)], expected)
    with pytest.raises(UserError, match="one weight per source"):
        ip.make_dataset([a, b], weights=[1.0], **kw)
    with pytest.raises(UserError, match="positive finite"):
        ip.make_dataset([a, b], weights=[1.0, 0.0], **kw)
    with pytest.raises(UserError, match="train=True"):
        ip.make_dataset([a, b], weights=[1.0, 1.0], train=False, **kw)
    with pytest.raises(UserError, match="source 1 of the mixture has 1 records, fewer than the 2 processes"):
        ip.make_dataset([a, b[:1]], weights=[1.0, 1.0], **dict(kw, shard=(2, 0)))


def test_mixture_config_is_checked():
    import ml_collections

    def cfg(mixture):
        return ml_collections.ConfigDict({"data": {"mixture": mixture}})

    assert ip.mixture_of(cfg(())) == []
    assert ip.mixture_of(cfg((("tartanair", "", 1), ("sddr_synthetic", "tiny", 0.5)))) == [
        ("tartanair", None, 1.0), ("sddr_synthetic", "tiny", 0.5)]
    with pytest.raises(UserError, match=r"data.mixture\[0\]: unknown dataset 'nyu'"):
        ip.mixture_of(cfg((("nyu", "", 1.0),)))
    with pytest.raises(UserError, match=r"data.mixture\[1\] \(hrwsi\): weight must be a positive number"):
        ip.mixture_of(cfg((("tartanair", "", 1.0), ("hrwsi", "", -1.0))))
    with pytest.raises(UserError, match=r"data.mixture\[0\]: expected a \(dataset name, config, weight\) triple"):
        ip.mixture_of(cfg((("tartanair", 1.0),)))
