"""Procedural RGB-D scenes: determinism, validity, and edge structure that makes edge quality measurable."""
import numpy as np
import pytest

from sddr_jax.data import scenes
from sddr_jax.errors import UserError


@pytest.fixture(scope="module")
def batch():
    return [scenes.generate_scene(seed, 128) for seed in range(8)]


def test_deterministic_and_seed_dependent():
    a, b, c = scenes.generate_scene(3, 96), scenes.generate_scene(3, 96), scenes.generate_scene(4, 96)
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.depth, b.depth)
    assert not np.array_equal(a.depth, c.depth)


def test_shapes_dtypes_and_valid_depth(batch):
    cfg = scenes.SceneConfig()
    for s in batch:
        assert s.rgb.shape == (128, 128, 3) and s.rgb.dtype == np.uint8
        assert s.depth.shape == (128, 128) and s.depth.dtype == np.float32
        assert np.isfinite(s.depth).all()
        assert s.depth.min() >= cfg.near and s.depth.max() <= cfg.far
        # Stored depth is exactly on the 2**-11 grid (compressible and exact in float32).
        np.testing.assert_array_equal(s.depth * scenes.DEPTH_STEP_INV, np.round(s.depth * scenes.DEPTH_STEP_INV))
    rect = scenes.generate_scene(0, (64, 96))
    assert rect.rgb.shape == (64, 96, 3) and rect.depth.shape == (64, 96)


def test_occlusion_boundaries_and_thin_structures(batch):
    for s in batch:
        edges = scenes.depth_edges(s.depth)
        assert 0.002 < edges.mean() < 0.3  # occlusion boundaries exist but do not fill the image
    # Thin structures: somewhere a 1-3 pixel wide run of nearer depth between two farther pixels.
    thin = 0
    for s in batch:
        d = s.depth
        for width in (1, 2, 3):
            left, right = d[:, :-width - 1], d[:, width + 1:]
            inner = np.max(np.stack([d[:, 1 + k:d.shape[1] - width + k] for k in range(width)]), axis=0)
            thin += int(np.sum((inner < 0.9 * left) & (inner < 0.9 * right)))
    assert thin > 20


def test_texture_edges_do_not_all_coincide_with_depth_edges(batch):
    """Strong colour edges away from depth edges (decals, stripes) and depth edges with weak colour change."""
    off_depth, total, camouflaged, depth_total = 0, 0, 0, 0
    for s in batch:
        grey = s.rgb.astype(np.float32).mean(-1)
        colour_edge = np.zeros_like(grey, bool)
        colour_edge[:, 1:] |= np.abs(np.diff(grey, axis=1)) > 30
        colour_edge[1:] |= np.abs(np.diff(grey, axis=0)) > 30
        depth_edge = scenes.depth_edges(s.depth, 0.02)
        grown = depth_edge.copy()  # a 1-pixel tolerance around depth edges
        grown[1:] |= depth_edge[:-1]
        grown[:-1] |= depth_edge[1:]
        grown[:, 1:] |= depth_edge[:, :-1]
        grown[:, :-1] |= depth_edge[:, 1:]
        off_depth += int((colour_edge & ~grown).sum())
        total += int(colour_edge.sum())
        camouflaged += int((depth_edge & ~colour_edge).sum())
        depth_total += int(depth_edge.sum())
    print(off_depth / total, camouflaged / depth_total)
    assert total > 0 and off_depth / total > 0.3
    assert camouflaged / depth_total > 0.1


def test_depth_edges_closed_form():
    d = np.full((4, 6), 10.0, np.float32)
    d[:, 3:] = 5.0  # a 2x jump between columns 2 and 3
    e = scenes.depth_edges(d)
    assert e[:, 2:4].all() and not e[:, :2].any() and not e[:, 4:].any()


def test_bad_arguments():
    with pytest.raises(UserError, match="seed"):
        scenes.generate_scene(-1, 64)
    with pytest.raises(UserError, match="size"):
        scenes.generate_scene(0, 8)
    with pytest.raises(UserError, match="near < far"):
        scenes.generate_scene(0, 64, scenes.SceneConfig(near=5.0, far=1.0))
    with pytest.raises(UserError, match="depth"):
        scenes.depth_edges(np.zeros((2, 2, 2)))
