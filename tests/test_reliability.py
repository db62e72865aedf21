"""The Python API validates at its boundary: params against the model they are applied to, non-finite inputs in
every entry point, sizes before allocating, and images that could not be scored are counted."""
import numpy as np
import pytest

from sddr_jax import io
from sddr_jax.errors import UserError
from sddr_jax.eval.evaluate import evaluate_dataset
from sddr_jax.inference.one_stage import check_size, refine_one_stage
from sddr_jax.inference.predictors import PrecomputedPredictor, stack_maps
from sddr_jax.inference.two_stage import refine_two_stage
from sddr_jax.models import param_shapes


def _zeros(model_config=None):
    tree: dict = {}
    for path, shape in param_shapes(model_config).items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = np.zeros(shape, np.float32)
    return tree


@pytest.fixture(scope="module")
def b0_zeros():
    return _zeros()


MAP = np.random.default_rng(0).random((32, 48)).astype(np.float32)


def test_refine_one_stage_checks_params(b0_zeros):
    with pytest.raises(UserError, match=r"refine_one_stage params: parameters do not fit .*missing: "):
        refine_one_stage({}, MAP, MAP, size=128)
    broken = {**b0_zeros, "grad": {"kernel": np.zeros((3, 3, 1, 1), np.float32),
                                   "bias": b0_zeros["grad"]["bias"]}}
    with pytest.raises(UserError, match=r"wrong shape: grad/kernel \(3, 3, 1, 1\) != \(5, 5, 1, 1\)"):
        refine_one_stage(broken, MAP, MAP, size=128)
    missing = {k: v for k, v in b0_zeros.items() if k != "decoder"}
    with pytest.raises(UserError, match="missing: decoder/"):
        refine_one_stage(missing, MAP, MAP, size=128)
    # the tree of another model config: named as such
    with pytest.raises(UserError, match="'cross_iterations': 8"):
        refine_one_stage(_zeros({"cross_iterations": 2}), MAP, MAP, size=128)


def test_refine_two_stage_checks_params_and_nan(b0_zeros):
    image = stack_maps(MAP[None, ..., None], MAP[None, ..., None], 32, 48)
    predictor = PrecomputedPredictor(low_resolution=32)
    with pytest.raises(UserError, match="refine_two_stage params: parameters do not fit"):
        refine_two_stage({}, image, predictor, size=128)
    bad = np.array(image)
    bad[0, 3, 4, 1] = np.nan
    with pytest.raises(UserError, match="refine_two_stage: the input: contains NaN.*nonfinite='fill'"):
        refine_two_stage(b0_zeros, bad, predictor, size=128)


def _copy_high(params, low, high):
    return high


def test_nonfinite_fill_is_a_named_option():
    """nonfinite="fill": a NaN pixel becomes its map's (channel's) finite mean, in one and two stages."""
    image = np.array(stack_maps(MAP[None, ..., None], (1 - MAP)[None, ..., None], 32, 48))
    bad, want = image.copy(), image.copy()
    bad[0, 3, 4, 1] = np.nan
    want[0, 3, 4, 1] = np.nanmean(bad[0, ..., 1])
    predictor = PrecomputedPredictor(low_resolution=32)
    kw = dict(size=64, refiner_fn=_copy_high, schedule=((2, 0.2),))
    np.testing.assert_allclose(np.asarray(refine_two_stage({}, bad, predictor, nonfinite="fill", **kw)),
                               np.asarray(refine_two_stage({}, want, predictor, **kw)), atol=1e-6)
    with pytest.raises(UserError, match="nonfinite: expected one of"):
        refine_two_stage({}, bad, predictor, nonfinite="zero", **kw)
    m = MAP.copy()
    m[5, 6] = np.inf
    fixed = MAP.copy()
    fixed[5, 6] = MAP[np.isfinite(m)].mean()
    from sddr_jax.inference.one_stage import handle_nonfinite

    np.testing.assert_allclose(handle_nonfinite(m[None, ..., None], "low", "fill")[0, ..., 0], fixed, rtol=1e-6)
    with pytest.raises(UserError, match="low: contains NaN or infinite values"):
        refine_one_stage({}, m, MAP, size=128)


def test_size_limit_is_checked_before_allocating(monkeypatch):
    with pytest.raises(UserError, match="--size 131072: too large"):
        check_size(131072, "--size")
    monkeypatch.setenv("SDDR_JAX_MAX_SIZE", "256")
    assert check_size(256) == 256
    with pytest.raises(UserError, match=r"size 384: too large.*SDDR_JAX_MAX_SIZE"):
        check_size(384)


def test_pixel_limit_is_overridable(tmp_path, monkeypatch):
    np.save(tmp_path / "m.npy", np.ones((20, 30), np.float32))
    assert io.read_depth(tmp_path / "m.npy").shape == (20, 30)
    monkeypatch.setenv("SDDR_JAX_MAX_PIXELS", "500")
    with pytest.raises(UserError, match=r"too large: 20x30 = 600 pixels \(limit 500"):
        io.read_depth(tmp_path / "m.npy")
    monkeypatch.setenv("SDDR_JAX_MAX_PIXELS", "lots")
    with pytest.raises(UserError, match="SDDR_JAX_MAX_PIXELS: expected a pixel count"):
        io.read_depth(tmp_path / "m.npy")


def test_evaluate_counts_the_images_it_could_not_score(tmp_path):
    y, x = np.mgrid[0:24, 0:32]
    depth = (2.0 + 0.05 * x + 0.02 * y).astype(np.float32)
    source = [{"name": n, "depth": depth, "rgb": np.zeros((24, 32, 3), np.uint8), "low": None, "high": None}
              for n in ("good", "all_nan")]
    io.write_depth(tmp_path / "good.npy", 2 * depth + 1)
    np.save(tmp_path / "all_nan.npy", np.full((24, 32), np.nan, np.float32))
    result = evaluate_dataset(source, decode=dict, predictions=tmp_path, edge_metrics=False)
    assert result["unscored"] == {"prediction": ["all_nan"]}
    assert len(result["per_image"]) == 2
    assert result["summary"]["prediction"]["delta1"] == 1.0  # the mean over the one image that was scored
