"""Tests of sddr_jax.edges (docs/method.md §6): Sobel magnitude, percentile masks, edge-dense regions."""
import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sddr_jax import edges
from sddr_jax.errors import UserError

K1 = np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], np.float32)


def _sobel_ref(x: np.ndarray) -> np.ndarray:
    """OpenCV correlation with a zero border: an independent reference for sobel_abs."""
    f = lambda k: cv2.filter2D(x.astype(np.float32), -1, k, borderType=cv2.BORDER_CONSTANT)  # noqa: E731
    return np.abs(f(K1)) + np.abs(f(K1.T.copy()))


def test_sobel_abs_step_by_hand():
    x = np.zeros((4, 5), np.float32)
    x[:, 3:] = 1.0
    # interior: |gx| = 1 + 2 + 1 = 4 on both sides of the step and at the right border (zero padding);
    # corners of the ones block also see the zero rows above/below: |gy| = 2 + 1 = 3, |gx| = 2 + 1 = 3 -> 6.
    expected = np.array([[0, 0, 4, 6, 6],
                         [0, 0, 4, 4, 4],
                         [0, 0, 4, 4, 4],
                         [0, 0, 4, 6, 6]], np.float32)
    got = np.asarray(edges.sobel_abs(x))
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_allclose(got, _sobel_ref(x), atol=1e-6)


def test_sobel_abs_matches_opencv_and_layouts():
    r = np.random.RandomState(0).rand(3, 9, 11).astype(np.float32)
    ref = np.stack([_sobel_ref(m) for m in r])
    np.testing.assert_allclose(np.asarray(edges.sobel_abs(r)), ref, atol=1e-5)
    np.testing.assert_allclose(np.asarray(edges.sobel_abs(r[..., None]))[..., 0], ref, atol=1e-5)
    np.testing.assert_allclose(np.asarray(edges.sobel_abs(r[0])), ref[0], atol=1e-5)
    jit = jax.jit(edges.sobel_abs)(r[..., None])
    vm = jax.vmap(edges.sobel_abs)(r)
    np.testing.assert_allclose(np.asarray(jit)[..., 0], ref, atol=1e-5)
    np.testing.assert_allclose(np.asarray(vm), ref, atol=1e-5)


def test_sobel_abs_bad_shapes():
    with pytest.raises(UserError, match="one channel"):
        edges.sobel_abs(np.zeros((1, 4, 4, 3)))
    with pytest.raises(UserError, match="expected"):
        edges.sobel_abs(np.zeros((4,)))


def test_percentile_masks_by_hand():
    g = np.arange(100, dtype=np.float32).reshape(10, 10)
    me = np.asarray(edges.mask_edge(g))  # 85th percentile = 84.15 -> values 85..99
    mf = np.asarray(edges.mask_flat(g))  # 15th percentile = 14.85 -> values 0..14
    np.testing.assert_array_equal(me, g >= 85)
    np.testing.assert_array_equal(mf, g <= 14)
    b = np.stack([g, 99 - g])[..., None]
    np.testing.assert_array_equal(np.asarray(edges.mask_edge(b))[1, ..., 0], (99 - g) >= 85)
    np.testing.assert_array_equal(np.asarray(edges.mask_edge(g, q=0.5)), g > 49.5)


def test_percentile_mask_tie_rules():
    flat = np.zeros((4, 4), np.float32)
    flat[0, :2] = [1.0, 2.0]  # 14 zeros: the 15th percentile is 0 = the minimum
    np.testing.assert_array_equal(np.asarray(edges.mask_flat(flat)), flat == 0)
    const = np.full((3, 3), 2.0, np.float32)
    assert np.asarray(edges.mask_edge(const)).all() and np.asarray(edges.mask_flat(const)).all()
    with pytest.raises(UserError, match="quantile"):
        edges.mask_edge(flat, q=1.5)


def _blobs():
    g = np.zeros((64, 64), np.float32)
    g[5:8, 5:8] = 1
    g[50:55, 40:45] = 1
    g[10:12, 50:52] = 1
    boxes = {(4, 8, 4, 8), (9, 12, 49, 52), (49, 55, 39, 45)}  # inclusive bounds dilated by margin 1
    return g, boxes


def _boxes(regions):
    out = set()
    for r in np.asarray(regions):
        rr, cc = np.nonzero(r)
        out.add((rr.min(), rr.max(), cc.min(), cc.max()))
    return out


def test_edge_regions_boxes():
    g, boxes = _blobs()
    f = jax.jit(lambda x: edges.edge_regions(x, num_regions=3, top_fraction=0.005, margin=1))
    r = f(g)
    assert r.shape == (3, 64, 64) and r.dtype == jnp.bool_
    assert _boxes(r) == boxes
    rb = edges.edge_regions(g[None, ..., None], num_regions=3, top_fraction=0.005, margin=1,
                            key=jax.random.key(0))
    assert rb.shape == (1, 3, 64, 64)
    assert _boxes(rb[0]) == boxes
    np.testing.assert_array_equal(np.asarray(edges.edge_regions(g, 3, 0.005, 1)), np.asarray(r))


def test_edge_regions_empty_cluster_and_errors():
    g = np.zeros((16, 16), np.float32)
    g[3, 3] = 1.0  # a single edge pixel: one non-empty region, the others empty
    r = np.asarray(edges.edge_regions(g, num_regions=2, top_fraction=1 / 256, margin=0))
    assert sorted(int(x.sum()) for x in r) == [0, 1]
    assert r[:, 3, 3].any()
    with pytest.raises(UserError, match="num_regions"):
        edges.edge_regions(g, num_regions=0)
    with pytest.raises(UserError, match="top_fraction"):
        edges.edge_regions(g, top_fraction=0.0)
