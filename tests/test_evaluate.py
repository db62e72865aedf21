"""image_metrics (the per-image bundle of docs/method.md §9) and the shared metric table."""
import numpy as np
import pytest

from sddr_jax.eval import metrics
from sddr_jax.eval.evaluate import metrics_table


def _scene(h=96, w=128):
    y, x = np.mgrid[0:h, 0:w]
    d = 4.0 + 0.01 * x + 0.02 * y
    d[20:60, 30:80] = 2.0  # a box in front: occlusion edges
    d[:3] = 1.0  # the nearest surface: Boost's protocol rescales GT depth so the nearest pixel becomes invalid
    return d


def test_affine_copy_scores_perfectly():
    gt = _scene()
    valid = np.ones_like(gt, bool)
    m = metrics.image_metrics(3.0 * gt - 1.5, gt, valid, ord_rank=False)
    assert m["abs_rel"] == pytest.approx(0.0, abs=1e-5)
    assert m["delta1"] == 1.0
    assert m["d3r"] == 0.0 and m["ord_boost"] == 0.0
    assert m["boundary_f1"] == pytest.approx(1.0, abs=1e-6)


def test_invalid_pixels_are_ignored_and_edges_detected():
    gt = _scene()
    valid = np.ones_like(gt, bool)
    valid[:, :5] = False
    noisy = gt.copy()
    noisy[:, :5] = 1e6  # only on invalid pixels
    assert metrics.image_metrics(noisy, gt, valid, edge_metrics=False)["abs_rel"] == pytest.approx(0.0, abs=1e-5)
    flat = np.full_like(gt, 2.5) + 1e-3 * np.arange(gt.size).reshape(gt.shape)  # no box: edges missed
    m = metrics.image_metrics(flat, gt, np.ones_like(gt, bool), ord_rank=False)
    assert m["boundary_f1"] < 0.2 and m["d3r"] > 0.5


def test_metrics_table_bolds_the_best_per_row():
    summary = {"low": {"delta1": 0.8, "abs_rel": 0.2}, "high": {"delta1": 0.7, "abs_rel": 0.1},
               "refined": {"delta1": 0.9, "abs_rel": 0.15}}
    table = metrics_table(summary, {"low": "low", "high": "high", "refined": "refined"})
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert "**0.9000**" in rows["δ1 ↑"] and "**0.1000**" in rows["AbsRel ↓"]
    assert "D3R ↓" not in rows  # no value: row left out
