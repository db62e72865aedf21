"""The predictor protocol and its three implementations (sddr_jax.predictors)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sddr_jax import noise
from sddr_jax.errors import UserError
from sddr_jax.ops import resize_bilinear, resize_nearest
from sddr_jax.inference.predictors import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelPredictor,
    PrecomputedPredictor,
    Predictor,
    SimulatedPredictor,
    make_predictor,
    predictor_names,
    register_predictor,
    stack_maps,
)


def test_precomputed_predictor_serves_low_and_high_maps():
    rng = np.random.default_rng(0)
    low = jnp.asarray(rng.random((2, 14, 14, 1)), jnp.float32)
    high = jnp.asarray(rng.random((2, 30, 40, 1)), jnp.float32)
    image = stack_maps(low, high, 30, 40)
    assert image.shape == (2, 30, 40, 2)
    np.testing.assert_array_equal(np.asarray(image[..., 1:]), np.asarray(high))  # same size: untouched
    np.testing.assert_allclose(np.asarray(image[..., :1]), np.asarray(resize_bilinear(low, (30, 40))), atol=0)
    pred = PrecomputedPredictor(low_resolution=16)
    assert isinstance(pred, Predictor)
    np.testing.assert_allclose(pred(image, 16), resize_bilinear(image[..., :1], (16, 16)))
    np.testing.assert_allclose(pred(image, 24), resize_bilinear(image[..., 1:], (24, 24)))
    crop = image[:, 5:20, 10:30]  # a window crop is a crop of the stored maps
    np.testing.assert_allclose(pred(crop, 32), resize_bilinear(high[:, 5:20, 10:30], (32, 32)))
    nearest = stack_maps(low, high, 28, 28, method="nearest")
    np.testing.assert_array_equal(np.asarray(nearest[..., :1]), np.asarray(resize_nearest(low, (28, 28))))
    with pytest.raises(UserError, match=r"\(B, H, W, 2\)"):
        pred(low, 16)


def test_model_predictor_preprocessing_and_output():
    seen = {}

    def apply_fn(params, x):
        seen["x"] = x
        return params["w"] * x[..., 0][:, ::2, ::2]  # (B, s/2, s/2): resized back by the wrapper

    rgb = jnp.asarray(np.random.default_rng(1).random((2, 20, 30, 3)), jnp.float32)
    pred = ModelPredictor(params={"w": jnp.float32(2.0)}, apply_fn=apply_fn)
    out = pred(rgb, 16)
    assert out.shape == (2, 16, 16, 1) and out.dtype == jnp.float32
    x = (resize_bilinear(rgb, (16, 16)) - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)
    np.testing.assert_allclose(np.asarray(seen["x"]), np.asarray(x), atol=1e-6)
    expect = resize_bilinear(2.0 * x[..., :1][:, ::2, ::2], (16, 16))
    np.testing.assert_allclose(np.asarray(out), np.asarray(expect), atol=1e-6)
    # jit with the predictor as an argument: params are leaves, a new value does not change the result shape
    f = jax.jit(lambda p, im: p(im, 16))
    np.testing.assert_allclose(np.asarray(f(pred, rgb)), np.asarray(out), atol=1e-6)
    pred3 = pred.replace(params={"w": jnp.float32(3.0)})
    np.testing.assert_allclose(np.asarray(f(pred3, rgb)), 1.5 * np.asarray(out), atol=1e-5)
    raw = ModelPredictor(params={"w": jnp.float32(1.0)}, apply_fn=lambda p, x: x.mean(-1, keepdims=True),
                         mean=None, postprocess=lambda y: 1.0 - y)
    expect = 1.0 - resize_bilinear(rgb, (20, 20)).mean(-1, keepdims=True)
    np.testing.assert_allclose(np.asarray(raw(rgb, 20)), np.asarray(expect), atol=1e-6)
    bad = ModelPredictor(params={}, apply_fn=lambda p, x: x)
    with pytest.raises(UserError, match="apply_fn must return"):
        bad(rgb, 8)


def test_simulated_predictor_wraps_noise_model():
    yy, xx = np.mgrid[0:32, 0:48].astype(np.float32)
    gt = jnp.asarray(1.0 + xx / 48.0 + (yy > 14) * 0.5)[None, ..., None]
    key = jax.random.PRNGKey(3)
    pred = SimulatedPredictor.create(key, train_res=16)
    f = jax.jit(lambda p, g: p(g, 24))  # the noise model is slow op by op: always jitted here
    out = f(pred, gt)
    assert out.shape == (1, 24, 24, 1)
    ref = jax.jit(lambda g, k: noise.simulated_predict(g, 24, k, train_res=16))(gt, key)
    np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-6)
    np.testing.assert_allclose(np.asarray(f(pred, gt)), np.asarray(out))  # fixed key: deterministic
    other = f(pred.replace(key=jax.random.PRNGKey(4)), gt)  # the key is a leaf: same compiled function
    assert np.abs(np.asarray(other) - np.asarray(out)).max() > 1e-4
    with pytest.raises(UserError, match=r"depth \+ RGB"):
        pred(jnp.zeros((1, 8, 8, 3)), 16)


def test_predictor_registry_names_factories_and_errors(tmp_path, monkeypatch):
    from sddr_jax.inference import predictors as P

    monkeypatch.setattr(P, "_REGISTRY", dict(P._REGISTRY))  # registrations stay inside this test
    assert {"depth-anything-v2", "depth-anything-v2-small", "depth-anything-v2-base",
            "depth-anything-v2-large"} <= set(predictor_names())
    seen = {}

    def factory(weights, **options):
        seen.update(weights=weights, **options)
        return lambda image, size: resize_bilinear(image[..., :1], (size, size)) * 2.0

    register_predictor("double", factory)
    pred = make_predictor("double", "w.bin", output="disparity", dtype=None)
    assert seen == {"weights": "w.bin", "output": "disparity", "dtype": None}
    img = jnp.full((1, 8, 8, 3), 0.25)
    np.testing.assert_allclose(np.asarray(pred(img, 4)), 0.5)
    with pytest.raises(UserError, match="'double' is already registered"):
        register_predictor("double", factory)
    register_predictor("double", lambda w, **o: pred, overwrite=True)
    with pytest.raises(UserError, match="without ':'"):
        register_predictor("a:b", factory)
    with pytest.raises(UserError, match="must be callable"):
        register_predictor("nope", 3)
    with pytest.raises(UserError, match=r"predictor 'missing': expected one of \[.*'double'"):
        make_predictor("missing")
    with pytest.raises(UserError, match="needs its weights"):
        make_predictor("depth-anything-v2-small")
    # "package.module:factory" imports the factory
    (tmp_path / "my_predictors.py").write_text(
        "def build(weights, **options):\n"
        "    return lambda image, size: image[..., :1]\n"
        "BAD = 3\n"
        "def not_a_predictor(weights, **options):\n"
        "    return 'x'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert callable(make_predictor("my_predictors:build"))
    with pytest.raises(UserError, match="cannot import module 'no_such_mod'"):
        make_predictor("no_such_mod:build")
    with pytest.raises(UserError, match="has no 'missing'"):
        make_predictor("my_predictors:missing")
    with pytest.raises(UserError, match="'BAD' is not callable"):
        make_predictor("my_predictors:BAD")
    with pytest.raises(UserError, match="returned str, not a predictor"):
        make_predictor("my_predictors:not_a_predictor")
