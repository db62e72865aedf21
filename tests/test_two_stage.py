"""Batched coarse-to-fine pipelines (docs/method.md §5.2, §6) against plain sequential ports of the official loop."""
import functools

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sddr_jax.inference import windows as W
from sddr_jax.inference.two_stage import refine_two_stage
from sddr_jax.training.labels import edge_labels
from sddr_jax.edges import sobel_abs
from sddr_jax.errors import UserError
from sddr_jax.ops import resize_bilinear

S = 64  # stand-in refiner size (the stand-in has no multiple-of-128 constraint)
H, WD = 160, 256
SCHEDULE = W.OFFICIAL_SCHEDULE
OPTS = dict(size=S, base_resolution=0, global_sizes=(48, 96))  # small predictor sizes, several levels in use


def _norm(x):
    lo = x.min(axis=(1, 2, 3), keepdims=True)
    return (x - lo) / (x.max(axis=(1, 2, 3), keepdims=True) - lo)


def toy_refiner(params, low, high):
    """Stand-in refiner: non-linear, spatially coupled (3x3 box blur), parameterised, cheap to compile."""
    mix = params["a"] * _norm(low) + (1 - params["a"]) * _norm(high) ** 2
    p = jnp.pad(mix, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = low.shape[1:3]
    blur = sum(p[:, i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9.0
    return blur + params["b"] * _norm(high)


def toy_predictor(image, size):
    """Deterministic stand-in predictor whose output depends on the resolution it runs at."""
    g = resize_bilinear(image.mean(-1, keepdims=True), (size, size))
    return g + 0.05 * jnp.sin(size / 7.0 + 9.0 * g)


def identity_refiner(params, low, high):
    """A refiner that trusts the high input completely (for the perfect-predictor test)."""
    return high


def gt_predictor(image, size):
    """The perfect predictor: the ground truth itself, resized."""
    return resize_bilinear(image, (size, size))


PARAMS = {"a": jnp.float32(0.6), "b": jnp.float32(0.2)}


@functools.lru_cache(maxsize=None)
def _jit_refiner(fn):
    return jax.jit(fn)


def sequential_two_stage(params, rgb, predictor, refiner_fn, schedule, size, base_resolution, global_sizes,
                         max_resolution=2048, labels=False, base=None, border="zero"):
    """Plain port of the official loop: one window at a time, host numpy/OpenCV for every step except the
    predictor and refiner calls (batch of one). With labels=True also the §6 gradient track; with `base`
    the global pass is skipped and the steps start from that map."""
    h, w = rgb.shape[:2]
    refine = _jit_refiner(refiner_fn)

    def predict(img, res):
        return np.asarray(resize_bilinear(predictor(jnp.asarray(img)[None], res), (size, size)))

    if base is None:
        low, high = predict(rgb, global_sizes[0]), predict(rgb, global_sizes[1])
        d0 = np.asarray(refine(params, low, high))[0, ..., 0]
        d0 = (d0 - d0.min()) / (d0.max() - d0.min())
        base = cv2.resize(d0, (w, h), interpolation=cv2.INTER_NEAREST)
    label = np.asarray(sobel_abs(base, border=border))
    for pieces, cover in schedule:
        upd, new_label = base.copy(), label.copy()
        wins = W.window_grid(h, w, pieces, cover)
        levels = W.resolution_factors_host(base, wins)
        for n, win in enumerate(wins):
            factor = W.RESOLUTION_FACTORS[levels[n]]
            res = W.adaptive_resolution(win.shape, factor, base_resolution, max_resolution)
            sl = (slice(win.y0, win.y1), slice(win.x0, win.x1))
            high = predict(rgb[sl], res)
            low = cv2.resize(base[sl], (size, size), interpolation=cv2.INTER_NEAREST)
            ref = np.asarray(refine(params, jnp.asarray(low)[None, ..., None], jnp.asarray(high)))[0, ..., 0]
            # official compute_scale_and_shift (normal equations), in float64
            r, t = ref.astype(np.float64), low.astype(np.float64)
            a00, a01, a11, b0, b1 = (r * r).sum(), r.sum(), r.size, (r * t).sum(), t.sum()
            det = a00 * a11 - a01 * a01
            sc, sh = ((a11 * b0 - a01 * b1) / det, (-a01 * b0 + a00 * b1) / det) if det > 0 else (0.0, 0.0)
            merged = cv2.resize((sc * r + sh).astype(np.float32), (win.width, win.height),
                                interpolation=cv2.INTER_CUBIC)
            mask = cv2.resize(W.feather_base(), (win.width, win.height), interpolation=cv2.INTER_LINEAR)
            upd[sl] = upd[sl] * (1 - mask) + merged * mask
            if labels:
                g = np.asarray(sobel_abs(merged, border=border)).astype(np.float64)
                prev = label[sl].astype(np.float64)
                gi, pi = g[1:-1, 1:-1].ravel(), prev[1:-1, 1:-1].ravel()
                b1_, b0_ = np.polyfit(gi, pi, 1)
                m = mask.copy()
                m[0], m[-1], m[:, 0], m[:, -1] = 0, 0, 0, 0
                new_label[sl] = new_label[sl] * (1 - m) + (b1_ * g + b0_) * m
        base = cv2.resize(upd, (w, h), interpolation=cv2.INTER_NEAREST)
        label = new_label
    return (base, label) if labels else base


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    imgs = []
    for k in range(2):
        x = cv2.GaussianBlur(rng.random((H, WD, 3)).astype(np.float32), (0, 0), 3 + 2 * k)
        x[40 * k : 40 * k + 50, 100:180] += 0.3  # a sharp-edged box: uneven edge density
        imgs.append(x)
    return np.stack(imgs)


@pytest.fixture(scope="module")
def sequential(images):
    return np.stack([sequential_two_stage(PARAMS, im, toy_predictor, toy_refiner, SCHEDULE, S, 0, (48, 96))
                     for im in images])


def test_batched_two_stage_equals_sequential(images, sequential):
    with jax.default_matmul_precision("highest"):
        graph = np.asarray(refine_two_stage(PARAMS, images, toy_predictor, refiner_fn=toy_refiner, **OPTS))
        host = np.asarray(refine_two_stage(PARAMS, images, toy_predictor, refiner_fn=toy_refiner,
                                           plan_on_host=True, **OPTS))
        grouped = np.asarray(refine_two_stage(PARAMS, images, toy_predictor, refiner_fn=toy_refiner,
                                              window_batch=None, **OPTS))
    assert graph.shape == (2, H, WD, 1)
    for out in (graph, host, grouped):
        np.testing.assert_allclose(out[..., 0], sequential, atol=2e-5)
    # the resolution levels really differ between windows (the grouping is exercised)
    lv = W.resolution_factors_host(sequential[0], W.window_grid(H, WD, 3, 0.25))
    assert len(set(lv.tolist())) > 1


def test_two_stage_runs_the_predictor_once_per_window_at_its_resolution(images):
    """A predictor that logs every call it really executes (a host callback: under jit only the branch that
    runs calls back): one call per window and per global size, at the resolutions the sequential port of the
    official loop picks; no candidate resolution is predicted and thrown away."""
    calls = []

    def logging_predictor(image, size):
        crop = image.shape[1]  # static: the window height tells the step
        jax.debug.callback(lambda x, size=size: calls.append((crop, size, int(x.shape[0]))), image[:, 0, 0, 0])
        return toy_predictor(image, size)

    # base resolution 32: the candidates differ within a step (96/128 for 2x2, 64/96 for 3x3)
    opts = dict(OPTS, base_resolution=32, global_sizes=(40, 200))
    sequential_two_stage(PARAMS, images[0], logging_predictor, toy_refiner, SCHEDULE, S, 32, (40, 200))
    want = sorted(calls)
    per_step = {}
    for crop, size, _ in calls[2:]:
        per_step.setdefault(crop, set()).add(size)
    calls.clear()
    out = refine_two_stage(PARAMS, images[:1], logging_predictor, refiner_fn=toy_refiner, **opts)
    jax.block_until_ready(out)
    assert len(want) == 2 + 4 + 9 and all(n == 1 for *_, n in want)
    assert sorted(calls) == want
    # a step whose windows run at different resolutions, so a wrong choice would show
    assert max(len(v) for v in per_step.values()) >= 2, per_step


def test_two_stage_inside_jit(images, sequential):
    fn = jax.jit(functools.partial(refine_two_stage, predictor=toy_predictor, refiner_fn=toy_refiner, **OPTS))
    out = np.asarray(fn(PARAMS, images))
    np.testing.assert_allclose(out[..., 0], sequential, atol=2e-5)


def test_two_stage_average_blend(images):
    # One step, one window per image column: "average" differs from "official" only in the overlaps.
    kw = dict(OPTS, refiner_fn=toy_refiner)
    off = np.asarray(refine_two_stage(PARAMS, images[:1], toy_predictor, ((2, 0.2),), blend="official", **kw))
    avg = np.asarray(refine_two_stage(PARAMS, images[:1], toy_predictor, ((2, 0.2),), blend="average", **kw))
    wins = W.window_grid(H, WD, 2, 0.2)
    only_first = np.zeros((H, WD), bool)
    only_first[wins[0].y0 : wins[0].y1, wins[0].x0 : wins[0].x1] = True
    for w in wins[1:]:
        only_first[w.y0 : w.y1, w.x0 : w.x1] = False
    np.testing.assert_allclose(off[0, only_first], avg[0, only_first], atol=1e-6)
    assert np.abs(off - avg).max() > 1e-4


def test_two_stage_rejects_bad_arguments(images):
    with pytest.raises(UserError, match="blend"):
        refine_two_stage(PARAMS, images, toy_predictor, blend="max", refiner_fn=toy_refiner, **OPTS)
    with pytest.raises(UserError, match="resolution"):
        refine_two_stage(PARAMS, images, toy_predictor, resolution="paper?", refiner_fn=toy_refiner, **OPTS)
    with pytest.raises(UserError, match="image batch"):
        refine_two_stage(PARAMS, images[0], toy_predictor, refiner_fn=toy_refiner, **OPTS)
    with pytest.raises(UserError, match="predict"):
        refine_two_stage(PARAMS, images, lambda im, s: im[:, :s, :s], refiner_fn=toy_refiner, **OPTS)


def _student_maps(images):
    """The student's inputs of the label tests: the stand-in predictor at two resolutions, at image size."""
    x = jnp.asarray(images)
    return (resize_bilinear(toy_predictor(x, 48), (H, WD)), resize_bilinear(toy_predictor(x, 96), (H, WD)))


LABEL_OPTS = dict(size=S, base_resolution=0)


def test_edge_labels_equal_sequential(images):
    """G_S (docs/method.md §6) against a one-window-at-a-time port: the global pass refines the student's own
    low/high maps at image size, every window's high input is the predictor re-run on its crop at the
    official adaptive resolution, gradients with the replicate border."""
    low, high = _student_maps(images)
    with jax.default_matmul_precision("highest"):
        labels = edge_labels(PARAMS, low, high, images, toy_predictor, refiner_fn=toy_refiner, **LABEL_OPTS)
    ref = []
    for i, im in enumerate(images):
        d0 = np.asarray(_jit_refiner(toy_refiner)(PARAMS, low[i:i + 1], high[i:i + 1]))[0, ..., 0]
        base = (d0 - d0.min()) / (d0.max() - d0.min())
        ref.append(sequential_two_stage(PARAMS, im, toy_predictor, toy_refiner, SCHEDULE, S, 0, None,
                                        labels=True, base=base, border="replicate"))
    np.testing.assert_allclose(np.asarray(labels["depth"])[..., 0], np.stack([r[0] for r in ref]), atol=2e-5)
    edge = np.asarray(labels["edge"])[..., 0]
    ref_edge = np.stack([r[1] for r in ref])
    np.testing.assert_allclose(edge, ref_edge, atol=2e-4 * ref_edge.max())
    assert labels["mask_edge"].shape == (2, H, WD, 1) and labels["mask_edge"].dtype == jnp.bool_
    assert labels["regions"].shape == (2, 4, H, WD)
    frac = float(jnp.mean(labels["mask_edge"]))
    assert 0.1 < frac < 0.2  # 85th percentile
    # the frame is in no mask and no region (the student's zero-padded G(.) makes it a step)
    for k in ("mask_edge", "mask_flat"):
        m = np.asarray(labels[k])[..., 0]
        assert not m[:, 0].any() and not m[:, -1].any() and not m[:, :, 0].any() and not m[:, :, -1].any()


def test_edge_labels_global_pass_is_the_students_maps(images):
    """No window: G_S = G(min-max(refiner(low, high))) exactly, with the student's maps as given."""
    low, high = _student_maps(images)
    out = edge_labels(PARAMS, low, high, images, toy_predictor, (), refiner_fn=identity_refiner, **LABEL_OPTS)
    h = np.asarray(high)
    h = (h - h.min(axis=(1, 2, 3), keepdims=True)) / np.ptp(h, axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(np.asarray(out["depth"]), h, atol=1e-6)
    np.testing.assert_allclose(np.asarray(out["edge"]), np.asarray(sobel_abs(h, border="replicate")), atol=1e-5)


def test_edge_labels_run_each_window_at_its_chosen_resolution(images):
    """A predictor whose output is its resolution / 1000 and a spy refiner: each window's high input shows the
    resolution it was predicted at, which must be the official rule's for the level of that window."""
    def res_predictor(image, size):
        return jnp.full((image.shape[0], size, size, 1), size / 1000.0, jnp.float32)

    low, high = _student_maps(images)
    seen = []

    def spy_refiner(params, low_, high_):
        if low_.shape[1:3] == (H, WD):  # the global pass
            return toy_refiner(params, low_, high_)
        jax.debug.callback(lambda h: seen.append(np.asarray(h)[:, 0, 0, 0]), high_)
        return toy_refiner(params, low_, high_)

    out = edge_labels(PARAMS, low, high, images, res_predictor, ((2, 0.2),), refiner_fn=spy_refiner, **LABEL_OPTS)
    jax.block_until_ready(out)
    base = np.asarray(edge_labels(PARAMS, low, high, images, res_predictor, (), refiner_fn=toy_refiner,
                                  **LABEL_OPTS)["depth"])
    wins = W.window_grid(H, WD, 2, 0.2)
    levels = np.stack([W.resolution_factors_host(b[..., 0], wins) for b in base])
    got = np.rint(seen[-1] * 1000).astype(int).reshape(len(images), len(wins))
    want = np.array([[W.adaptive_resolution(w.shape, W.RESOLUTION_FACTORS[lv], 0) for w, lv in zip(wins, row)]
                     for row in levels])
    np.testing.assert_array_equal(got, want)
    assert len(set(want.ravel())) > 1  # several levels in use, so the test can tell them apart


def test_edge_labels_perfect_predictor_recovers_sobel_of_gt():
    """Ground truth as the student's maps and as predictor, and a refiner that trusts it: G_S = G(gt) up to the
    alignment, frame included (the replicate border makes no step there).

    The global pass alone is exact; the windows add only the interpolation error of the predictor's
    bilinear resampling (~2 % of the maximum gradient on this smooth map).
    """
    yy, xx = np.mgrid[0:128, 0:128].astype(np.float32) / 128.0
    gt = (1.0 + 0.5 * xx + 0.3 * np.sin(2.5 * yy) + 0.2 * np.cos(3.0 * xx * yy))[None, ..., None]
    norm = (gt - gt.min()) / np.ptp(gt)
    ref = np.asarray(sobel_abs(norm, border="replicate"))[0, ..., 0]
    for schedule, tol in (((), 1e-4), (W.OFFICIAL_SCHEDULE, 0.03)):
        out = edge_labels({}, gt, gt, gt, gt_predictor, schedule, size=128, base_resolution=64,
                          refiner_fn=identity_refiner)
        g = np.asarray(out["edge"])[0, ..., 0]
        scale, shift = np.polyfit(ref.ravel(), g.ravel(), 1)
        assert np.abs(scale * ref + shift - g).max() / ref.max() < tol
        assert abs(shift) < 0.01 * scale * ref.mean()  # a pure scale: no offset


@pytest.mark.slow
def test_real_refiner_batched_step_equals_sequential(images, sequential):
    """The MiT-b0 Refiner (random parameters, S = 128): one batched 2x2 step against the sequential loop.

    The global pass is the same code with any refiner (tested above with the stand-in); starting both from
    the same base map keeps this test to two refiner compilations.
    """
    from sddr_jax.inference.two_stage import official_refiner, partition_predictor, two_stage_step
    from sddr_jax.models import Refiner

    x = jnp.zeros((1, 128, 128, 1))
    shapes = jax.eval_shape(Refiner().init, jax.random.PRNGKey(0), x, x)["params"]
    leaves, tdef = jax.tree_util.tree_flatten_with_path(shapes)
    keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
    params = jax.tree_util.tree_unflatten(tdef, [
        jnp.ones(s.shape) if "scale" in str(p[-1]) else 0.05 * jax.random.normal(k, s.shape)
        for (p, s), k in zip(leaves, keys)
    ])
    base = sequential[:1, ..., None].astype(np.float32)
    wins = W.window_grid(H, WD, 2, 0.2)
    levels = W.resolution_factors_host(base[0, ..., 0], wins)[None]
    dyn, static = partition_predictor(toy_predictor)
    with jax.default_matmul_precision("highest"):
        out = np.asarray(two_stage_step(
            params, jnp.asarray(images[:1]), jnp.asarray(base), jnp.asarray(levels), dyn, pred_static=static,
            windows=wins, size=128, refiner_fn=official_refiner, blend="official",
            resolution_cfg=(0, 2048, False)))
        ref = sequential_two_stage(params, images[0], toy_predictor, official_refiner, ((2, 0.2),), 128, 0,
                                   (48, 96), base=base[0, ..., 0])
    assert np.isfinite(out).all() and np.abs(out[0, ..., 0] - base[0, ..., 0]).max() > 1e-3
    np.testing.assert_allclose(out[0, ..., 0], ref, atol=1e-4)
