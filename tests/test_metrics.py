"""Tests of sddr_jax.metrics (docs/method.md §9): depth metrics, aggregation, Middlebury GT, boundary F1, D3R / ORD."""
import math

import jax
import numpy as np
import pytest

from sddr_jax import io
from sddr_jax.eval import metrics
from sddr_jax.errors import UserError


def _official_errors(gt, pred):
    """numpy port of the official script's compute_global_errors (float64)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return _official_errors_raw(gt, pred)


def _official_errors_raw(gt, pred):
    thresh = np.maximum(gt / pred, pred / gt)
    return {"abs_rel": np.mean(np.abs(gt - pred) / gt), "sq_rel": np.mean((gt - pred) ** 2 / gt),
            "rmse": np.sqrt(np.mean((gt - pred) ** 2)),
            "log10": np.mean(np.abs(np.log10(gt) - np.log10(pred))),
            "delta1": (thresh < 1.25).mean(), "delta2": (thresh < 1.25 ** 2).mean(),
            "delta3": (thresh < 1.25 ** 3).mean()}


def _f(d):
    return {k: float(v) for k, v in d.items()}


def test_hand_computed_small_case():
    gt = np.array([[1.0, 2.0], [4.0, 8.0]], np.float32)
    pred = np.array([[1.0, 2.0], [2.0, 10.0]], np.float32)
    m = _f(metrics.depth_metrics(pred, gt, align="none"))
    assert m["abs_rel"] == pytest.approx((0.5 + 0.25) / 4)
    assert m["sq_rel"] == pytest.approx((4 / 4 + 4 / 8) / 4)
    assert m["rmse"] == pytest.approx(math.sqrt(2.0))
    assert m["log10"] == pytest.approx((math.log10(2) + math.log10(10 / 8)) / 4, rel=1e-5)
    assert (m["delta1"], m["delta2"], m["delta3"]) == (0.5, 0.75, 0.75)  # ratios 1, 1, 2, 1.25


def test_identity_and_affine_alignment():
    rng = np.random.RandomState(0)
    gt = rng.uniform(1.0, 10.0, (16, 20)).astype(np.float32)
    m = _f(metrics.depth_metrics(gt, gt))
    assert m["delta1"] == 1.0 and m["abs_rel"] == pytest.approx(0.0, abs=1e-6)
    m = _f(metrics.depth_metrics(0.3 * gt - 2.0, gt))  # affine: zero after least-squares alignment
    assert m["abs_rel"] == pytest.approx(0.0, abs=1e-5) and m["delta1"] == 1.0 and m["rmse"] < 1e-4
    m = _f(metrics.depth_metrics(5.0 * gt, gt, align="median"))
    assert m["abs_rel"] == pytest.approx(0.0, abs=1e-6)
    m = _f(metrics.depth_metrics(2.0 / gt + 0.5, gt, space="disparity"))  # affine in disparity
    assert m["abs_rel"] == pytest.approx(0.0, abs=1e-5) and m["delta1"] == 1.0


def test_matches_official_polyfit_path():
    rng = np.random.RandomState(1)
    gt = rng.uniform(1.0, 30.0, (24, 24))
    valid = rng.rand(24, 24) > 0.2
    pred = 0.1 * gt + rng.normal(0, 0.05, gt.shape)
    coeffs = np.polyfit(pred[valid], gt[valid], deg=1)
    ref = _official_errors(gt[valid], np.polyval(coeffs, pred)[valid])
    got = _f(metrics.depth_metrics(pred.astype(np.float32), gt.astype(np.float32), valid))
    for k in ref:
        assert got[k] == pytest.approx(ref[k], rel=1e-4, abs=1e-6), k
    # disparity mode: fit to 1/gt, clip at 0, invert
    coeffs = np.polyfit(pred[valid], 1.0 / gt[valid], deg=1)
    al = np.polyval(coeffs, pred)
    al[al < 0] = 0
    with np.errstate(divide="ignore"):
        ref = _official_errors(gt[valid], 1.0 / al[valid])
    got = _f(metrics.depth_metrics(pred.astype(np.float32), gt.astype(np.float32), valid, space="disparity"))
    for k in ref:
        assert got[k] == pytest.approx(ref[k], rel=1e-3, abs=1e-6, nan_ok=True), k


def test_nonfinite_gt_masked_and_empty_mask():
    rng = np.random.RandomState(2)
    gt = rng.uniform(1.0, 5.0, (8, 8)).astype(np.float32)
    pred = (gt + rng.normal(0, 0.1, gt.shape)).astype(np.float32)
    bad = gt.copy()
    bad[0, :3] = [np.nan, np.inf, -1.0]
    valid = np.ones_like(gt, bool)
    valid[0, :3] = False
    a = _f(metrics.depth_metrics(pred, bad))
    b = _f(metrics.depth_metrics(pred, gt, valid))
    for k in a:
        assert a[k] == pytest.approx(b[k], rel=1e-5), k
    e = _f(metrics.depth_metrics(pred, gt, np.zeros_like(valid)))
    assert all(math.isnan(v) for v in e.values())
    assert metrics.aggregate([e, b])["abs_rel"] == pytest.approx(b["abs_rel"])


def test_jit_vmap_and_batch_agree():
    rng = np.random.RandomState(3)
    gt = rng.uniform(1.0, 5.0, (3, 8, 8)).astype(np.float32)
    pred = (2 * gt + rng.normal(0, 0.2, gt.shape)).astype(np.float32)
    plain = [_f(metrics.depth_metrics(p, g)) for p, g in zip(pred, gt)]
    jitted = jax.jit(metrics.depth_metrics_batch)(pred[..., None], gt[..., None])
    for i in range(3):
        for k in metrics.METRIC_KEYS:
            assert float(jitted[k][i]) == pytest.approx(plain[i][k], rel=1e-5, abs=1e-7)


def test_shape_errors():
    with pytest.raises(UserError, match="same shape"):
        metrics.depth_metrics(np.ones((4, 4)), np.ones((4, 5)))
    with pytest.raises(UserError, match="valid"):
        metrics.depth_metrics(np.ones((4, 4)), np.ones((4, 4)), np.ones((3, 4), bool))
    with pytest.raises(UserError, match="align"):
        metrics.depth_metrics(np.ones((4, 4)), np.ones((4, 4)), align="mean")
    with pytest.raises(UserError, match="2-D"):
        metrics.depth_metrics(np.ones((2, 4, 4)), np.ones((2, 4, 4)))


def test_aggregate_official_nan_and_zero_handling():
    rows = [{"abs_rel": 0.1, "delta1": 0.0}, {"abs_rel": float("nan"), "delta1": 0.5},
            {"abs_rel": 0.0, "delta1": 0.7}, {"abs_rel": 0.3, "delta1": float("nan")}]
    agg = metrics.aggregate(rows)
    assert agg["abs_rel"] == pytest.approx(0.2) and agg["delta1"] == pytest.approx(0.6)
    assert math.isnan(metrics.aggregate([{"x": float("nan")}])["x"])


CALIB = ("cam0=[1000 0 500; 0 1000 300; 0 0 1]\ncam1=[1000 0 520; 0 1000 300; 0 0 1]\n"
         "doffs=0\nbaseline=98\nwidth=3\n")


def test_middlebury_uint8_wrap_and_float_path():
    calib = io.parse_middlebury_calib(CALIB)
    assert calib["baseline"] == "98"
    disp = np.array([[100.0, 98000.0 / 25.7, np.inf]], np.float32)  # depths 980, 25.7, 0
    depth, valid = metrics.middlebury_gt_depth(disp, calib)
    np.testing.assert_array_equal(depth, [[212.0, 25.0, 0.0]])
    np.testing.assert_array_equal(valid, [[True, True, False]])
    depth_f, valid_f = metrics.middlebury_gt_depth(disp, calib, legacy_uint8_gt=False)
    np.testing.assert_allclose(depth_f, [[980.0, 25.7, 0.0]], rtol=1e-6)
    assert valid_f.tolist() == [[True, True, False]]
    np.testing.assert_array_equal(metrics.uint8_wrap([256.0, 511.9, 3.99]), [0, 255, 3])
    flipped, _ = metrics.middlebury_gt_depth(np.stack([disp[0], disp[0][::-1]]), calib, flip=True)
    np.testing.assert_array_equal(flipped[0], [0.0, 25.0, 212.0])
    with pytest.raises(UserError, match="doffs"):
        metrics.middlebury_gt_depth(disp, {"cam0": "[1 0 0]", "baseline": "1"})


def test_middlebury_metrics_resizes_and_aligns():
    calib = io.parse_middlebury_calib(CALIB)
    disp = np.tile(np.linspace(500.0, 1000.0, 16, dtype=np.float32), (12, 1))  # depth 98..196 (< 256)
    gt, _ = metrics.middlebury_gt_depth(disp, calib)
    pred = np.repeat(np.repeat(gt, 2, 0), 2, 1) * 0.5 + 3.0  # affine, twice the size
    m = metrics.middlebury_metrics(pred, disp, calib)
    assert m["delta1"] == 1.0 and m["abs_rel"] < 0.01


def test_boundary_f1():
    gt = np.ones((12, 12))
    gt[3:9, 3:9] = 0.5  # a near square: occlusion boundaries in all four directions
    assert metrics.boundary_f1(gt, gt) == pytest.approx(1.0)
    assert metrics.boundary_f1(3.0 * gt, gt) == pytest.approx(1.0)  # scale-invariant
    shifted = np.roll(gt, 1, axis=1)
    # left/right boundaries move by one pixel (no match), top/bottom ones overlap on 5 of 6 pixels
    r = p = 0.25 * (0 + 5 / 6 + 0 + 5 / 6)
    assert metrics.boundary_f1(shifted, gt) == pytest.approx(2 * r * p / (r + p))
    assert metrics.boundary_f1(np.ones((12, 12)), gt) == 0.0
    # a weak square (ratio 1.1) is seen only by the thresholds below 1.1: F1 = 1 there, 0 above
    weak = np.ones((12, 12))
    weak[3:9, 3:9] = 1 / 1.1
    t = np.linspace(1.05, 1.25, 10)
    assert metrics.boundary_f1(weak, gt) == pytest.approx((t[t < 1.1] / t.sum()).sum())
    # Depth Pro quirk kept: directions without any GT boundary count as 0 (a single step scores 0.25)
    step = np.ones((10, 10))
    step[:, 5:] = 2.0
    assert metrics.boundary_f1(step, step) == pytest.approx(0.25)
    with pytest.raises(UserError):
        metrics.boundary_f1(np.ones((3, 3)), np.ones((3, 4)))


def test_d3r_routine_by_hand_each_pair_once():
    gt = np.array([[1.0, 2.0, 0.0]])
    est = np.array([[1.0, 1.0, 5.0]])
    centres = np.array([[0, 0], [0, 1], [0, 2]])
    neighbours = [[1, 2], [0, 2], [0, 1]]
    err, conf = metrics.d3r_routine(gt, est, centres, neighbours, 0.1, 0.01)
    assert (err, conf) == (1, 1)  # (0,1): |ord(1,2) - ord(1,1)| = |-1 - 0|; pairs with gt = 0 skipped


def test_boost_metrics_identity_and_reversal():
    yy, xx = np.mgrid[0:48, 0:48]
    gt = 2.0 + (xx // 12) + 0.5 * (yy // 16)  # a staircase of depth plateaus
    res = metrics.boost_edge_metrics(gt, gt, pred_space="depth", n_segments=200)
    assert res["d3r"] == 0.0 and res["ord_boost"] == 0.0 and res["d3r_pairs"] > 10
    rev = metrics.boost_edge_metrics(-gt, gt, pred_space="depth", n_segments=200)
    assert rev["d3r"] > 1.5 and rev["ord_boost"] > 1.0  # reversed order: |1 - (-1)| = 2 on most pairs
    disp_pred = 1.0 / gt  # a disparity prediction follows Boost's inversion chain
    assert metrics.ord_boost(disp_pred, gt, n_segments=200) == pytest.approx(0.0, abs=0.05)
    c, nb, _ = metrics.superpixel_pairs(gt, n_segments=50)
    assert all(i in nb[j] for i in range(len(nb)) for j in nb[i])  # symmetric 4-adjacency


def test_d3r_outcomes_closed_form():
    yy, xx = np.mgrid[0:48, 0:48]
    gt = 2.0 + (xx // 12) + 0.5 * (yy // 16)
    kw = dict(pred_space="depth", n_segments=200)
    same = metrics.d3r_outcomes(gt, gt, **kw)
    assert same["pairs"] > 10 and (same["agree"], same["flat"], same["reversed"]) == (same["pairs"], 0, 0)
    assert 3.0 < same["distance_sum"] / same["pairs"] < 12.0  # 200 segments of ~11 px²: neighbours ~3-12 px apart
    flat = metrics.d3r_outcomes(np.full_like(gt, 3.0), gt, **kw)  # a constant map orders nothing: all flat
    assert flat["flat"] == flat["pairs"] == same["pairs"]
    rev = metrics.d3r_outcomes(100.0 - gt, gt, **kw)  # depth mirrored: every order reversed
    assert rev["reversed"] == rev["pairs"] == same["pairs"]
    assert metrics.d3r(100.0 - gt, gt, **kw) == pytest.approx(2.0)


def test_d3r_pair_errors_are_the_pairs_d3r_averages():
    yy, xx = np.mgrid[0:48, 0:48]
    gt = 2.0 + (xx // 12) + 0.5 * (yy // 16)
    kw = dict(pred_space="depth", n_segments=200)
    rev = metrics.d3r_pair_errors(100.0 - gt, gt, **kw)
    assert len(rev["error"]) > 10 and np.all(rev["error"] == 2)
    # every counted pair differs by more than 10 % in the protocol's GT (here GT depth rescaled to [0, 1])
    assert np.all(rev["gt_ratio"] > 1.1)
    a, b = rev["centre_a"], rev["centre_b"]
    assert np.all(np.abs(a - b).sum(-1) > 0) and a.min() >= 0 and a.max() < 48
    noisy = gt + np.random.default_rng(0).normal(0.0, 0.4, gt.shape)
    got = metrics.d3r_pair_errors(noisy, gt, **kw)
    assert 0.0 < got["error"].mean() < 2.0
    assert got["error"].mean() == pytest.approx(metrics.d3r(noisy, gt, **kw), abs=1e-12)
    o = metrics.d3r_outcomes(noisy, gt, **kw)
    assert (o["flat"], o["reversed"]) == (int(np.sum(got["error"] == 1)), int(np.sum(got["error"] == 2)))


def test_boost_metrics_score_the_pairs_of_boosts_loop():
    # boost_edge_metrics scores the counted pairs (computed once per GT) with array operations; d3r_routine
    # is the loop of Boost's D3R.m. They agree exactly, for neighbour lists and for random lists with
    # repeated and self-referring entries (ORD_boost's draws have both).
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:64, 0:64]
    gt = 2.0 + (xx // 9) + 0.7 * (yy // 13) + 0.05 * rng.random((64, 64))
    gt[rng.random((64, 64)) < 0.03] = 0.0  # invalid pixels
    for pred_space in ("depth", "disparity"):
        for noise in (0.0, 0.3, 3.0):
            pred = gt + noise * rng.normal(size=gt.shape)
            pts = metrics.boost_points(pred, gt, pred_space=pred_space, n_segments=300)
            assert any(i in r or len(set(r)) < 3 for i, r in enumerate(pts["random"]))
            got = metrics.boost_edge_metrics(pred, gt, pred_space=pred_space, n_segments=300)
            e1, n1 = metrics.d3r_routine(pts["gt_depth"], pts["est"], pts["centres"], pts["neighbours"], 0.1, 0.01)
            e2, n2 = metrics.d3r_routine(pts["gt_depth"], pts["est"], pts["centres"], pts["random"], 0.0, 0.03)
            assert n1 > 50 and n2 > 50
            assert (got["d3r"], got["d3r_pairs"], got["ord_boost"], got["ord_pairs"]) == (e1 / n1, n1, e2 / n2, n2)


def test_boost_ground_truth_part_is_cached_per_gt_and_options():
    rng = np.random.default_rng(5)
    gt = 2.0 + rng.random((40, 40)).round(1)
    pred = gt + 0.1 * rng.normal(size=gt.shape)
    a = metrics.boost_points(pred, gt, n_segments=100)
    b = metrics.boost_points(2.0 * pred, gt, n_segments=100)
    assert a["centres"] is b["centres"] and a["est"] is not b["est"]  # one segmentation, two predictions
    assert not a["centres"].flags.writeable and not a["d3r_pairs"].flags.writeable
    # Another GT (one pixel changed) or other options: computed anew, not read from the cache.
    gt2 = gt.copy()
    gt2[20, 20] += 5.0
    assert metrics.boost_points(pred, gt2, n_segments=100)["centres"] is not a["centres"]
    assert metrics.boost_points(pred, gt, n_segments=60)["centres"].shape[0] < a["centres"].shape[0]
    # The values are those of a fresh computation (the cache cleared).
    metrics._GT_CACHE.entries.clear()
    fresh = metrics.boost_points(2.0 * pred, gt, n_segments=100)
    for k in ("gt_depth", "centres", "d3r_pairs", "ord_pairs", "est"):
        np.testing.assert_array_equal(fresh[k], b[k])
    assert len(metrics._GT_CACHE.entries) <= metrics._GT_CACHE.size


def test_ord_ranking_fixed_seed_and_invariance():
    rng = np.random.RandomState(4)
    yy, xx = np.mgrid[0:32, 0:32]
    gt = (2.0 + (xx > 15) + 0.5 * (yy > 20) + 0.05 * rng.rand(32, 32)).astype(np.float32)
    a = metrics.ord_ranking(gt, gt)
    assert a == metrics.ord_ranking(gt, gt)  # fixed seed
    assert metrics.ord_ranking(3.0 * gt + 1.0, gt) == pytest.approx(a, rel=1e-4)  # aligned first
    assert metrics.ord_ranking(np.ascontiguousarray(gt[:, ::-1]), gt) > a + 0.02  # mirrored: wrong order
    assert 0.0 <= a < math.log(2.0)
