"""One-stage inference (docs/method.md §5.1) and the `sddr-jax refine` command. S = 128 keeps compiles cheap."""
import collections
import sys

import cv2
import jax.numpy as jnp
import numpy as np
import pytest

from sddr_jax import cli, convert, io
from sddr_jax.errors import UserError
from sddr_jax.ops import nearest_indices
from sddr_jax.inference.one_stage import check_size, refine_one_stage, refiner_inference
from sddr_jax.ops import minmax_normalize
from sddr_jax.convert.torch_pickle import save_torch_file

S = 128


@pytest.fixture(scope="module")
def params(official_state):
    return convert.official_to_flax(official_state.official_state_dict(0))


@pytest.fixture(scope="module")
def pair(official_state):
    low, high = official_state.official_inputs(3, 300)
    return low[0, 0, :200, :250] * 40 + 5, high[0, 0, :, :280] * 40 + 3  # different sizes, not normalised


def test_minmax_normalize():
    x = jnp.asarray(np.array([[2.0, 4.0], [6.0, 10.0]], np.float32)[None, :, :, None])
    np.testing.assert_allclose(np.asarray(minmax_normalize(x))[0, :, :, 0], [[0, 0.25], [0.5, 1.0]])
    both = jnp.concatenate([x, jnp.full_like(x, 3.0)], 0)  # second map constant: zeros, not NaN
    out = np.asarray(minmax_normalize(both))
    np.testing.assert_array_equal(out[1], 0.0)
    np.testing.assert_allclose(out[0], out[0].clip(0, 1))


@pytest.mark.parametrize("bad", [200, 0, -128, 128.0, True, "1024"])
def test_bad_sizes(bad):
    with pytest.raises(UserError, match="multiple of 128"):
        check_size(bad)
    assert check_size(2048) == 2048


def test_one_stage_follows_the_official_steps(params, pair):
    low, high = pair
    out = refine_one_stage(params, low, high, size=S)
    assert out.shape == high.shape and out.dtype == np.float32
    # the same steps by hand: R_nearest_torch to S, min-max, refiner, OpenCV linear back to (H, W)
    def prep(a):
        r = a[nearest_indices(a.shape[0], S)][:, nearest_indices(a.shape[1], S)]
        return ((r - r.min()) / (r.max() - r.min()))[None, :, :, None]

    refined = np.asarray(refiner_inference(params, jnp.asarray(prep(low)), jnp.asarray(prep(high))).refined)
    expected = cv2.resize(refined[0, :, :, 0], (high.shape[1], high.shape[0]), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    # min-max inside makes the result invariant to affine changes of either input
    moved = refine_one_stage(params, low * 3.7 + 1.2, high * 0.25 - 2.0, size=S)
    np.testing.assert_allclose(moved, out, atol=1e-4)
    # out_hw (the RGB size in the demo) and rank handling
    small = refine_one_stage(params, low[:, :, None], high[:, :, None], size=S, out_hw=(90, 120))
    assert small.shape == (90, 120, 1)
    np.testing.assert_allclose(small[:, :, 0], cv2.resize(refined[0, :, :, 0], (120, 90), interpolation=cv2.INTER_LINEAR),
                               atol=1e-5)
    # {'params': p} is accepted as well
    np.testing.assert_allclose(refine_one_stage({"params": params}, low, high, size=S), out, atol=1e-6)


def test_batched_maps_equal_single_maps(params, pair):
    low, high = pair
    lows = np.stack([low, low[::-1], low[:, ::-1]])[..., None]
    highs = np.stack([high, high[:, ::-1], high[::-1]])[..., None]
    out = refine_one_stage(params, lows, highs, size=S)  # one map per call, one compilation
    assert out.shape == (3,) + high.shape + (1,)
    np.testing.assert_allclose(out[0, :, :, 0], refine_one_stage(params, low, high, size=S), atol=1e-5)
    np.testing.assert_allclose(out[1, :, :, 0], refine_one_stage(params, low[::-1], high[:, ::-1], size=S), atol=1e-5)
    with pytest.raises(UserError, match="batch_size"):
        refine_one_stage(params, lows, highs, size=S, batch_size=0)


@pytest.mark.slow
def test_batch_size_chunks_and_pads(params, pair):
    low, high = pair
    lows = np.stack([low, low[::-1], low[:, ::-1]])[..., None]
    highs = np.stack([high, high[:, ::-1], high[::-1]])[..., None]
    out = refine_one_stage(params, lows, highs, size=S, batch_size=2)  # chunks of 2, the last one padded
    np.testing.assert_allclose(out, refine_one_stage(params, lows, highs, size=S), atol=1e-5)


def test_constant_map_gives_no_nan_and_bad_inputs_raise(params, pair):
    low, high = pair
    out = refine_one_stage(params, np.full_like(low, 4.0), high, size=S)
    assert np.isfinite(out).all()
    with pytest.raises(UserError, match="low: contains NaN"):
        refine_one_stage(params, np.where(low > 20, np.nan, low), high, size=S)
    with pytest.raises(UserError, match=r"high: expected a map of shape"):
        refine_one_stage(params, low, np.zeros((4, 5, 3)), size=S)
    with pytest.raises(UserError, match="same number of maps"):
        refine_one_stage(params, np.zeros((2, 8, 8, 1)), np.zeros((3, 8, 8, 1)), size=S)
    with pytest.raises(UserError, match="multiple of 128"):
        refine_one_stage(params, low, high, size=1000)


@pytest.mark.slow
def test_bf16_option_is_close_to_float32(params, pair):
    low, high = pair
    ref = refine_one_stage(params, low, high, size=S)
    out = refine_one_stage(params, low, high, size=S, dtype=jnp.bfloat16)
    assert out.dtype == np.float32
    err = np.abs(out - ref).max() / (ref.max() - ref.min())
    assert err < 0.05, err


def test_refine_cli(params, pair, official_state, tmp_path, capsys):
    low, high = pair
    ckpt = tmp_path / "model.pt"
    save_torch_file({"net": collections.OrderedDict(official_state.official_state_dict(0))}, ckpt)
    io.write_depth(tmp_path / "low.npy", low)
    io.write_depth(tmp_path / "high.pfm", high)
    out = tmp_path / "refined.png"
    args = ["refine", "--checkpoint", str(ckpt), "--low", str(tmp_path / "low.npy"), "--high",
            str(tmp_path / "high.pfm"), "--output", str(out), "--size", str(S)]
    assert cli.main(args) == 0
    assert "refined" in capsys.readouterr().out
    expected = io.to_uint_official(refine_one_stage(params, low, high, size=S))
    got = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert got.dtype == np.uint16 and got.shape == high.shape
    assert np.abs(got.astype(np.int64) - expected).max() <= 2  # equal up to float noise at truncation edges
    # the converted checkpoint gives the same file; existing outputs are refused; bad size is a one-line error
    converted = tmp_path / "converted"
    convert.save_params(params, converted)
    out2 = tmp_path / "refined.npy"
    assert cli.main(args[:2] + [str(converted)] + args[3:8] + [str(out2), "--size", str(S)]) == 0
    np.testing.assert_allclose(io.read_depth(out2), refine_one_stage(params, low, high, size=S), atol=1e-6)
    assert cli.main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli.main(args[:-1] + ["200", "--overwrite"]) == 2
    assert "--size must be a positive multiple of 128" in capsys.readouterr().err
    rgb = tmp_path / "rgb.png"
    cv2.imwrite(str(rgb), np.zeros((50, 70, 3), np.uint8))
    assert cli.main(args + ["--overwrite", "--rgb", str(rgb)]) == 0
    assert cv2.imread(str(out), cv2.IMREAD_UNCHANGED).shape == (50, 70)


@pytest.mark.slow
def test_refine_cli_two_stage_with_a_predictor(params, official_state, tmp_path, capsys):
    """`refine --two-stage --predictor`: RGB in, the predictor on every window; the file equals the API's map."""
    import jax

    from sddr_jax.commands.predict import read_rgb
    from sddr_jax.convert.depth_anything import export_original_state_dict
    from sddr_jax.inference.two_stage import refine_two_stage
    from sddr_jax.models.depth_anything import CONFIGS, DepthAnythingPredictor, init_params

    small = CONFIGS["small"]
    da = jax.tree_util.tree_map(np.asarray, init_params(small, 1))
    da["depth_head"]["output_conv2_2"]["bias"] = np.ones(1, np.float32)  # past the final ReLU: informative maps
    weights = tmp_path / "depth_anything_v2_vits.pth"
    save_torch_file(export_original_state_dict(da, small), weights)
    ckpt = tmp_path / "model.pt"
    save_torch_file({"net": collections.OrderedDict(official_state.official_state_dict(0))}, ckpt)
    rgb_dir = tmp_path / "rgb"
    rgb_dir.mkdir()
    rng = np.random.RandomState(7)
    for name in ("a", "b"):  # one shape: one compile
        img = cv2.GaussianBlur((rng.rand(96, 128, 3) * 255).astype(np.uint8), (0, 0), 3)
        cv2.imwrite(str(rgb_dir / f"{name}.png"), img)
    opts = ["--size", str(S), "--global-sizes", "28", "56", "--base-resolution", "0"]
    base = ["refine", "--checkpoint", str(ckpt), "--two-stage", "--predictor", "depth-anything-v2-small",
            "--predictor-weights", str(weights)]
    out = tmp_path / "a.png"
    assert cli.main(base + ["--rgb", str(rgb_dir / "a.png"), "--output", str(out)] + opts) == 0
    assert "predictor depth-anything-v2-small on every window" in capsys.readouterr().out
    predictor = DepthAnythingPredictor(da, small, output="depth", pos_embed_mode="original")
    rgb = read_rgb(str(rgb_dir / "a.png")).astype(np.float32)
    want = np.asarray(refine_two_stage(params, rgb[None], predictor, size=S, global_sizes=(28, 56),
                                       base_resolution=0))[0, ..., 0]
    got = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert got.dtype == np.uint16 and got.shape == (96, 128)
    assert np.abs(got.astype(np.int64) - io.to_uint_official(want)).max() <= 2
    assert want.std() > 1e-3  # an informative map, not a constant
    # a folder of images, raw maps and previews
    folder = tmp_path / "out"
    assert cli.main(base + ["--rgb", str(rgb_dir), "--output", str(folder), "--format", "npy", "--preview"]
                    + opts) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["a.npy", "a_preview.png", "b.npy", "b_preview.png"]
    np.testing.assert_allclose(io.read_depth(folder / "a.npy"), want, atol=1e-5)
    # errors at the boundary, one line each (exit 2)
    capsys.readouterr()
    assert cli.main(base[:3] + base[4:] + ["--rgb", str(rgb_dir), "--output", str(tmp_path / "x")] + opts) == 2
    assert "--predictor depth-anything-v2-small: a predictor runs on the windows of --two-stage" in \
        capsys.readouterr().err
    wrong = [a.replace("-small", "-base") for a in base]
    assert cli.main(wrong + ["--rgb", str(rgb_dir), "--output", str(tmp_path / "y")] + opts) == 2
    assert "not 'depth-anything-v2-base'" in capsys.readouterr().err
    assert cli.main(base + ["--rgb", str(rgb_dir / "a.png"), "--output", str(out)] + opts) == 2
    assert "already exists" in capsys.readouterr().err
