"""Depth Anything V2 in Flax: resize rules, converter, predictor, CLI; parity with transformers (torch extra)."""
from __future__ import annotations

import chex
import cv2
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sddr_jax.convert.depth_anything import (
    convert_original_state_dict,
    export_original_state_dict,
    hf_to_original,
    load_depth_anything,
)
from sddr_jax.errors import UserError
from sddr_jax.models.depth_anything import (
    CONFIGS,
    DepthAnythingConfig,
    DepthAnythingPredictor,
    DepthAnythingV2,
    init_params,
    net_input_size,
    normalize_image,
    reference_input_hw,
    resize_cubic,
)
from sddr_jax.models.dinov2 import cubic_half_pixel_matrix, interpolate_pos_embed
from sddr_jax.models.dpt import resize_bilinear_align_corners
from sddr_jax.convert.torch_pickle import save_torch_file

# A tiny architecture (2x2 stored position grid, 4 blocks) so that compiles stay cheap on 2 CPU cores.
TINY = DepthAnythingConfig("tiny", dim=32, depth=4, num_heads=2, out_indices=(0, 1, 2, 3), features=16,
                           out_channels=(8, 16, 24, 32), licence="test", pretrain_grid=2)


def _positive_head(params):
    """Random init ends in a ReLU that may zero the map; a positive last bias makes outputs informative."""
    params = jax.tree_util.tree_map(np.asarray, params)
    params["depth_head"]["output_conv2_2"]["bias"] = np.ones(1, np.float32)
    return params


@pytest.fixture(scope="module")
def tiny_params():
    return _positive_head(init_params(TINY, 0))


# ----------------------------------------------------------------------------------------------------
# resize rules (closed forms, OpenCV)


def test_net_input_size_is_lower_bound_multiple_of_14():
    assert [net_input_size(s) for s in (14, 15, 448, 518, 1024, 1036, 1920)] == [14, 28, 448, 518, 1036, 1036, 1932]
    with pytest.raises(UserError, match="size"):
        net_input_size(0)


def test_reference_input_hw_matches_hand_computation():
    # 1080x1920 at 518: scale 518/1080; height 518; width 1920*518/1080 = 920.9 -> round(65.78)*14 = 924.
    assert reference_input_hw(1080, 1920, 518) == (518, 924)
    # 100x100 at 518: 518 both ways. 300x200 at 20: scale 0.1; h 30 -> round(2.14)*14 = 28; w 20 -> 14 < 20 -> ceil -> 28.
    assert reference_input_hw(100, 100, 518) == (518, 518)
    assert reference_input_hw(300, 200, 20) == (28, 28)


def test_cubic_taps_closed_form():
    m = cubic_half_pixel_matrix(5, 5)
    np.testing.assert_allclose(m, np.eye(5), atol=1e-12)  # same size: t = 0 -> weights (0, 1, 0, 0)
    m = cubic_half_pixel_matrix(4, 8)
    np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-12)
    # x2 upsampling, output 4 sits at source 1.75: Keys a=-0.75 weights at t=0.75 on inputs 0..3.
    t, a = 0.75, -0.75
    w = [a * (t + 1) ** 3 - 5 * a * (t + 1) ** 2 + 8 * a * (t + 1) - 4 * a,
         (a + 2) * t**3 - (a + 3) * t**2 + 1,
         (a + 2) * (1 - t) ** 3 - (a + 3) * (1 - t) ** 2 + 1,
         a * (2 - t) ** 3 - 5 * a * (2 - t) ** 2 + 8 * a * (2 - t) - 4 * a]
    np.testing.assert_allclose(m[4], w, atol=1e-12)
    # output 2 sits at 0.75: its tap at -1 is clamped onto input 0
    np.testing.assert_allclose(m[2], [w[0] + w[1], w[2], w[3], 0.0], atol=1e-12)


def test_resize_cubic_matches_opencv():
    rng = np.random.RandomState(0)
    img = rng.rand(13, 17, 3)
    for out_h, out_w in ((28, 42), (9, 7), (13, 30)):
        ref = cv2.resize(img, (out_w, out_h), interpolation=cv2.INTER_CUBIC)
        got = np.asarray(resize_cubic(jnp.asarray(img[None], jnp.float32), (out_h, out_w)))[0]
        np.testing.assert_allclose(got, ref, atol=2e-6)


def test_resize_bilinear_align_corners_hand_values():
    x = jnp.arange(3, dtype=jnp.float32).reshape(1, 3, 1, 1)
    y = resize_bilinear_align_corners(x, (5, 1))
    np.testing.assert_allclose(np.asarray(y).ravel(), [0.0, 0.5, 1.0, 1.5, 2.0], atol=1e-7)
    x = jnp.asarray([[0.0, 4.0]]).reshape(1, 1, 2, 1)
    np.testing.assert_allclose(np.asarray(resize_bilinear_align_corners(x, (1, 3))).ravel(), [0.0, 2.0, 4.0])


def test_pos_embed_identity_at_stored_grid():
    pe = jnp.asarray(np.random.RandomState(1).randn(1, 5, 8), jnp.float32)
    for mode in ("hf", "original"):
        np.testing.assert_array_equal(np.asarray(interpolate_pos_embed(pe, (2, 2), mode)), np.asarray(pe))
        chex.assert_shape(interpolate_pos_embed(pe, (3, 5), mode), (1, 16, 8))


def test_chunked_attention_is_exact():
    from sddr_jax.models.dinov2 import Attention

    x = jnp.asarray(np.random.RandomState(7).randn(2, 13, 16), jnp.float32)
    full = Attention(16, 2, query_chunk=0)
    params = full.init(jax.random.PRNGKey(0), x)
    with jax.default_matmul_precision("highest"):
        a = full.apply(params, x)
        b = Attention(16, 2, query_chunk=4).apply(params, x)  # 13 > 2 * 4: 4 chunks, the last one padded
    np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6)


# ----------------------------------------------------------------------------------------------------
# converter (torch-free)


def test_export_convert_round_trip_and_strict_diff(tiny_params):
    state = export_original_state_dict(tiny_params, TINY)
    back = convert_original_state_dict(state, TINY)
    chex.assert_trees_all_equal(jax.tree_util.tree_map(np.asarray, tiny_params), back)

    # the unused tensors of the real checkpoints are accepted and dropped
    extra = dict(state, **{"pretrained.mask_token": np.zeros((1, 32), np.float32),
                           "depth_head.scratch.refinenet4.resConfUnit1.conv1.bias": np.zeros(16, np.float32)})
    convert_original_state_dict(extra, TINY)

    broken = dict(state)
    del broken["pretrained.blocks.1.attn.qkv.weight"]
    broken["pretrained.blocks.9.attn.qkv.weight"] = np.zeros((96, 32), np.float32)
    broken["depth_head.projects.0.weight"] = np.zeros((8, 31, 1, 1), np.float32)
    with pytest.raises(UserError) as e:
        convert_original_state_dict(broken, TINY, source="x.pth")
    msg = str(e.value)
    assert "missing (1): pretrained/blocks_1/attn/qkv/kernel" in msg
    assert "unexpected (1): pretrained.blocks.9.attn.qkv.weight" in msg
    assert "wrong shape (1): depth_head.projects.0.weight" in msg


def test_load_pth_torch_free(tmp_path, tiny_params):
    path = tmp_path / "da_tiny.pth"
    save_torch_file(export_original_state_dict(tiny_params, TINY), path)
    conv = load_depth_anything(path, TINY)
    assert conv.layout == "original" and conv.pos_embed_mode == "original"
    chex.assert_trees_all_equal(jax.tree_util.tree_map(np.asarray, tiny_params), conv.params)
    with pytest.raises(UserError, match="match no standard"):
        load_depth_anything(path)  # a non-standard size needs its config
    with pytest.raises(FileNotFoundError):
        load_depth_anything(tmp_path / "nope.pth")


def test_standard_sizes_have_the_published_shapes():
    # Parameter counts of the released checkpoints: ViT-S 24.8M, ViT-B 97.5M, ViT-L 335.3M.
    from sddr_jax.convert.depth_anything import expected_shapes

    # The checkpoints also hold two tensors the output never uses (mask_token, refinenet4.resConfUnit1).
    for (name, c), published in zip(CONFIGS.items(), (24.8, 97.5, 335.3)):
        ours = sum(int(np.prod(s)) for s in expected_shapes(c).values())
        unused = c.dim + 2 * (9 * c.features**2 + c.features)
        assert abs((ours + unused) / 1e6 - published) < 0.05, (name, ours, unused)


# ----------------------------------------------------------------------------------------------------
# predictor


@pytest.fixture(scope="module")
def tiny_predictor(tiny_params):
    return DepthAnythingPredictor(tiny_params, TINY)


def test_predictor_protocol_and_rounding(tiny_predictor, tiny_params):
    rng = np.random.RandomState(2)
    image = jnp.asarray(rng.rand(2, 20, 33, 3), jnp.float32)
    predict = jax.jit(tiny_predictor.__call__, static_argnums=1)
    out = predict(image, 30)  # 30 is not a multiple of 14: the network runs at 42 and is resized to 30
    chex.assert_shape(out, (2, 30, 30, 1))
    chex.assert_tree_all_finite(out)
    # by hand: OpenCV-cubic square resize, ImageNet normalisation, network, bilinear align_corners
    x = normalize_image(resize_cubic(image, (42, 42)))
    with jax.default_matmul_precision("highest"):
        y = jax.jit(DepthAnythingV2(TINY).apply)({"params": tiny_params}, x)
    manual = resize_bilinear_align_corners(y, (30, 30))
    np.testing.assert_allclose(np.asarray(out), np.asarray(manual), rtol=1e-4, atol=1e-5)
    assert float(jnp.std(out)) > 0
    # "depth" is the per-image flip max - disparity
    depth = DepthAnythingPredictor(tiny_params, TINY, output="depth")(image, 30)
    np.testing.assert_allclose(np.asarray(depth), np.asarray(out.max(axis=(1, 2, 3), keepdims=True) - out),
                               rtol=1e-4, atol=1e-5)


def test_predictor_is_a_pytree_usable_in_vmap_and_bf16(tiny_predictor, tiny_params):
    windows = jnp.asarray(np.random.RandomState(3).rand(3, 2, 16, 16, 3), jnp.float32)

    @jax.jit
    def per_window(pred, w):
        return jax.vmap(lambda x: pred(x, 28))(w)

    out = per_window(tiny_predictor, windows)
    chex.assert_shape(out, (3, 2, 28, 28, 1))
    np.testing.assert_allclose(np.asarray(out[1]), np.asarray(tiny_predictor(windows[1], 28)), rtol=1e-4, atol=1e-5)
    bf16 = DepthAnythingPredictor(tiny_params, TINY, dtype=jnp.bfloat16)(windows[0], 28)
    assert bf16.dtype == jnp.float32
    err = float(jnp.max(jnp.abs(bf16 - out[0])) / jnp.max(jnp.abs(out[0])))
    assert err < 0.05, err


def test_predictor_rejects_bad_input(tiny_predictor, tiny_params):
    with pytest.raises(UserError, match="image"):
        tiny_predictor(jnp.zeros((2, 16, 16)), 28)
    with pytest.raises(UserError, match="size"):
        tiny_predictor(jnp.zeros((1, 16, 16, 3)), 28.0)
    with pytest.raises(UserError, match="output"):
        DepthAnythingPredictor(tiny_params, TINY, output="inverse")
    with pytest.raises(UserError, match="embedding width"):
        DepthAnythingPredictor(tiny_params, "small")


# ----------------------------------------------------------------------------------------------------
# CLI: `sddr-jax predict` writes the official low/high layout


def test_cli_predict_writes_official_layout(tmp_path):
    from sddr_jax.cli import main
    from sddr_jax.commands.predict import read_rgb
    from sddr_jax.io import read_depth, to_uint_official

    small = CONFIGS["small"]
    params = _positive_head(init_params(small, 1))
    weights = tmp_path / "depth_anything_v2_vits.pth"
    save_torch_file(export_original_state_dict(params, small), weights)
    rgb_dir = tmp_path / "rgb"
    rgb_dir.mkdir()
    rng = np.random.RandomState(4)
    sizes = {"a": (20, 30), "b": (20, 30)}  # one shape: two compiles of ViT-S (low and high)
    for name, (h, w) in sizes.items():
        cv2.imwrite(str(rgb_dir / f"{name}.png"), (rng.rand(h, w, 3) * 255).astype(np.uint8))
    out = tmp_path / "out"
    argv = ["predict", "--model", "depth-anything-v2-small", "--weights", str(weights), "--rgb", str(rgb_dir),
            "--out", str(out), "--low", "14", "--high", "28"]
    assert main(argv) == 0
    predictor = DepthAnythingPredictor(params, small, pos_embed_mode="original")
    for name, (h, w) in sizes.items():
        rgb = read_rgb(str(rgb_dir / f"{name}.png"))
        for folder, size in (("low_14", 14), ("high_28", 28)):
            got = cv2.imread(str(out / folder / f"{name}.png"), cv2.IMREAD_UNCHANGED)
            assert got.dtype == np.uint16 and got.shape == (h, w)
            assert got.min() == 0 and got.max() == 65535
            want = to_uint_official(predictor.infer_image(rgb, size))
            assert np.abs(got.astype(np.int64) - want).max() <= 2
            # what `sddr-jax refine --low/--high` reads: the raw uint16 values as float32, image-sized
            np.testing.assert_array_equal(read_depth(out / folder / f"{name}.png"), got.astype(np.float32))
    assert main(argv) == 2  # refuses to overwrite
    assert main(argv[:-6] + ["--model", "depth-anything-v2-base"] + argv[-6:]) == 2  # weights are ViT-S


# ----------------------------------------------------------------------------------------------------
# parity with transformers' DepthAnythingForDepthEstimation (optional torch + transformers extras)


def _hf_model(kind: str):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    if kind == "tiny":
        bb = transformers.Dinov2Config(image_size=28, patch_size=14, hidden_size=32, num_hidden_layers=4,
                                       num_attention_heads=2, out_indices=[1, 2, 3, 4], reshape_hidden_states=False)
        cfg = transformers.DepthAnythingConfig(backbone_config=bb, reassemble_hidden_size=32,
                                               neck_hidden_sizes=[8, 16, 24, 32], fusion_hidden_size=16)
    else:  # the ViT-S (Depth-Anything-V2-Small-hf) architecture
        bb = transformers.Dinov2Config(image_size=518, patch_size=14, hidden_size=384, num_hidden_layers=12,
                                       num_attention_heads=6, out_indices=[3, 6, 9, 12], reshape_hidden_states=False)
        cfg = transformers.DepthAnythingConfig(backbone_config=bb, reassemble_hidden_size=384,
                                               neck_hidden_sizes=[48, 96, 192, 384], fusion_hidden_size=64)
    torch.manual_seed(0)
    model = transformers.DepthAnythingForDepthEstimation(cfg).eval()
    with torch.no_grad():  # move layer scales, norms and biases off their init values so they are tested
        for name, p in model.named_parameters():
            if "lambda1" in name or "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
        model.head.conv3.weight.mul_(200.0)  # outputs of order 1 and mostly positive (past the final ReLU),
        model.head.conv3.bias.fill_(1.0)  # so that 1e-4 is a tight tolerance
    return torch, model


def _parity(torch, model, conv, sizes):
    errs = []
    for h, w in sizes:
        x = np.random.RandomState(h + w).randn(2, 3, h, w).astype(np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).predicted_depth.numpy()
        with jax.default_matmul_precision("highest"):
            got = jax.jit(DepthAnythingV2(conv.config, pos_embed_mode="hf").apply)({"params": conv.params}, x.transpose(0, 2, 3, 1))
        got = np.asarray(got)[..., 0]
        assert np.abs(ref).max() > 0.1 and (ref > 0).mean() > 0.5  # an informative map
        errs.append(float(np.abs(got - ref).max()))
        print(f"parity {h}x{w}: max abs error {errs[-1]:.3g} (max |ref| {np.abs(ref).max():.3g})")
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)
    return errs


@pytest.mark.torch
def test_parity_transformers_tiny_and_pth_layout(tmp_path):
    torch, model = _hf_model("tiny")
    model.save_pretrained(tmp_path / "hf")
    conv = load_depth_anything(tmp_path / "hf" / "model.safetensors")
    assert conv.layout == "hf" and conv.config.out_indices == (0, 1, 2, 3) and conv.config.pretrain_grid == 2
    # 28: the stored grid; 42x70: interpolated position embeddings, non-square
    _parity(torch, model, conv, [(28, 28), (42, 70)])

    # The original layout, written by torch.save with names spelled out here (independent of hf_to_original).
    from safetensors.numpy import load_file

    sd = load_file(tmp_path / "hf" / "model.safetensors")  # the file layout (query/key/value, output.dense)
    orig = {}
    for k, v in sd.items():
        n = (k.replace("backbone.embeddings.position_embeddings", "pretrained.pos_embed")
             .replace("backbone.embeddings.patch_embeddings.projection", "pretrained.patch_embed.proj")
             .replace("backbone.embeddings.", "pretrained.").replace("backbone.encoder.layer.", "pretrained.blocks.")
             .replace("backbone.layernorm", "pretrained.norm").replace("layer_scale1.lambda1", "ls1.gamma")
             .replace("layer_scale2.lambda1", "ls2.gamma").replace("attention.output.dense", "attn.proj")
             .replace("neck.reassemble_stage.layers.", "depth_head.X.").replace("head.conv1", "depth_head.scratch.output_conv1")
             .replace("head.conv2", "depth_head.scratch.output_conv2.0").replace("head.conv3", "depth_head.scratch.output_conv2.2"))
        if n.startswith("depth_head.X."):
            i, rest = n[len("depth_head.X."):].split(".", 1)
            n = f"depth_head.projects.{i}.{rest.split('.', 1)[1]}" if rest.startswith("projection") else f"depth_head.resize_layers.{i}.{rest.split('.', 1)[1]}"
        if n.startswith("neck.convs."):
            i, leaf = n[len("neck.convs."):].split(".")
            n = f"depth_head.scratch.layer{int(i) + 1}_rn.{leaf}"
        if n.startswith("neck.fusion_stage.layers."):
            j, rest = n[len("neck.fusion_stage.layers."):].split(".", 1)
            rest = (rest.replace("projection", "out_conv").replace("residual_layer", "resConfUnit").replace("convolution", "conv"))
            n = f"depth_head.scratch.refinenet{4 - int(j)}.{rest}"
        if ".attention.attention." in n:
            continue
        orig[n] = torch.from_numpy(v)
    for i in range(4):
        p = f"backbone.encoder.layer.{i}.attention.attention."
        for leaf in ("weight", "bias"):
            orig[f"pretrained.blocks.{i}.attn.qkv.{leaf}"] = torch.cat(
                [torch.from_numpy(sd[p + q + "." + leaf]) for q in ("query", "key", "value")])
    torch.save(orig, tmp_path / "da_tiny.pth")
    from_pth = load_depth_anything(tmp_path / "da_tiny.pth", conv.config)
    assert from_pth.layout == "original" and from_pth.pos_embed_mode == "original"
    chex.assert_trees_all_equal(conv.params, from_pth.params)
    # hf_to_original names the same tensors (plus DINOv2's unused mask_token)
    assert set(hf_to_original(sd)) == set(orig) | {"pretrained.mask_token"}


@pytest.mark.torch
@pytest.mark.slow
def test_parity_transformers_vits():
    torch, model = _hf_model("vits")
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    from sddr_jax.convert.depth_anything import ConvertedDepthAnything, convert_hf_state_dict

    params = convert_hf_state_dict(sd)  # shapes identify the standard ViT-S config
    conv = ConvertedDepthAnything(params, CONFIGS["small"], "hf", "hf")
    errs = _parity(torch, model, conv, [(70, 98)])  # 5x7 grid: bicubic-interpolated 37x37 embeddings
    print(f"ViT-S parity max abs error: {max(errs):.3g}")


@pytest.mark.torch
def test_pos_embed_interpolation_matches_torch_both_modes():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    pe = np.random.RandomState(5).randn(1, 1 + 37 * 37, 6).astype(np.float32)
    grid = torch.from_numpy(pe[:, 1:]).reshape(1, 37, 37, 6).permute(0, 3, 1, 2)
    for g in (5, 74):
        hf = F.interpolate(grid, size=(g, g), mode="bicubic", align_corners=False)
        orig = F.interpolate(grid, scale_factor=((g + 0.1) / 37, (g + 0.1) / 37), mode="bicubic", antialias=False)
        for mode, ref in (("hf", hf), ("original", orig)):
            got = np.asarray(interpolate_pos_embed(jnp.asarray(pe), (g, g), mode))[0, 1:]
            want = ref.permute(0, 2, 3, 1).reshape(-1, 6).numpy()
            np.testing.assert_allclose(got, want, atol=1e-5)
    # the two modes do differ off the stored grid (why the converter records which one its weights expect)
    a = interpolate_pos_embed(jnp.asarray(pe), (74, 74), "hf")
    b = interpolate_pos_embed(jnp.asarray(pe), (74, 74), "original")
    assert float(jnp.max(jnp.abs(a - b))) > 1e-3


# ----------------------------------------------------------------------------------------------------
# inside the coarse-to-fine pseudo-labels


def _toy_refiner(params, low, high):
    """Cheap stand-in for the refiner (the predictor is what is under test here)."""
    return params["a"] * low + (1.0 - params["a"]) * high


def test_predictor_inside_edge_labels(tiny_predictor):
    from sddr_jax.training.labels import edge_labels

    image = jnp.asarray(np.random.RandomState(6).rand(2, 40, 48, 3), jnp.float32)
    opts = dict(schedule=((2, 0.2),), size=32, base_resolution=0, max_resolution=64, resolution="fixed",
                refiner_fn=_toy_refiner)
    params = {"a": jnp.float32(0.5)}
    low, high = (jax.image.resize(tiny_predictor(image, r), (2, 40, 48, 1), "linear") for r in (28, 42))
    # the predictor travels as a pytree argument and runs on every window crop
    labels = edge_labels(params, low, high, image, tiny_predictor, **opts)
    chex.assert_shape(labels["edge"], (2, 40, 48, 1))
    chex.assert_tree_all_finite((labels["edge"], labels["depth"]))
    assert float(jnp.std(labels["depth"][0])) > 0
    assert float(jnp.min(labels["edge"])) >= 0 and labels["mask_edge"].dtype == jnp.bool_
    # the two images get different labels (the batch is not collapsed)
    assert float(jnp.max(jnp.abs(labels["depth"][0] - labels["depth"][1]))) > 1e-3
