"""Numeric primitives (docs/method.md §2, checklist 13.1) against their formulas, OpenCV, and torch when installed."""
import math

import chex
import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sddr_jax import ops
from sddr_jax.errors import UserError


def _bicubic_direct(x: np.ndarray, out: int) -> np.ndarray:
    """docs/method.md §2.4 evaluated literally along axis 0 (float64 weights from a float32 position)."""
    n = x.shape[0]
    a = -0.75
    ratio = np.float32(n - 1) / np.float32(out - 1)
    res = np.zeros((out,) + x.shape[1:])
    for i in range(out):
        pos = float(np.float32(i) * ratio)
        x0 = math.floor(pos)
        t = pos - x0
        w = [
            ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a,
            ((a + 2) * t - (a + 3)) * t * t + 1,
            ((a + 2) * (1 - t) - (a + 3)) * (1 - t) ** 2 + 1,
            ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a,
        ]
        for k, wk in enumerate(w):
            res[i] += wk * x[min(max(x0 - 1 + k, 0), n - 1)]
    return res


@pytest.mark.parametrize("n", [8, 16, 5])
def test_bicubic_matches_formula_and_corners(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((2, n, n + 3, 3)).astype(np.float32)
    y = np.asarray(ops.upsample_bicubic_ac_x2(jnp.asarray(x)))
    chex.assert_shape(y, (2, 2 * n, 2 * (n + 3), 3))
    ref = _bicubic_direct(np.moveaxis(_bicubic_direct(np.moveaxis(x, 2, 0), 2 * (n + 3)), 0, 2).swapaxes(0, 1),
                          2 * n).swapaxes(0, 1)
    np.testing.assert_allclose(y, ref, atol=2e-5, rtol=0)
    # align_corners: the first and last samples reproduce the input corners exactly (weights 0, 1, 0, 0)
    np.testing.assert_allclose(y[:, -1, -1], x[:, -1, -1], atol=1e-6)
    np.testing.assert_allclose(y[:, 0, 0], x[:, 0, 0], atol=1e-6)
    ym = np.asarray(ops.upsample_bicubic_ac_x2(jnp.asarray(x), method="matrix"))
    np.testing.assert_allclose(ym, y, atol=2e-6, rtol=0)
    # the default (static slices per phase) takes the gathers' taps, weights and order of sums: equal numbers
    yg = np.asarray(ops.upsample_bicubic_ac_x2(jnp.asarray(x), method="gather"))
    np.testing.assert_array_equal(y, yg)


@pytest.mark.parametrize("n", [1, 2, 3, 512, 1000, 1024])
def test_bicubic_x2_taps_are_the_two_phase_windows(n):
    """The tap layout the slice form relies on (even outputs 2m read m-2..m+1, odd ones m-1..m+2, clamped)
    holds for the sizes the refiner meets, so it does not fall back to gathers there."""
    idx, w = ops.bicubic_ac_taps(n, 2 * n)
    m = np.arange(n)[:, None]
    slices, taps = ops.x2_phase_taps(n, idx, w)
    np.testing.assert_array_equal(slices, taps)
    expected = np.empty_like(idx)
    expected[0::2], expected[1::2] = np.clip(m - 2 + np.arange(4), 0, n - 1), np.clip(m - 1 + np.arange(4), 0, n - 1)
    differs = expected != idx
    assert not differs[1:].any() and (w[differs] == 0).all()  # only the first output's zero-weight tap moves


def test_bicubic_matrix_rows_sum_to_one_and_keys_weights():
    m = ops.bicubic_ac_matrix(16, 32)
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)
    # Keys' kernel with A = -0.75 (PyTorch), not -0.5 (jax.image): at t = 1/3 the four weights are
    idx, w = ops.bicubic_ac_taps(2, 4)  # output 1 sits at x = 1/3
    np.testing.assert_array_equal(idx[1], [0, 0, 1, 1])
    t, a = 1 / 3, -0.75
    expected = [((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a, ((a + 2) * t - (a + 3)) * t * t + 1,
                ((a + 2) * (1 - t) - (a + 3)) * (1 - t) ** 2 + 1, ((a * (2 - t) - 5 * a) * (2 - t) + 8 * a) * (2 - t) - 4 * a]
    np.testing.assert_allclose(w[1], expected, atol=1e-6)
    np.testing.assert_allclose(w[1], [-0.1111111, 0.7962963, 0.3703704, -0.0555556], atol=1e-6)
    with pytest.raises(ValueError, match="method"):
        ops.upsample_bicubic_ac_x2(jnp.zeros((1, 4, 4, 1)), method="lanczos")


def _stride_x2_direct(x: np.ndarray) -> np.ndarray:
    """Stride-aligned x2 along axis 0, written out: output 2i = x[i], output 2i+1 = Keys' cubic (A = -0.75) at
    i + 1/2, i.e. (-3 x[i-1] + 19 x[i] + 19 x[i+1] - 3 x[i+2]) / 32 with indices clamped to the edge."""
    n = x.shape[0]
    c = lambda j: x[min(max(j, 0), n - 1)]  # noqa: E731
    out = np.zeros((2 * n,) + x.shape[1:])
    for i in range(n):
        out[2 * i] = x[i]
        out[2 * i + 1] = (-3 * c(i - 1) + 19 * c(i) + 19 * c(i + 1) - 3 * c(i + 2)) / 32
    return out


@pytest.mark.parametrize("n", [1, 2, 5, 16])
def test_stride_aligned_x2_matches_formula(n):
    rng = np.random.default_rng(n)
    x = rng.standard_normal((2, n, n + 3, 3)).astype(np.float32)
    y = np.asarray(ops.upsample_bicubic_stride_x2(jnp.asarray(x)))
    ref = _stride_x2_direct(np.moveaxis(_stride_x2_direct(np.moveaxis(x, 2, 0)), 0, 2).swapaxes(0, 1)).swapaxes(0, 1)
    np.testing.assert_allclose(y, ref, atol=2e-6, rtol=0)
    np.testing.assert_array_equal(y[:, ::2, ::2], x)  # the input grid is kept exactly
    np.testing.assert_array_equal(np.asarray(ops.upsample_x2(jnp.asarray(x), "stride_aligned")), y)
    with pytest.raises(ValueError, match="mode must be one of"):
        ops.upsample_x2(jnp.asarray(x), "half_pixel")


def test_stride_aligned_x2_has_no_scale_error_where_align_corners_has():
    """Output i of a stride-2 layer's upsampling should sit at input i / 2 (a stride-2 conv centres output m on
    input 2m). On a ramp x[j] = j, Keys' cubic at t = 1/2 is exact (symmetric taps), so the stride-aligned
    output IS the sampled position, i / 2, away from the clamped ends. align_corners pins its last output to
    the last input (position n - 1, not n - 1/2): half an input pixel (one output pixel) off at the far end."""
    n = 32
    ramp = np.broadcast_to(np.arange(n, dtype=np.float32)[None, None, :, None], (1, 1, n, 1))
    want = np.arange(2 * n) / 2
    got = np.asarray(ops.upsample_bicubic_stride_x2(jnp.asarray(ramp)))[0, 0, :, 0]
    inner = slice(2, 2 * n - 3)  # odd outputs 1, 2n-3 and 2n-1 read a clamped tap
    np.testing.assert_allclose(got[inner], want[inner], atol=1e-6)
    np.testing.assert_array_equal(got[0::2], np.arange(n))  # even outputs copy the input
    ac = np.asarray(ops.upsample_bicubic_ac_x2(jnp.asarray(ramp)))[0, 0, :, 0]
    assert ac[0] == pytest.approx(0.0, abs=1e-6) and ac[-1] == pytest.approx(n - 1, abs=1e-5)
    assert ac[-1] - want[-1] == pytest.approx(-0.5, abs=1e-5)


def test_nearest_index_maps_448_and_1920_to_2048():
    idx = ops.nearest_indices(448, 2048)
    expected = np.minimum(np.floor(np.arange(2048, dtype=np.float32) * np.float32(448 / 2048)), 447)
    np.testing.assert_array_equal(idx, expected)
    assert idx[0] == 0 and idx[-1] == 447 and idx[5] == 1  # 5 * 0.21875 = 1.09
    idx = ops.nearest_indices(1920, 2048)
    np.testing.assert_array_equal(idx, np.floor(np.arange(2048, dtype=np.float32) * np.float32(0.9375)))
    assert idx[-1] == 1919
    # OpenCV INTER_NEAREST follows the same rule
    for src, dst in [(448, 2048), (1920, 2048), (37, 20), (300, 1024)]:
        ramp = np.arange(src, dtype=np.float32)[None, :].repeat(2, 0)
        cv = cv2.resize(ramp, (dst, 2), interpolation=cv2.INTER_NEAREST)[0]
        np.testing.assert_array_equal(cv.astype(np.int64), ops.nearest_indices(src, dst))


def test_resize_nearest_and_bilinear_layout_and_jit():
    rng = np.random.default_rng(0)
    x = rng.random((2, 3, 37, 53, 2)).astype(np.float32)  # extra leading axis: (..., H, W, C)
    f = jax.jit(ops.resize_nearest, static_argnums=1)
    y = np.asarray(f(jnp.asarray(x), (64, 20)))
    chex.assert_shape(y, (2, 3, 64, 20, 2))
    ih, iw = ops.nearest_indices(37, 64), ops.nearest_indices(53, 20)
    np.testing.assert_array_equal(y, x[:, :, ih][:, :, :, iw])
    g = jax.jit(ops.resize_bilinear, static_argnums=1)
    yb = np.asarray(g(jnp.asarray(x), (64, 20)))
    chex.assert_shape(yb, (2, 3, 64, 20, 2))
    # PyTorch bilinear (align_corners=False, no antialias) == OpenCV INTER_LINEAR for float maps
    for src, dst in [((37, 53), (64, 20)), ((448, 448), (1024, 1024)), ((100, 60), (33, 47))]:
        img = rng.random(src).astype(np.float32)
        ours = np.asarray(ops.resize_bilinear(jnp.asarray(img[None, :, :, None]), dst))[0, :, :, 0]
        cv = cv2.resize(img, dst[::-1], interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(ours, cv, atol=2e-5)
    # identity sizes are exact no-ops
    np.testing.assert_array_equal(np.asarray(ops.resize_bilinear(jnp.asarray(x), (37, 53))), x)


def test_bilinear_taps_formula():
    i0, i1, w0, w1 = ops.bilinear_taps(4, 8)
    src = np.maximum((np.arange(8) + 0.5) * 0.5 - 0.5, 0)
    np.testing.assert_array_equal(i0, np.floor(src))
    np.testing.assert_array_equal(i1, np.minimum(np.floor(src) + 1, 3))
    np.testing.assert_allclose(w1, src - np.floor(src))
    np.testing.assert_allclose(w0 + w1, 1.0)


def test_resize_bad_arguments():
    with pytest.raises(ValueError, match="out_hw"):
        ops.resize_nearest(jnp.zeros((1, 4, 4, 1)), (0, 3))
    with pytest.raises(ValueError, match="H, W, C"):
        ops.resize_bilinear(jnp.zeros((4, 4)), (2, 2))


@pytest.mark.parametrize("cin,cout,ksize", [(3, 2, 3), (32, 5, 3), (40, 1, 5), (8, 1, 5)])
def test_conv_replicate_equals_edge_pad_and_valid_conv(cin, cout, ksize):
    """Every form (the default choice per layer, and each one forced) equals the definition, summed in
    float64; on CPU the default is the convolution for (3, 2), the matmul of taps from 32 input channels
    and the channel planes for (8, 1)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 6, 7, cin)).astype(np.float32)
    k = rng.standard_normal((ksize, ksize, cin, cout)).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    r = ksize // 2
    xp = np.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="edge").astype(np.float64)
    ref = np.zeros((2, 6, 7, cout))
    for i in range(6):
        for j in range(7):
            ref[:, i, j] = np.einsum("bhwc,hwco->bo", xp[:, i:i + ksize, j:j + ksize], k) + b
    for form in (None,) + ops.CONV_FORMS:
        y = np.asarray(ops.conv_replicate(jnp.asarray(x), jnp.asarray(k), jnp.asarray(b), form=form))
        np.testing.assert_allclose(y, ref, atol=2e-5 * np.sqrt(cin * ksize * ksize), err_msg=str(form))
    assert ops.conv_form(cin, cout) == {(3, 2): "conv", (32, 5): "matmul", (40, 1): "matmul",
                                        (8, 1): "planar"}[(cin, cout)]
    with ops.embedded_forms():  # inside a larger program: no planar form for wider inputs
        assert ops.conv_form(cin, cout) == {(3, 2): "conv", (32, 5): "matmul", (40, 1): "matmul",
                                            (8, 1): "conv"}[(cin, cout)]
        assert ops.conv_form(1, 1) == "planar"
    assert ops.conv_form(8, 1) == "planar"  # the context is left behind
    y = np.asarray(ops.conv_replicate(jnp.asarray(x), jnp.asarray(k), jnp.asarray(b)))
    with pytest.raises(ValueError, match="form"):
        ops.conv_replicate(jnp.asarray(x), jnp.asarray(k), form="fft")
    if cin != 3:
        return
    mod = ops.ConvReplicate(2, 3)
    params = {"params": {"kernel": k, "bias": b}}
    np.testing.assert_allclose(np.asarray(mod.apply(params, jnp.asarray(x))), y, atol=1e-6)
    init = mod.init(jax.random.key(0), jnp.asarray(x))["params"]
    chex.assert_shape(init["kernel"], (3, 3, 3, 2))
    with pytest.raises(ValueError, match="odd"):
        ops.ConvReplicate(1, 4).init(jax.random.key(0), jnp.asarray(x))


def test_gelu_exact_and_leaky_relu():
    x = np.linspace(-4, 4, 41).astype(np.float32)
    ref = np.array([v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in x.astype(np.float64)])
    np.testing.assert_allclose(np.asarray(ops.gelu_exact(jnp.asarray(x))), ref, atol=1e-6)
    # the tanh approximation differs by > 1e-4 somewhere on this range: make sure we are not using it
    assert np.abs(np.asarray(jax.nn.gelu(jnp.asarray(x), approximate=True)) - ref).max() > 1e-4
    np.testing.assert_allclose(np.asarray(ops.leaky_relu(jnp.asarray(x))), np.where(x > 0, x, 0.01 * x))


def test_group_norm_and_layer_norm_epsilons():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((2, 5, 4, 8)) * 1e-2 + 0.5).astype(np.float32)  # variance ~1e-4: eps matters
    gn = ops.group_norm(2)
    p = gn.init(jax.random.key(0), x)
    y = np.asarray(gn.apply(p, x))
    xg = x.astype(np.float64).reshape(2, 5, 4, 2, 4)
    mu = xg.mean(axis=(1, 2, 4), keepdims=True)
    var = ((xg - mu) ** 2).mean(axis=(1, 2, 4), keepdims=True)
    ref = ((xg - mu) / np.sqrt(var + 1e-5)).reshape(x.shape)
    np.testing.assert_allclose(y, ref, atol=1e-4)
    for eps in (ops.LN_EPS_BLOCK, ops.LN_EPS_PATCH):
        ln = ops.layer_norm(eps)
        yl = np.asarray(ln.apply(ln.init(jax.random.key(0), x), x))
        x64 = x.astype(np.float64)
        m = x64.mean(-1, keepdims=True)
        refl = (x64 - m) / np.sqrt(((x64 - m) ** 2).mean(-1, keepdims=True) + eps)
        np.testing.assert_allclose(yl, refl, atol=1e-4)
    assert ops.GN_EPS == 1e-5 and ops.LN_EPS_BLOCK == 1e-6 and ops.LN_EPS_PATCH == 1e-5


@pytest.mark.torch
def test_against_torch_ops():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(3)
    for n in (1, 2, 8, 16, 33):
        x = rng.standard_normal((2, n, n + 2, 3)).astype(np.float32)
        t = torch.from_numpy(x).permute(0, 3, 1, 2)
        ref = F.interpolate(t, scale_factor=2, mode="bicubic", align_corners=True).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(np.asarray(ops.upsample_bicubic_ac_x2(jnp.asarray(x))), ref, atol=1e-5)
    for src, dst in [((448, 300), (2048, 2048)), ((1920, 1080), (2048, 1024)), ((37, 53), (20, 100)),
                     ((64, 64), (128, 128)), ((7, 5), (7, 5))]:
        x = rng.standard_normal((1,) + src + (2,)).astype(np.float32)
        t = torch.from_numpy(x).permute(0, 3, 1, 2)
        near = F.interpolate(t, size=dst, mode="nearest").permute(0, 2, 3, 1).numpy()
        np.testing.assert_array_equal(np.asarray(ops.resize_nearest(jnp.asarray(x), dst)), near)
        bil = F.interpolate(t, size=dst, mode="bilinear", align_corners=False).permute(0, 2, 3, 1).numpy()
        np.testing.assert_allclose(np.asarray(ops.resize_bilinear(jnp.asarray(x), dst)), bil, atol=1e-5)
    # replicate-padded conv, GroupNorm and GELU
    x = rng.standard_normal((2, 9, 11, 4)).astype(np.float32)
    conv = torch.nn.Conv2d(4, 3, 5, padding=2, padding_mode="replicate")
    with torch.no_grad():
        ref = conv(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    k = conv.weight.detach().numpy().transpose(2, 3, 1, 0)
    ours = ops.conv_replicate(jnp.asarray(x), jnp.asarray(k), jnp.asarray(conv.bias.detach().numpy()))
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-5)
    gn = torch.nn.GroupNorm(2, 4)
    with torch.no_grad():
        ref = gn(torch.from_numpy(x).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).numpy()
    mod = ops.group_norm(2)
    np.testing.assert_allclose(np.asarray(mod.apply(mod.init(jax.random.key(0), x), x)), ref, atol=1e-5)
    g = torch.nn.GELU()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.asarray(ops.gelu_exact(jnp.asarray(x))), g, atol=1e-6)


@pytest.mark.parametrize("q", [0.0, 0.15, 0.5, 0.85, 0.94, 0.95, 1.0])
def test_quantile_by_selection_equals_jnp_quantile(q):
    """Bit for bit jnp.quantile (sorting) and within float32 rounding of numpy's, on ties, negative values,
    signed zeros, another axis and keepdims."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 301)).astype(np.float32)
    x[1] = np.round(x[1] * 2) / 2  # many ties
    x[2, :200] = 0.0  # a flat majority, as on synthetic planes
    x[3, ::2] = -0.0
    x[4] = np.abs(x[4])  # a Sobel magnitude
    got = np.asarray(jax.jit(lambda v: ops.quantile(v, q))(jnp.asarray(x)))
    np.testing.assert_array_equal(got, np.asarray(jnp.quantile(jnp.asarray(x), q, axis=-1)))
    np.testing.assert_allclose(got, np.quantile(x.astype(np.float64), q, axis=-1), rtol=1e-6, atol=1e-7)
    xt = np.ascontiguousarray(x.T)  # (301, 5), reduced over axis 0
    got_t = np.asarray(ops.quantile(jnp.asarray(xt), q, axis=0, keepdims=True))
    assert got_t.shape == (1, 5)
    np.testing.assert_array_equal(got_t[0], got)


def test_quantile_nan_and_bad_arguments():
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    x[1, 2] = np.nan
    got = np.asarray(ops.quantile(jnp.asarray(x), 0.5))
    assert got[0] == 2.5 and np.isnan(got[1])
    with pytest.raises(UserError, match="quantile q"):
        ops.quantile(jnp.asarray(x), 1.5)
    with pytest.raises(UserError, match="float32"):
        ops.quantile(jnp.arange(4), 0.5)


def test_quantile_gradient_equals_jnp_quantile():
    """The gradient reaches the two interpolated order statistics, as through jnp.quantile's sort."""
    x = jnp.asarray(np.random.default_rng(5).permutation(50).astype(np.float32).reshape(2, 25))
    for q in (0.3, 0.85, 1.0):
        got = jax.grad(lambda v: jnp.sum(ops.quantile(v, q) * jnp.asarray([1.0, 2.0])))(x)
        ref = jax.grad(lambda v: jnp.sum(jnp.quantile(v, q, axis=-1) * jnp.asarray([1.0, 2.0])))(x)
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-6, atol=0)
        assert float(jnp.abs(got).sum()) > 0
