"""Tests of sddr_jax.losses (docs/method.md §8): pieces vs numpy ports of the official code, composites, registry."""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sddr_jax import edges, losses
from sddr_jax.errors import UserError


class Out(NamedTuple):  # duck-typed stand-in for RefinerOutput
    refined: jax.Array
    out_half: jax.Array
    out_quart: jax.Array
    mask_quart: jax.Array
    mask_half: jax.Array


# ---- numpy references (ports of the official formulas, batch axis first, (B, H, W)) ----

def np_normalize(x, m):
    b = x.shape[0]
    out = np.empty_like(x)
    for i in range(b):
        ssum = m[i].sum()
        if ssum == 0:
            out[i] = x[i]
            continue
        v = np.sort((m[i] * x[i]).ravel())
        med = v[(v.size - 1) // 2]  # torch.median: lower middle
        xc = x[i] - med
        out[i] = xc / max((m[i] * np.abs(xc)).sum() / ssum, 1e-6)
    return out


def np_grad_loss(p, t, m, scales=4):
    total = 0.0
    for s in range(scales):
        st = 2 ** s
        pp, tt, mm = p[:, ::st, ::st], t[:, ::st, ::st], m[:, ::st, ::st]
        d = mm * (pp - tt)
        gx = np.abs(d[:, :, 1:] - d[:, :, :-1]) * mm[:, :, 1:] * mm[:, :, :-1]
        gy = np.abs(d[:, 1:] - d[:, :-1]) * mm[:, 1:] * mm[:, :-1]
        div = mm.sum()
        total += (gx.sum() + gy.sum()) / div if div else 0.0
    return total


def np_ssi(p, t, m, alpha):
    pn, tn = np_normalize(p, m), np_normalize(t, m)
    data = (m * np.abs(pn - tn)).sum() / (2 * m.sum())
    return data + alpha * np_grad_loss(pn, tn, m)


@pytest.fixture(scope="module")
def rand_maps():
    rng = np.random.RandomState(0)
    p = rng.rand(2, 16, 16).astype(np.float32)
    t = (rng.rand(2, 16, 16) * 3 + 1).astype(np.float32)
    m = rng.rand(2, 16, 16) > 0.3
    return p, t, m


def test_robust_normalize_by_hand():
    x = np.array([[[1.0, 2.0], [3.0, 10.0]]], np.float32)
    ones = np.ones_like(x, bool)
    np.testing.assert_allclose(losses.robust_normalize(x, ones), (x - 2.0) / 2.5)  # median 2, s = 10 / 4
    m = np.array([[[True, True], [True, False]]])
    # official: median of M*x = [1, 2, 3, 0] -> lower middle 1; s = (0 + 1 + 2) / 3 = 1
    np.testing.assert_allclose(losses.robust_normalize(x, m), x - 1.0)
    # masked median: median of [1, 2, 3] = 2; s = (1 + 0 + 1) / 3
    np.testing.assert_allclose(losses.robust_normalize(x, m, median_includes_masked_zeros=False),
                               (x - 2.0) / (2.0 / 3.0), rtol=1e-6)
    np.testing.assert_allclose(losses.robust_normalize(x, np.zeros_like(m)), x)  # empty: m = 0, s = 1


def test_ssi_matches_numpy_official(rand_maps):
    p, t, m = rand_maps
    for alpha in (0.0, 0.5):
        got = float(losses.ssi_loss(p, t, m, alpha))
        assert got == pytest.approx(np_ssi(p, t, m.astype(np.float32), alpha), rel=1e-5)
    # NHWC layout gives the same value
    assert float(losses.ssi_loss(p[..., None], t[..., None], m[..., None], 0.5)) == pytest.approx(
        float(losses.ssi_loss(p, t, m, 0.5)), rel=1e-6)


def test_data_term_is_half_mae_after_normalisation(rand_maps):
    p, t, m = rand_maps
    pn, tn = np_normalize(p, m.astype(np.float32)), np_normalize(t, m.astype(np.float32))
    got = float(losses.data_term(pn, tn, m))
    assert got == pytest.approx(0.5 * np.abs(pn - tn)[m].mean(), rel=1e-5)
    # trimming: residuals [0, 1, 2, 3] with trim 0.5 keep the smallest two -> (0 + 1) / (2 * 4)
    x = np.array([[[0.0, 1.0], [2.0, 3.0]]], np.float32)
    assert float(losses.data_term(x, np.zeros_like(x), np.ones_like(x, bool), trim_fraction=0.5)) == 0.125


def test_gradient_matching_matches_numpy(rand_maps):
    p, t, m = rand_maps
    got = float(losses.gradient_matching(p, t, m))
    assert got == pytest.approx(np_grad_loss(p, t, m.astype(np.float32)), rel=1e-5)


def test_ssi_identity_affine_empty_and_gradients(rand_maps):
    p, t, m = rand_maps
    assert float(losses.ssi_loss(t, t, m)) == pytest.approx(0.0, abs=1e-6)
    assert float(losses.ssi_loss(3.0 * t + 2.0, t, m)) == pytest.approx(0.0, abs=1e-5)
    assert float(losses.ssi_loss(p, t, np.zeros_like(m))) == 0.0
    g = jax.grad(lambda x: losses.ssi_loss(x, t, np.zeros_like(m)))(jnp.asarray(p))
    assert np.all(np.asarray(g) == 0.0)
    const = jnp.full((1, 8, 8), 2.0)
    g = jax.grad(lambda x: losses.ssi_loss(x, const, jnp.ones((1, 8, 8), bool)))(const)
    assert np.all(np.isfinite(np.asarray(g)))
    # NaN / inf in the target: excluded exactly like masked pixels, finite value and gradient
    bad = t.copy()
    bad[0, 0, :4] = [np.nan, np.inf, -np.inf, np.nan]
    mm = m.copy()
    mm[0, 0, :4] = False
    v, g = jax.value_and_grad(lambda x: losses.ssi_loss(x, bad, m))(jnp.asarray(p))
    assert float(v) == pytest.approx(float(losses.ssi_loss(p, t, mm)), rel=1e-6)
    assert np.all(np.isfinite(np.asarray(g)))
    with pytest.raises(UserError, match="one shape"):
        losses.ssi_loss(p, t[:, :8], m)


def test_soft_mask_loss_selects_documented_pixels():
    m = (np.arange(16, dtype=np.float32) / 15.0).reshape(1, 4, 4, 1)
    edge = np.zeros((1, 4, 4, 1), bool)
    edge[0, 0, :] = True  # values 0, 1, 2, 3 (/15)
    flat = np.zeros((1, 4, 4, 1), bool)
    flat[0, 3, :] = True  # values 12, 13, 14, 15
    # lo = sorted[floor(0.15 * 16) = 2] = 2/15 -> edge pixels with m > lo: 3/15 -> E = 3/15
    # hi = sorted[floor(0.85 * 16) = 13] = 13/15 -> flat pixels with m < hi: 12/15 -> F = 1 - 12/15
    got = float(losses.soft_mask_loss(m, edge, flat))
    assert got == pytest.approx(3 / 15 + 3 / 15, rel=1e-6)
    assert float(losses.soft_mask_loss(m, np.zeros_like(edge), np.zeros_like(flat))) == 0.0


def test_region_gradient_loss_closed_form():
    rng = np.random.RandomState(1)
    g0 = rng.rand(1, 8, 8).astype(np.float32)
    gs = 2.0 * g0 + 1.0
    regions = np.zeros((1, 2, 8, 8), bool)
    regions[0, 0, :4] = True
    regions[0, 1, 4:, 4:] = True
    assert float(losses.region_gradient_loss(g0, gs, regions)) == pytest.approx(0.0, abs=1e-5)
    # one region, G_S constant 1 off a two-valued G_0: the LSQ fit is exact except nothing -> 0;
    # with G_S = [0, 1, 0, 1] vs G_0 = [0, 0, 1, 1] the fit is the mean 0.5: L1 = 0.5, / N_g = 2 -> 0.25
    g0 = np.array([[[0.0, 0.0], [1.0, 1.0]]], np.float32)
    gs = np.array([[[0.0, 1.0], [0.0, 1.0]]], np.float32)
    reg = np.zeros((1, 2, 2, 2), bool)
    reg[0, 0] = True
    assert float(losses.region_gradient_loss(g0, gs, reg)) == pytest.approx(0.25, rel=1e-6)


def np_fusion(m, gs, a=0.02, n_w=4):
    om = 1.0 - m.reshape(m.shape[0], -1)
    g = gs.reshape(gs.shape[0], -1)
    out = []
    for o, gg in zip(om, g):
        tot = 0.0
        for n in range(1, n_w + 1):
            tl, th = np.quantile(gg, n * a), np.quantile(gg, 1 - n * a)
            ol, oh = np.quantile(o, n * a), np.quantile(o, 1 - n * a)
            tot += np.maximum(0, o - ol)[gg < tl].sum() + np.maximum(0, oh - o)[gg > th].sum()
        out.append(tot / (n_w * o.size))
    return np.mean(out)


def test_fusion_loss_matches_numpy():
    rng = np.random.RandomState(2)
    m = rng.rand(2, 10, 10, 1).astype(np.float32)
    gs = rng.rand(2, 10, 10, 1).astype(np.float32)
    assert float(losses.fusion_loss(m, gs)) == pytest.approx(np_fusion(m, gs), rel=1e-5)


def _case(b=2, s=32, seed=0):
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:s, 0:s]
    depth = np.stack([1.0 + (xx > s // 2 + i) + 0.5 * (yy > s // 3) + 0.01 * rng.rand(s, s)
                      for i in range(b)])
    depth = depth[..., None].astype(np.float32)
    out = Out(jnp.asarray(depth), jnp.asarray(depth[:, ::2, ::2]), jnp.asarray(depth[:, ::4, ::4]),
              jnp.asarray(rng.rand(b, s // 4, s // 4, 1).astype(np.float32)),
              jnp.asarray(rng.rand(b, s // 2, s // 2, 1).astype(np.float32)))
    batch = {"rgb": jnp.asarray(rng.rand(b, s, s, 3).astype(np.float32)), "low": out.refined,
             "high": out.refined,
             "depth": jnp.asarray(depth), "valid": jnp.ones(depth.shape, bool)}
    return out, batch, _labels(batch["depth"])


@jax.jit
def _labels(depth):
    g = edges.sobel_abs(depth)
    return {"edge": g, "mask_edge": edges.mask_edge(g), "mask_flat": edges.mask_flat(g),
            "regions": edges.edge_regions(g)}


def test_official_composite():
    out, batch, labels = _case()
    total, aux = losses.official_loss(out, batch, labels, None)
    assert float(aux["l_gt"]) == pytest.approx(0.0, abs=1e-5)  # refined == GT at every scale
    assert float(aux["l_local"]) == pytest.approx(0.0, abs=1e-5)  # G(refined) == G_S
    assert float(aux["l_mask"]) > 0 and float(aux["l_rank"]) == 0.0
    assert float(total) == pytest.approx(float(aux["l_gt"] + aux["l_mask"] + 0.25 * aux["l_local"]), rel=1e-6)
    # the soft-mask term by hand: w_mask * (E + F) summed over m6 and m5, label masks resized by nearest
    from sddr_jax.ops import resize_nearest
    me, mf = labels["mask_edge"], labels["mask_flat"]
    exp = sum(0.1 * float(losses.soft_mask_loss(m, resize_nearest(me, m.shape[1:3]),
                                                resize_nearest(mf, m.shape[1:3])))
              for m in (out.mask_half, out.mask_quart))
    assert float(aux["l_mask"]) == pytest.approx(exp, rel=1e-6)
    # labels=None gives L_gt only, and batch size 1 works
    one = jax.tree.map(lambda x: x[:1], (out, batch))
    t1, aux1 = losses.official_loss(*one, None, None)
    assert float(t1) == float(aux1["l_gt"]) and float(t1) == pytest.approx(0.0, abs=1e-5)
    assert float(aux1["l_mask"]) == 0.0


def test_official_square_flag_and_gradients():
    out, batch, labels = _case(seed=1)
    noisy = out._replace(refined=out.refined + 0.1 * jnp.sin(jnp.arange(32.0))[None, :, None, None])
    t_sq, aux = losses.official_loss(noisy, batch, labels, {"square_grad_weight": True})
    t_lin, _ = losses.official_loss(noisy, batch, labels, {"square_grad_weight": False})
    assert float(aux["l_local"]) > 0
    assert float(t_lin - t_sq) == pytest.approx(0.25 * float(aux["l_local"]), rel=1e-4)
    bad = dict(batch)
    bad["depth"] = batch["depth"].at[:, :3].set(jnp.nan)
    bad["valid"] = batch["valid"].at[:, :3].set(False)
    g = jax.grad(lambda o: losses.official_loss(o, bad, labels, None)[0])(noisy)
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(g))


def test_paper_composite_and_pmap():
    out, batch, labels = _case(seed=2)
    f = jax.jit(lambda o, b, l: losses.paper_loss(o, b, l, None))
    total, aux = f(out, batch, labels)
    assert float(aux["l_gt"]) == pytest.approx(0.0, abs=1e-5)
    assert float(aux["l_grad"]) == pytest.approx(0.0, abs=1e-4)  # G(refined) == G_S, beta = (1, 0)
    assert float(total) == pytest.approx(float(aux["l_gt"] + 0.5 * aux["l_grad"] + 0.1 * aux["l_fusion"]),
                                         rel=1e-5)
    # per-device step body under pmap (2 simulated devices, batch 1 each) gives the per-half values
    halves = jax.tree.map(lambda x: x.reshape((2, 1) + x.shape[1:]), (out, batch, labels))
    per_dev = jax.pmap(lambda o, b, l: losses.paper_loss(o, b, l, None)[0],
                       devices=jax.devices()[:2])(*halves)
    for i in range(2):
        one = jax.tree.map(lambda x: x[i:i + 1], (out, batch, labels))
        assert float(per_dev[i]) == pytest.approx(float(f(*one)[0]), rel=1e-5)


def test_ranking_loss_properties():
    rng = np.random.RandomState(3)
    s = 16
    yy, xx = np.mgrid[0:s, 0:s]
    target = (1.0 + (xx > 7) + 0.3 * rng.rand(s, s)).astype(np.float32)[None]
    img = target.copy()
    key = jax.random.key(0)
    f = jax.jit(losses.ranking_loss, static_argnames=("legacy_anchor_column_bug",))
    good = float(f(target, target, img, key))
    bad = float(f(-target, target, img, key))
    assert good < bad
    assert float(f(target, target, img, key)) == good  # deterministic for a key
    zero_pred = float(f(np.zeros_like(target), target, img, key))
    assert 0.0 < zero_pred <= np.log(2.0) + 1e-6  # equal preds: log 2 on unequal pairs, 0 on equal ones
    const = np.ones_like(target)
    assert float(f(const, const, img, key)) == 0.0  # every pair equal, zero difference
    legacy = float(f(-target, target, img, key, legacy_anchor_column_bug=True))
    assert legacy != bad
    cfg = losses.default_loss_config("official")
    cfg.w_rank = 1.0
    out, batch, labels = _case(b=1, s=16, seed=3)
    _, aux = jax.jit(lambda o, b, l: losses.official_loss(o, b, l, cfg))(out, batch, labels)
    assert float(aux["l_rank"]) > 0


def test_registry():
    assert {"official", "paper"} <= set(losses.LOSSES)
    with pytest.raises(UserError, match="official"):
        losses.get_loss("nope")
    cfg = losses.default_loss_config("official")
    assert (cfg.w_ssi, cfg.w_mask, cfg.w_grad, cfg.w_rank) == (1.0, 0.1, 0.5, 0.0) and cfg.square_grad_weight
    assert losses.default_loss_config("paper").fusion_a == 0.02
    with pytest.raises(UserError, match="unknown field"):
        losses.official_loss(*_case(b=1, s=16)[:2], None, {"w_typo": 1.0})

    @losses.register_loss("test_l1")
    def l1(outputs, batch, labels, config):
        v = jnp.mean(jnp.abs(outputs.refined - batch["depth"]))
        return v, {"l1": v}

    try:
        out, batch, _ = _case(b=1, s=16)
        assert float(losses.get_loss("test_l1")(out, batch, None, None)[0]) == 0.0
        assert losses.default_loss_config("test_l1").name == "test_l1"
    finally:
        losses.LOSSES.pop("test_l1")


def test_composite_input_errors():
    out, batch, labels = _case(b=1, s=16)
    with pytest.raises(UserError, match="valid"):
        losses.official_loss(out, {"depth": batch["depth"]}, None, None)
    with pytest.raises(UserError, match="mask_edge"):
        losses.official_loss(out, batch, {"edge": labels["edge"]}, None)
    with pytest.raises(UserError, match="shape"):
        losses.official_loss(out, dict(batch, depth=batch["depth"][:, :8]), None, None)
