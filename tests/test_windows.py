"""Tests of the pure window functions (docs/method.md §5.2-5.5): grid, feather mask, resolutions, alignment, blending."""
import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sddr_jax.edges import bilateral_filter
from sddr_jax.inference import windows as W
from sddr_jax.ops import align_scale_shift, resize_cv
from sddr_jax.errors import UserError


# ---------------------------------------------------------------------------------------------- grid


def test_grid_1920x1080_matches_spec():
    g2 = W.window_grid(1080, 1920, 2, 0.2)
    assert [tuple(w) for w in g2] == [
        (0, 601, 0, 1067), (0, 601, 852, 1919), (478, 1079, 0, 1067), (478, 1079, 852, 1919)
    ]
    g3 = W.window_grid(1080, 1920, 3, 0.25)
    assert len(g3) == 9
    assert all(w.shape == (433, 769) for w in g3)
    assert [w.x0 for w in g3[:3]] == [0, 577, 1150]
    assert [w.y0 for w in g3[::3]] == [0, 325, 646]
    assert [tuple(w) for w in g3] == [(y, y + 433, x, x + 769) for y in (0, 325, 646) for x in (0, 577, 1150)]


def test_grid_quirks_and_paper_step():
    for p, c in W.PAPER_SCHEDULE:
        g = W.window_grid(1080, 1920, p, c)
        cover = np.zeros((1080, 1920), bool)
        for w in g:
            cover[w.y0 : w.y1, w.x0 : w.x1] = True
        assert not cover[-1].any() and not cover[:, -1].any()  # last row / column never covered
        assert cover[:-1, :-1].all()
        assert len(g) == p * p
    # 4x4, c = 0.25: ph = int(1080 / 3.25) + 1 = 333, oh = 83; regular rows at 0, 250, 500.
    g4 = W.window_grid(1080, 1920, 4, 0.25)
    assert sorted({w.y0 for w in g4}) == [0, 250, 500, 1080 - 333 - 1]


def test_grid_rejects_bad_input():
    with pytest.raises(UserError, match="pieces >= 2"):
        W.window_grid(100, 100, 1, 0.2)
    with pytest.raises(UserError, match="too small"):
        W.window_grid(2, 100, 2, 0.2)
    with pytest.raises(UserError, match="schedule"):
        W.check_schedule([(2,)])


# ---------------------------------------------------------------------------------------------- resolutions


def test_adaptive_resolutions_of_spec():
    assert W.candidate_resolutions((601, 1067)) == (672, 768, 896)
    assert W.candidate_resolutions((433, 769)) == (544, 640, 704)
    assert W.adaptive_resolution((2000, 3000), 1.2) == 2048  # capped at the official GPU threshold


def _levels_reference(depth, windows):
    # Literal transcription of the official threshold logic (python lists, sorted()).
    grad = np.abs(cv2.Sobel(depth, cv2.CV_64F, 0, 1, ksize=3))
    grad += np.abs(cv2.Sobel(depth, cv2.CV_64F, 1, 0, ksize=3))
    e = (grad > np.percentile(grad, 94)).astype(np.float32)
    g = np.array([np.sum(e[w.y0 : w.y1, w.x0 : w.x1]) / (w.height * w.width) for w in windows])
    mean = np.sum(e) / e.size
    big = sorted(g[g > mean])[int(0.5 * np.sum(g > mean))]
    return np.array([2 if v > big else 1 if v > mean else 0 for v in g])


def test_resolution_factors_host_and_graph_agree_with_reference():
    rng = np.random.default_rng(0)
    depth = cv2.GaussianBlur(rng.random((2, 120, 200)).astype(np.float32).transpose(1, 2, 0), (0, 0), 3)
    depth = depth.transpose(2, 0, 1)
    depth[1, 60:, 100:] += 2.0 * (rng.random((60, 100)) > 0.5)  # a busy corner for the second image
    for p, c in W.OFFICIAL_SCHEDULE:
        ws = W.window_grid(120, 200, p, c)
        ref = np.stack([_levels_reference(d, ws) for d in depth])
        host = np.stack([W.resolution_factors_host(d, ws) for d in depth])
        graph = np.asarray(jax.jit(W.resolution_factors, static_argnums=1)(jnp.asarray(depth)[..., None], ws))
        np.testing.assert_array_equal(host, ref)
        np.testing.assert_array_equal(graph, ref)
    assert set(ref[1].tolist()) == {0, 1, 2}
    # Guard of the official code's empty list: a constant map has no window above the mean.
    flat = np.zeros((50, 80), np.float32)
    levels = W.resolution_factors_host(flat, W.window_grid(50, 80, 2, 0.2))
    np.testing.assert_array_equal(levels, [0, 0, 0, 0])


def test_paper_resolution_closed_form():
    # 0.5 (448 + 1067) * (0.2 / 0.1) * (0.3 / 0.2) = 2272.5 -> capped; and a small case rounded up to 32.
    assert W.paper_resolution((601, 1067), 0.2, 0.3, 0.2, alpha=0.1) == 2048
    assert W.paper_resolution((100, 200), 0.1, 1.0, 1.0, alpha=0.1) == 352  # 0.5 * 648 = 324 -> 352
    with pytest.raises(UserError, match="alpha"):
        W.paper_resolution((1, 1), 1, 1, 1, alpha=0)


# ---------------------------------------------------------------------------------------------- feather mask


def test_feather_mask():
    base = W.feather_base()
    assert base.shape == (3000, 3000) and base.dtype == np.float32
    assert base.min() == 0.0 and abs(base.max() - 1.0) < 1e-6
    # The official definition: the 2-D blur (749 x 749, sigma 187) of ones on [450, 2550)^2, min-max normalised
    # (feather_base computes it as the outer product of a 1-D blur).
    image = np.zeros((3000, 3000), np.float32)
    image[450:2550, 450:2550] = 1
    official = cv2.GaussianBlur(image, (749, 749), 187)
    np.testing.assert_allclose(base, (official - official.min()) / (official.max() - official.min()), atol=3e-6)
    m = W.feather_mask(433, 769)
    np.testing.assert_array_equal(m, cv2.resize(base, (769, 433), interpolation=cv2.INTER_LINEAR))
    assert W.feather_mask(433, 769) is m  # cached
    assert not m.flags.writeable


# ---------------------------------------------------------------------------------------------- cv resize


@pytest.mark.parametrize("interp,flag", [("linear", cv2.INTER_LINEAR), ("cubic", cv2.INTER_CUBIC)])
def test_resize_cv_matches_opencv(interp, flag):
    rng = np.random.default_rng(1)
    cases = [((17, 23), (40, 31)), ((128, 128), (61, 97)), ((9, 8), (3, 2)), ((64, 60), (64, 60))]
    for (h, w), (oh, ow) in cases:
        x = rng.standard_normal((2, h, w, 1)).astype(np.float32)
        ref = np.stack([cv2.resize(x[i, ..., 0], (ow, oh), interpolation=flag) for i in range(2)])[..., None]
        for method in ("taps", "matrix"):
            out = np.asarray(resize_cv(jnp.asarray(x), (oh, ow), interp, method))
            np.testing.assert_allclose(out, ref, atol=2e-6, rtol=0)


# ---------------------------------------------------------------------------------------------- alignment


def test_align_scale_shift():
    rng = np.random.default_rng(2)
    p = rng.random((3, 8, 9, 1)).astype(np.float32)
    noisy = p[2] + rng.normal(0, 0.1, p[2].shape)
    t = np.stack([2.0 * p[0] + 3.0, -0.5 * p[1] + 1.0, noisy]).astype(np.float32)
    a, b = align_scale_shift(jnp.asarray(p), jnp.asarray(t))
    np.testing.assert_allclose(np.asarray(a)[:2], [2.0, -0.5], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(b)[:2], [3.0, 1.0], rtol=1e-5)
    ref = np.polyfit(p[2].ravel().astype(np.float64), t[2].ravel().astype(np.float64), 1)
    np.testing.assert_allclose([a[2], b[2]], ref, rtol=1e-4)
    # masked: outliers outside the mask do not matter
    mask = np.ones_like(p[:1], bool)
    mask[0, :2] = False
    t2 = t[:1].copy()
    t2[0, :2] = 100.0
    a2, b2 = align_scale_shift(jnp.asarray(p[:1]), jnp.asarray(t2), jnp.asarray(mask))
    np.testing.assert_allclose([a2[0], b2[0]], [2.0, 3.0], rtol=1e-5)
    # degenerate prediction: (0, 0) like the official code
    a3, b3 = align_scale_shift(jnp.ones((1, 4, 4, 1)), jnp.asarray(p[:1, :4, :4]))
    assert float(a3[0]) == 0.0 and float(b3[0]) == 0.0


# ---------------------------------------------------------------------------------------------- blending


def test_blend_official_and_average():
    rng = np.random.default_rng(3)
    ws = W.window_grid(60, 90, 2, 0.2)
    canvas = rng.random((2, 60, 90, 1)).astype(np.float32)
    patches = [rng.random((2,) + w.shape + (1,)).astype(np.float32) for w in ws]
    masks = [W.feather_mask(*w.shape) for w in ws]
    # official: sequential numpy loop
    ref = canvas.copy()
    for p, w, m in zip(patches, ws, masks):
        reg = ref[:, w.y0 : w.y1, w.x0 : w.x1]
        ref[:, w.y0 : w.y1, w.x0 : w.x1] = reg * (1 - m[..., None]) + p * m[..., None]
    out = W.blend_windows(jnp.asarray(canvas), [jnp.asarray(p) for p in patches], ws, mode="official")
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-6)
    # average: hand formula
    num = np.zeros_like(canvas)
    tot = np.zeros((60, 90, 1), np.float32)
    for p, w, m in zip(patches, ws, masks):
        num[:, w.y0 : w.y1, w.x0 : w.x1] += p * m[..., None]
        tot[w.y0 : w.y1, w.x0 : w.x1] += m[..., None]
    cov = np.minimum(tot, 1)
    ref_avg = canvas * (1 - cov) + num / np.where(tot > 0, tot, 1) * cov
    avg = W.blend_windows(jnp.asarray(canvas), [jnp.asarray(p) for p in patches], ws, mode="average")
    np.testing.assert_allclose(np.asarray(avg), ref_avg, atol=1e-6)
    rev = W.blend_windows(jnp.asarray(canvas), [jnp.asarray(p) for p in patches[::-1]], ws[::-1],
                          mode="average")
    np.testing.assert_allclose(np.asarray(rev), np.asarray(avg), atol=1e-6)  # order-independent
    one = [W.blend_windows(jnp.asarray(canvas), [jnp.asarray(patches[0])], ws[:1], mode=m) for m in W.BLENDS]
    np.testing.assert_allclose(np.asarray(one[0]), np.asarray(one[1]), atol=1e-6)
    with pytest.raises(UserError, match="blend"):
        W.blend_windows(jnp.asarray(canvas), [], [], mode="nope")


def test_bilateral_filter():
    rng = np.random.default_rng(4)
    x = rng.random((1, 7, 8, 1)).astype(np.float32)
    out = np.asarray(bilateral_filter(jnp.asarray(x), 1, 1.5, 0.2))
    p = np.pad(x[0, ..., 0], 1, mode="edge").astype(np.float64)
    ref = np.zeros((7, 8))
    for i in range(7):
        for j in range(8):
            q = p[i : i + 3, j : j + 3]
            d2 = np.add.outer(np.arange(-1, 2) ** 2, np.arange(-1, 2) ** 2)
            wt = np.exp(-d2 / (2 * 1.5**2)) * np.exp(-((q - x[0, i, j, 0]) ** 2) / (2 * 0.2**2))
            ref[i, j] = (wt * q).sum() / wt.sum()
    np.testing.assert_allclose(out[0, ..., 0], ref, atol=1e-5)
    const = jnp.full((1, 5, 5, 1), 0.3)
    np.testing.assert_allclose(np.asarray(bilateral_filter(const, 2, 1.0, 0.1)), 0.3, atol=1e-6)


def test_cv_nearest_indices_match_opencv():
    rng = np.random.default_rng(5)
    cases = [(14, 22, 1080, 1067), (1024, 1024, 1080, 1920), (601, 1067, 1024, 1024), (33, 7, 5, 200)]
    for h, w, oh, ow in cases:
        x = rng.random((h, w)).astype(np.float32)
        ref = cv2.resize(x, (ow, oh), interpolation=cv2.INTER_NEAREST)
        out = np.asarray(resize_cv(jnp.asarray(x)[None, ..., None], (oh, ow), "nearest"))[0, ..., 0]
        np.testing.assert_array_equal(out, ref)
