"""The refiner network (docs/method.md §3): parity with the official PyTorch model, shapes, the cross-attention quirk."""
import json

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sddr_jax import convert
from sddr_jax.models import (MIT_CONFIGS, CrossAttention, MixVisionTransformer, Refiner, RefinerOutput,
                             positional_encoding)
from sddr_jax.models.mit import MiTBlock, drop_path

OUTPUTS = ("refined", "out_half", "out_quart", "mask_quart", "mask_half")
PARITY_ATOL = 1e-4


@pytest.fixture(scope="module")
def fixture(data_dir, official_state):
    z = np.load(data_dir / "official_parity.npz")
    return official_state, {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def official_params(fixture):
    official_state, z = fixture
    return convert.official_to_flax(official_state.official_state_dict(int(z["state_seed"])))


def _forward(fixture, params, size, taps):
    official_state, z = fixture
    low, high = official_state.official_inputs(int(z[f"s{size}_seed"]), size)
    low, high = low.transpose(0, 2, 3, 1), high.transpose(0, 2, 3, 1)
    np.testing.assert_allclose(z[f"s{size}_input_stats"][0], [low.mean(), low.std(), low.min(), low.max()], atol=1e-6)

    def f(p, lo, hi):
        return Refiner().apply({"params": p}, lo, hi, capture_intermediates=taps, mutable=["intermediates"])

    with jax.default_matmul_precision("highest"):
        out, state = jax.jit(f)(params, jnp.asarray(low), jnp.asarray(high))
    return jax.device_get(out), jax.device_get(state.get("intermediates", {}))


@pytest.fixture(scope="module")
def forward_512(fixture, official_params):
    return _forward(fixture, official_params, 512, taps=True)


@pytest.fixture(scope="module")
def forward_1024(fixture, official_params):
    return _forward(fixture, official_params, 1024, taps=False)


def _check_outputs(z, out, size):
    stride = int(z[f"s{size}_stride"])
    errors = {}
    for name in OUTPUTS:
        a = np.asarray(getattr(out, name))
        chex.assert_shape(a, tuple(int(v) for v in z[f"s{size}_{name}_shape"][[0, 2, 3, 1]]))
        m = a[0, :, :, 0]
        err = max(np.abs(m[::stride, ::stride] - z[f"s{size}_{name}_sub"]).max(),
                  np.abs(m[:32, :32] - z[f"s{size}_{name}_crop_tl"]).max(),
                  np.abs(m[-32:, -32:] - z[f"s{size}_{name}_crop_br"]).max())
        errors[name] = float(err)
        stats = [m.astype(np.float64).mean(), m.astype(np.float64).std(), m.min(), m.max()]
        np.testing.assert_allclose(stats, z[f"s{size}_{name}_stats"], atol=PARITY_ATOL, err_msg=name)
    assert max(errors.values()) <= PARITY_ATOL, errors
    return errors


def test_parity_with_official_at_512(fixture, forward_512):
    _, z = fixture
    errors = _check_outputs(z, forward_512[0], 512)
    print("S=512 max abs errors:", json.dumps(errors))


@pytest.mark.slow
def test_parity_with_official_at_1024(fixture, forward_1024):
    _, z = fixture
    errors = _check_outputs(z, forward_1024[0], 1024)
    print("S=1024 max abs errors:", json.dumps(errors))


def _nchw(a):
    return np.asarray(a).transpose(0, 3, 1, 2)


def test_per_module_taps_at_512(fixture, forward_512):
    """Every tapped official submodule agrees (localises a regression to one module)."""
    _, z = fixture
    inter = forward_512[1]

    def check(tap, nhwc):
        a = _nchw(nhwc)
        np.testing.assert_array_equal(a.shape, z[f"s512_tap_{tap}_shape"], err_msg=tap)
        crop = z[f"s512_tap_{tap}_crop"]
        np.testing.assert_allclose(a[..., : crop.shape[-2], : crop.shape[-1]], crop, atol=PARITY_ATOL, err_msg=tap)
        a64 = a.astype(np.float64)
        np.testing.assert_allclose(a64.mean(axis=(2, 3)), z[f"s512_tap_{tap}_chanmean"], atol=PARITY_ATOL, err_msg=tap)
        np.testing.assert_allclose(a64.std(axis=(2, 3)), z[f"s512_tap_{tap}_chanstd"], atol=PARITY_ATOL, err_msg=tap)

    check("grad_call0", inter["grad"]["__call__"][0])
    # both branches run through the shared stem/backbone as one batch: [low; high]
    for k in (1, 2, 3):
        both = inter[f"stem{k}"]["__call__"][0]
        check(f"enc{k}_call0", both[:1])
        check(f"enc{k}_call1", both[1:])
    stages = inter["backbone"]["__call__"][0]
    for s in range(4):
        check(f"backbone{s + 1}_call0", stages[s][:1])
        check(f"backbone{s + 1}_call1", stages[s][1:])
    z_low, z_high = inter["cross_attention"]["__call__"][0]
    cross = np.stack([_nchw(z_low)[0], _nchw(z_high)[0]])  # (2, C, h, w) like the official (B*2, C, h, w)
    crop = z["s512_tap_cross_call0_crop"]
    np.testing.assert_allclose(cross[..., :4, :4], crop, atol=PARITY_ATOL)
    dec = inter["decoder"]
    for k in range(7):
        check(f"dec_layer_{k}_call0", dec[f"up{k}"]["__call__"][0])
        if k:
            check(f"dec_layer_{k}_f_call0", dec[f"mask{k}"]["__call__"][0])
    check("mid_out_quart_call0", dec["head_quart"]["__call__"][0])
    check("mid_out_half_call0", dec["head_half"]["__call__"][0])


def test_official_inference_is_affine_invariant(fixture):
    """The fixture's `inference` (min-max inside) differs from `forward` only at float noise: recorded sanity."""
    _, z = fixture
    assert z["s512_inference_maxdiff_affine"] < 1e-5 and z["s1024_inference_maxdiff_same"] == 0.0


def test_positional_encoding_values():
    e = positional_encoding(4, 6, 256)
    chex.assert_shape(e, (4, 6, 256))
    np.testing.assert_allclose(e[0, 0, 0], np.sin(1.0), atol=1e-7)
    np.testing.assert_allclose(e[0, 0, 1], np.cos(1.0), atol=1e-7)
    np.testing.assert_allclose(e[0, 0, 128], np.sin(1.0), atol=1e-7)
    np.testing.assert_allclose(e[0, 0, [0, 1]], [0.841471, 0.540302], atol=1e-6)
    # row channels depend only on the row, column channels only on the column
    np.testing.assert_array_equal(e[:, :1, :128].repeat(6, 1), e[:, :, :128])
    np.testing.assert_array_equal(e[:1, :, 128:].repeat(4, 0), e[:, :, 128:])
    j = 5
    np.testing.assert_allclose(e[2, 3, 2 * j], np.sin(3 / 10000 ** (j / 64)), atol=1e-6)
    np.testing.assert_allclose(e[2, 3, 128 + 2 * j + 1], np.cos(4 / 10000 ** (j / 64)), atol=1e-6)


def test_cross_attention_reshape_quirk_with_identity_blocks():
    """Checklist 13.3: zero block weights make every block the identity; what remains is the reshape quirk."""
    b, h, w, c = 2, 2, 3, 32
    rng = np.random.default_rng(0)
    low = rng.standard_normal((b, h, w, c)).astype(np.float32)
    high = rng.standard_normal((b, h, w, c)).astype(np.float32)
    mod = CrossAttention(dim=c, num_iterations=8, num_heads=8)
    params = jax.tree.map(np.zeros_like, mod.init(jax.random.key(0), low, high)["params"])
    s1, s2, b2 = (rng.standard_normal(c).astype(np.float32) for _ in range(3))
    p1, p2 = (rng.standard_normal((c, c)).astype(np.float32) / np.sqrt(c) for _ in range(2))
    params.update(pre_scale=s1, post_scale=s2, post_bias=b2, pre_proj={"kernel": p1.T}, post_proj={"kernel": p2.T})
    with jax.default_matmul_precision("highest"):
        z_low, z_high = jax.jit(mod.apply)({"params": params}, low, high)

    x = np.stack([low, high], 1).transpose(0, 1, 4, 2, 3).astype(np.float64)  # NCHW (B, 2, C, h, w)
    x = np.einsum("oc,bnchw->bnohw", p1, x * s1[:, None, None])
    for _ in range(8):
        tokens = x.transpose(0, 1, 3, 4, 2).reshape(b, 2 * h * w, c)  # step (a)
        x = tokens.reshape(b, 2, c, h, w)  # step (c): no transpose back
    x = x * s2[:, None, None] + b2[:, None, None]
    x = np.einsum("oc,bnchw->bnohw", p2, x)
    np.testing.assert_allclose(np.asarray(z_low), x[:, 0].transpose(0, 2, 3, 1), atol=1e-4)
    np.testing.assert_allclose(np.asarray(z_high), x[:, 1].transpose(0, 2, 3, 1), atol=1e-4)
    # the quirk is not a no-op: without it the result would differ
    plain = np.einsum("oc,bnhwc->bnhwo", p2, np.einsum("oc,bnhwc->bnhwo", p1, np.stack([low, high], 1) * s1) * s2 + b2)
    assert np.abs(plain[:, 0] - np.asarray(z_low)).max() > 1e-2


@pytest.mark.parametrize("size", [1024, 2048])
def test_tensor_trace(size):
    """Appendix A shapes, from an abstract evaluation (no compilation)."""
    x = jax.ShapeDtypeStruct((1, size, size, 1), jnp.float32)
    model = Refiner()

    def run(lo, hi):
        v = model.init(jax.random.key(0), lo, hi)
        return model.apply(v, lo, hi, capture_intermediates=True, mutable=["intermediates"])

    out, state = jax.eval_shape(run, x, x)
    inter = state["intermediates"]
    s = size
    assert out.refined.shape == (1, s, s, 1)
    assert out.out_half.shape == out.mask_half.shape == (1, s // 2, s // 2, 1)
    assert out.out_quart.shape == out.mask_quart.shape == (1, s // 4, s // 4, 1)
    assert inter["grad"]["__call__"][0].shape == (1, s, s, 1)
    for k, c in zip((1, 2, 3), (8, 16, 32)):
        assert inter[f"stem{k}"]["__call__"][0].shape == (2, s >> k, s >> k, c)
    stages = inter["backbone"]["__call__"][0]
    assert [t.shape for t in stages] == [(2, s >> (k + 4), s >> (k + 4), c) for k, c in enumerate((32, 64, 160, 256))]
    kv = inter["backbone"]["block1_0"]["attn"]["sr"]["__call__"][0].shape
    assert kv == (2, s // 128, s // 128, 32)  # the reduced key/value grid: 16^2 at 2048, 8^2 at 1024
    dec = inter["decoder"]
    expected = [(s // 64, 160), (s // 32, 64), (s // 16, 32), (s // 8, 32), (s // 4, 16), (s // 2, 8), (s, 1)]
    for k, (side, c) in enumerate(expected):
        assert dec[f"up{k}"]["__call__"][0].shape == (1, side, side, c)


def test_bad_sizes_raise_clear_errors():
    x = jnp.zeros((1, 200, 200, 1))
    with pytest.raises(ValueError, match="multiple of 128"):
        jax.eval_shape(Refiner().init, jax.random.key(0), x, x)
    with pytest.raises(ValueError, match=r"\(B, S, S, 1\)"):
        jax.eval_shape(Refiner().init, jax.random.key(0), jnp.zeros((1, 128, 128, 3)), jnp.zeros((1, 128, 128, 3)))
    with pytest.raises(ValueError, match="same shape"):
        jax.eval_shape(Refiner().init, jax.random.key(0), jnp.zeros((1, 128, 128, 1)), jnp.zeros((1, 256, 256, 1)))


def test_parameter_counts():
    x = jax.ShapeDtypeStruct((1, 128, 128, 1), jnp.float32)
    params = jax.eval_shape(Refiner().init, jax.random.key(0), x, x)["params"]
    sizes = {k: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(v)) for k, v in params.items()}
    assert sum(sizes.values()) == convert.N_UNIQUE_PARAMS == 10_302_483
    stem = sizes["stem1"] + sizes["stem2"] + sizes["stem3"]
    assert (sizes["cross_attention"], sizes["backbone"], stem, sizes["grad"]) == (6_443_776, 3_339_776, 19_080, 26)
    assert sizes["decoder"] == 499_295 + 530  # decoder incl. masks, plus the two heads
    # SegFormer MiT family (3-channel input, no head): the published encoder sizes 3.3/13.1/24.2/44.0/60.8/81.4 M
    img = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    published = {"b0": 3.3, "b1": 13.1, "b2": 24.2, "b3": 44.0, "b4": 60.8, "b5": 81.4}
    for name, millions in published.items():
        v = jax.eval_shape(MixVisionTransformer(MIT_CONFIGS[name], in_channels=3).init, jax.random.key(0), img)
        n = sum(int(np.prod(a.shape)) for a in jax.tree.leaves(v))
        assert abs(n / 1e6 - millions) < 0.15, (name, n)


def test_stochastic_depth_only_in_training():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 16, 32)).astype(np.float32))
    block = MiTBlock(32, 1, 1, drop_path_rate=0.5)
    v = block.init(jax.random.key(0), x, (4, 4))
    eval_out = block.apply(v, x, (4, 4))
    np.testing.assert_array_equal(eval_out, block.apply(v, x, (4, 4), train=False))
    with pytest.raises(flax.errors.InvalidRngError):
        block.apply(v, x, (4, 4), train=True)
    train_out = block.apply(v, x, (4, 4), train=True, rngs={"dropout": jax.random.key(1)})
    assert np.abs(np.asarray(train_out - eval_out)).max() > 1e-3
    # drop_path keeps each sample whole or zero, and rescales the kept ones by 1 / (1 - rate)
    y = np.asarray(drop_path(jnp.ones((1000, 3)), 0.25, jax.random.key(2)))
    kept = y[:, 0] > 0
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)
    assert (y[~kept] == 0).all() and 0.65 < kept.mean() < 0.85
    # the refiner needs a 'dropout' rng in training mode
    xs = jax.ShapeDtypeStruct((1, 128, 128, 1), jnp.float32)
    variables = jax.eval_shape(Refiner().init, jax.random.key(0), xs, xs)
    with pytest.raises(flax.errors.InvalidRngError):
        jax.eval_shape(lambda v, a, b: Refiner().apply(v, a, b, train=True), variables, xs, xs)
    jax.eval_shape(lambda v, a, b: Refiner().apply(v, a, b, train=True, rngs={"dropout": jax.random.key(0)}),
                   variables, xs, xs)


def test_refiner_output_is_a_pytree():
    out = RefinerOutput(*(jnp.zeros((1, 2, 2, 1)) for _ in OUTPUTS))
    assert len(jax.tree.leaves(out)) == 5
    assert [f for f in OUTPUTS] == [f.name for f in __import__("dataclasses").fields(out)]


@pytest.mark.parametrize("which", ["depthwise", "stem_conv1", "stem_shortcut"])
def test_tap_conv_equals_flax_conv(which):
    """`ops.TapConv`, the inference form of the MiT depthwise conv and of the first stem's convs, draws the same
    initial parameters as the `nn.Conv` it replaces (same names, shapes, init) and computes the same conv."""
    import flax.linen as nn

    from sddr_jax.models.mit import _conv_init
    from sddr_jax.models.stem import CONV_INIT
    from sddr_jax.ops import TapConv

    if which == "depthwise":
        c = 24
        new = TapConv(c, kernel_init=_conv_init(3, c, c), name="m")
        old = nn.Conv(c, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=c, kernel_init=_conv_init(3, c, c),
                      name="m")
    else:
        k, s, p = (3, 2, 1) if which == "stem_conv1" else (1, 2, 0)
        c = 8
        new = TapConv(c, k, s, p, kernel_init=CONV_INIT, name="m")
        old = nn.Conv(c, (k, k), strides=(s, s), padding=((p, p), (p, p)), kernel_init=CONV_INIT, name="m")
    x = jax.random.normal(jax.random.PRNGKey(3), (2, 17, 20, c if which == "depthwise" else 1))
    p_new, p_old = new.init(jax.random.PRNGKey(0), x), old.init(jax.random.PRNGKey(0), x)
    for a, b in zip(jax.tree.leaves(p_new), jax.tree.leaves(p_old)):
        np.testing.assert_array_equal(a, b)
    params = jax.tree.map(lambda a: a + jax.random.normal(jax.random.PRNGKey(5), a.shape), p_new)
    with jax.default_matmul_precision("highest"):
        want = old.apply(params, x)
    np.testing.assert_allclose(np.asarray(new.apply(params, x)), np.asarray(want), atol=2e-5)


def test_training_and_inference_forms_agree():
    """train=True builds XLA's convolutions and gathers (their backward compiles faster), train=False the forms
    XLA:CPU runs fastest; the stem, the MiT feed-forward and the decoder give the same numbers either way."""
    from sddr_jax.models.decoder import Decoder
    from sddr_jax.models.mit import MixFFN
    from sddr_jax.models.stem import Down

    rng = jax.random.PRNGKey(0)
    x = jax.random.uniform(rng, (2, 32, 32, 1))
    chans = (8, 16, 32, 32, 32, 32, 32)  # the refiner's decoder with narrower deep levels (>= 32 inputs: matmul taps)
    sizes = [64, 32, 16, 8, 4, 2, 1]  # l1, l2, l3, b1..b4: each level half the previous
    feats = [jax.random.normal(jax.random.fold_in(rng, i), (1, s, s, c)) for i, (s, c) in enumerate(zip(sizes, chans))]
    cases = [(Down(8), (x,)), (MixFFN(32, 128), (jax.random.normal(rng, (2, 64, 32)), (8, 8))),
             (Decoder(chans), (feats, [f * 0.5 for f in feats]))]
    for module, args in cases:
        params = module.init(rng, *args)
        params = jax.tree.map(lambda a: a + 0.05 * jax.random.normal(jax.random.PRNGKey(7), a.shape), params)
        with jax.default_matmul_precision("highest"):
            a, b = (jax.tree.leaves(jax.jit(lambda p, *xs, t=t: module.apply(p, *xs, *args[len(xs):], train=t))(
                params, *args[:1])) for t in (False, True))  # the MixFFN grid size stays static
        for u, v in zip(a, b):
            np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5, atol=1e-5)
