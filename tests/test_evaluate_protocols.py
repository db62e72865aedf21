"""Named evaluation protocols (middlebury2014, eth3d, booster) and `--report paper` (docs/method.md §9)."""
import dataclasses

import numpy as np
import pytest

from sddr_jax.errors import UserError
from sddr_jax.eval import evaluate as E
from sddr_jax.eval import metrics as M


def _depth(h=12, w=16, lo=1.0, hi=6.0):
    y, x = np.mgrid[0:h, 0:w]
    return lo + (hi - lo) * (x + w * y) / (h * w - 1)


def _scores(pred, gt, valid, protocol):
    return E.protocol_image_metrics(pred, gt, valid, protocol, edge_metrics=False)


@pytest.mark.parametrize("name, unit", [("eth3d", 1.0), ("middlebury2014", 1000.0), ("booster", 1.0)])
def test_affine_disparity_scores_perfectly(name, unit):
    protocol = E.PROTOCOLS[name]
    gt, valid = E.ground_truth(_depth() * unit)
    pred = 3.0 * unit / gt + 0.5  # an affine map of the GT disparity: what the disparity-space fit undoes
    m = _scores(pred, gt, valid, protocol)
    assert m["abs_rel"] == pytest.approx(0.0, abs=1e-5)
    assert m["delta1"] == 1.0 and m["rmse"] == pytest.approx(0.0, abs=1e-3 * unit)


def test_depth_affine_is_not_disparity_affine():
    gt, valid = E.ground_truth(_depth())
    m = _scores(3.0 * gt + 0.5, gt, valid, E.PROTOCOLS["eth3d"])  # affine in depth, not in disparity
    assert m["abs_rel"] > 1e-3
    assert _scores(3.0 * gt + 0.5, gt, valid, E.PROTOCOLS["sddr"])["abs_rel"] == pytest.approx(0.0, abs=1e-5)


def test_depth_ranges_exclude_exactly_the_expected_pixels():
    gt = np.array([[0.0, 0.0005, 0.001, 0.5], [9.99, 10.0, 10.5, 79.9], [80.0, 90.0, np.inf, np.nan]])
    _, valid = E.protocol_ground_truth(gt, E.PROTOCOLS["eth3d"])  # 1 mm < d < 80 m
    np.testing.assert_array_equal(valid, [[0, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0]])
    booster = dataclasses.replace(E.PROTOCOLS["booster"], eval_scale=1.0)  # 1 mm <= d <= 10 m
    _, valid = E.protocol_ground_truth(gt, booster)
    np.testing.assert_array_equal(valid, [[0, 0, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])
    _, valid = E.protocol_ground_truth(gt * 1000.0, E.PROTOCOLS["middlebury2014"])  # mm: 1 mm < d < 80 m
    np.testing.assert_array_equal(valid, [[0, 0, 0, 1], [1, 1, 1, 1], [0, 0, 0, 0]])


def test_out_of_range_gt_is_left_out_of_the_fit_and_the_scores():
    gt = _depth(lo=1.0, hi=6.0)
    gt[0, :4] = 95.0  # beyond ETH3D's 80 m cap; its prediction is garbage
    pred = 2.0 / gt + 0.1
    pred[0, :4] = 50.0
    g, valid = E.protocol_ground_truth(gt, E.PROTOCOLS["eth3d"])
    assert valid.sum() == gt.size - 4
    m = _scores(pred, g, valid, E.PROTOCOLS["eth3d"])
    assert m["abs_rel"] == pytest.approx(0.0, abs=1e-5) and m["delta1"] == 1.0


def test_booster_clips_the_aligned_depth_by_hand():
    gt = np.array([[1.0, 2.0, 8.0]])
    valid = np.ones_like(gt, bool)
    p = dataclasses.replace(E.PROTOCOLS["booster"], align="none", eval_scale=1.0)
    # disparity 1, 1/2, 1/20 -> depth 1, 2, 20 -> clipped to 1, 2, 10 (the 10 m cap)
    m = _scores(np.array([[1.0, 0.5, 0.05]]), gt, valid, p)
    assert m["abs_rel"] == pytest.approx((2.0 / 8.0) / 3.0, rel=1e-6)  # 1/12
    assert m["delta1"] == pytest.approx(2.0 / 3.0)  # 10 / 8 = 1.25 is not < 1.25
    assert m["rmse"] == pytest.approx(np.sqrt(4.0 / 3.0), rel=1e-6)
    out = E.protocol_aligned(np.array([[0.0, -1.0, np.nan]]), gt, valid, p)
    np.testing.assert_allclose(out, [[10.0, 10.0, 1e-3]])  # inf -> max, negative disparity -> inf -> max, NaN -> min


def test_booster_evaluates_at_quarter_resolution_nearest():
    gt = np.arange(1, 65, dtype=np.float64).reshape(8, 8) / 8.0  # 0.125 .. 8 m
    g, valid = E.protocol_ground_truth(gt, E.PROTOCOLS["booster"])
    assert g.shape == (2, 2)
    np.testing.assert_array_equal(g, gt[::4, ::4])  # OpenCV nearest at fx = fy = 0.25 picks rows/cols 0, 4
    assert valid.all()


def test_evaluate_dataset_with_a_protocol_end_to_end():
    blocks = np.array([[1.0, 2.0, 3.0, 4.0], [2.0, 3.0, 20.0, 5.0], [1.5, 2.5, 3.5, 4.5], [6.0, 7.0, 8.0, 9.0]])
    depth = np.kron(blocks, np.ones((4, 4))).astype(np.float32)  # 16 x 16; quarter resolution = blocks
    ex = {"name": "scene_im0", "depth": depth, "low": np.ones((4, 4), np.float32), "high": np.ones((4, 4), np.float32),
          "rgb": np.zeros((16, 16, 3), np.uint8)}

    def refine(low, high, hw):
        assert hw == (4, 4)
        return 3.0 / blocks + 1.0

    out = E.evaluate_dataset([ex], decode=lambda x: x, refine=refine, edge_metrics=False, baselines=False,
                             protocol=E.PROTOCOLS["booster"], dataset="booster")
    m = out["summary"]["refined"]
    assert m["abs_rel"] == pytest.approx(0.0, abs=1e-5) and m["delta1"] == 1.0  # 20 m block excluded
    assert m["abs_rel"] == out["per_image"][0]["refined"]["abs_rel"]  # nanmean keeps the 0


def test_nanmean_counts_zero_where_the_sddr_mean_skips_it():
    rows = [{"name": "a", "p": {"abs_rel": 0.0}}, {"name": "b", "p": {"abs_rel": 0.2}},
            {"name": "c", "p": {"abs_rel": float("nan")}}]
    assert E.summarize(rows, "nanmean")["p"]["abs_rel"] == pytest.approx(0.1)
    assert E.summarize(rows)["p"]["abs_rel"] == pytest.approx(0.2)


def test_sddr_protocol_is_the_previous_behaviour():
    gt, valid = E.ground_truth(_depth())
    pred = 0.7 * gt + 0.2 + 0.05 * np.sin(gt)
    a = _scores(pred, gt, valid, E.PROTOCOLS["sddr"])
    b = M.image_metrics(pred, gt, valid, edge_metrics=False, align="lsq", space="depth")
    assert a == b
    assert E.protocol_for("multiscopic").name == "sddr" and E.protocol_for("eth3d").name == "eth3d"
    assert E.protocol_for("middlebury2021").superpixel_scale == 0.2
    with pytest.raises(UserError, match="unknown"):
        E.protocol_for("eth3d", "kitti")


# ------------------------------------------------------------------------------------------------
# --report paper


def _rows(text):
    return {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in text.splitlines() if line.startswith("| ") and not line.startswith("| row")}


SUMMARY = {"refined": {"delta1": 0.8623, "abs_rel": 0.11951, "ord_rank": 0.30549, "d3r": 0.2161, "sq_rel": 0.452,
                       "rmse": 2.98512, "log10": 0.05, "delta2": 0.971, "delta3": 0.993},
           "low": {"delta1": 0.847, "abs_rel": 0.123}}


def test_paper_report_middlebury_one_stage():
    text = E.paper_report("middlebury2021", SUMMARY, gt="legacy_uint8", predictor="leres", images=48)
    header = text.splitlines()[0]
    assert "Middlebury2021" in header and "Tables 1 and 7" in header and "48 images" in header
    assert "GT: legacy_uint8" in header and "uint8 cast, on" in header
    cols = [c.strip() for c in text.splitlines()[2].split("|")[2:-1]]
    assert cols == ["δ1↑", "REL↓", "ORD↓", "D3R↓", "AbsRel↓", "SqRel↓", "RMSE↓", "log10↓", "δ1↑", "δ2↑", "δ3↑",
                    "ORD↓", "D3R↓"]
    rows = _rows(text)
    assert list(rows) == ["ours: refined", "ours: low input", "paper-reported: LeReS (base)",
                          "paper-reported: LeReS + SDDR"]
    assert rows["ours: refined"] == ["0.862", "0.120", "0.305", "0.216", "0.120", "0.452", "2.985", "0.050",
                                     "0.862", "0.971", "0.993", "0.305", "0.216"]
    assert rows["ours: low input"][:4] == ["0.847", "0.123", "–", "–"]
    assert rows["paper-reported: LeReS + SDDR"] == ["0.862", "0.120", "0.305", "0.216", "0.120", "0.452", "2.985",
                                                    "0.050", "0.862", "0.971", "0.993", "0.305", "0.216"]
    assert rows["paper-reported: LeReS (base)"][:4] == ["0.847", "0.123", "0.326", "0.359"]


def test_paper_report_other_datasets_stages_and_gt():
    text = E.paper_report("multiscopic", {"prediction": {"delta1": 0.5}}, gt="float", stage="two")
    assert "Tables 2 and 8" in text.splitlines()[0] and "GT: float" in text and "uint8 cast, off" in text
    rows = _rows(text)
    assert rows["ours: prediction"][0] == "0.500"
    assert len([r for r in rows if r.startswith("paper-reported")]) == 6  # 3 predictors x (base, + SDDR)
    # Table 2 gives delta1 / REL / ORD only; REL is AbsRel, so the full block repeats it
    assert rows["paper-reported: ZoeDepth + SDDR"] == ["0.908", "0.091", "0.197", "–", "0.091", "–", "–", "–",
                                                       "0.908", "–", "–", "0.197", "–"]
    assert rows["paper-reported: MiDaS (base)"][:3] == ["0.839", "0.130", "0.292"]
    hyp = _rows(E.paper_report("hypersim", {}, gt="float", predictor="midas"))
    assert hyp["paper-reported: MiDaS + SDDR"][:3] == ["0.791", "0.166", "0.318"]
    mid2 = _rows(E.paper_report("middlebury2021", {}, gt="float", stage="two", predictor="zoedepth"))
    assert mid2["paper-reported: ZoeDepth + SDDR"][3] == "0.125"  # D3R, Table 8
    with pytest.raises(UserError, match="reports"):
        E.paper_report("eth3d", SUMMARY, gt="float")


def test_cli_offers_every_protocol():
    """`--protocol`'s choices are written out (the parser does not import the metrics); they stay PROTOCOLS'."""
    import argparse

    from sddr_jax.commands import evaluate as cmd

    parser = argparse.ArgumentParser()
    cmd.add_arguments(parser)
    action = next(a for a in parser._actions if a.dest == "protocol")
    assert tuple(action.choices) == tuple(E.PROTOCOLS)
