"""Model configs travel with checkpoints; every loader checks params against the model they are applied to."""
import json

import jax
import numpy as np
import pytest

from sddr_jax import convert
from sddr_jax.checkpoints import load_refiner
from sddr_jax.errors import UserError
from sddr_jax.models import build_refiner, check_params, model_config_dict, param_shapes

TINY = {"backbone": "b0", "cross_iterations": 2, "dtype": "float32"}


def _params(model_config, seed=0):
    shapes = param_shapes(model_config)
    rng = np.random.default_rng(seed)
    tree: dict = {}
    for path, shape in shapes.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = rng.standard_normal(shape).astype(np.float32)
    return tree


def test_model_config_defaults_and_refusals():
    assert model_config_dict(None) == {"backbone": "b0", "cross_iterations": 8, "dtype": "float32",
                                       "upsample": "align_corners"}
    # A config saved before `upsample` existed is the official (align_corners) refiner.
    assert model_config_dict(TINY)["upsample"] == "align_corners"
    with pytest.raises(UserError, match="upsample must be one of"):
        model_config_dict({"upsample": "nearest"})
    assert model_config_dict({"cross_iterations": "2"})["cross_iterations"] == 2
    with pytest.raises(UserError, match=r"unknown keys \['width'\]"):
        model_config_dict({"width": 4})
    with pytest.raises(UserError, match="unknown MiT backbone 'b9'"):
        model_config_dict({"backbone": "b9"})
    with pytest.raises(UserError, match="dtype must be one of"):
        model_config_dict({"dtype": "float64"})
    r = build_refiner(TINY)
    assert (r.backbone, r.cross_iterations, r.dtype, r.upsample) == ("b0", 2, None, "align_corners")
    assert build_refiner({**TINY, "upsample": "stride_aligned"}).upsample == "stride_aligned"


def test_upsample_mode_changes_the_function_not_the_params():
    """Both decoder grids use the same parameters (a checkpoint's `upsample` decides how they are applied), the
    mode reaches all nine upsampling layers of a built refiner (traced abstractly: no full forward pass), and
    one such layer with the same params gives different maps in the two modes."""
    import flax.linen as nn

    from sddr_jax import ops
    from sddr_jax.models.decoder import Up

    stride = {**TINY, "upsample": "stride_aligned"}
    assert param_shapes(stride) == param_shapes(TINY)

    def modes(cfg):
        seen = []

        def record(next_fun, args, kwargs, context):
            if isinstance(context.module, Up) and context.method_name == "__call__":
                seen.append((context.module.name, context.module.upsample))
            return next_fun(*args, **kwargs)

        x = jax.ShapeDtypeStruct((1, 128, 128, 1), np.float32)
        with nn.intercept_methods(record):
            jax.eval_shape(lambda a, b: build_refiner(cfg).init(jax.random.key(0), a, b), x, x)
        return seen

    names = ["up0", "up1", "up2", "up3", "head_quart", "up4", "head_half", "up5", "up6"]
    assert modes(stride) == [(n, "stride_aligned") for n in names]
    assert modes(TINY) == [(n, "align_corners") for n in names]

    x = np.random.default_rng(1).random((1, 6, 5, 8)).astype(np.float32)
    layer = Up(4, 2)
    params = layer.init(jax.random.key(0), x)
    a = layer.apply(params, x)
    b = Up(4, 2, upsample="stride_aligned").apply(params, x)
    assert a.shape == b.shape == (1, 12, 10, 4) and not np.allclose(a, b)
    np.testing.assert_array_equal(ops.upsample_x2(x, "stride_aligned"), ops.upsample_bicubic_stride_x2(x))
    np.testing.assert_array_equal(ops.upsample_x2(x, "align_corners"), ops.upsample_bicubic_ac_x2(x))
    with pytest.raises(ValueError, match="mode must be one of"):
        ops.upsample_x2(x, "nearest")


def test_param_shapes_follow_the_config():
    full, tiny = param_shapes(None), param_shapes(TINY)
    blocks = {p[1] for p in full if p[0] == "cross_attention" and p[1].startswith("block")}
    blocks_tiny = {p[1] for p in tiny if p[0] == "cross_attention" and p[1].startswith("block")}
    assert len(blocks) == 8 and len(blocks_tiny) == 2
    # The official b0 refiner: 10,302,483 unique parameters (docs/method.md §3.8).
    assert sum(int(np.prod(s)) for s in full.values()) == convert.N_UNIQUE_PARAMS


def test_check_params_names_every_difference():
    params = _params(TINY)
    check_params(params, TINY)  # fits
    with pytest.raises(UserError, match="parameters do not fit") as e:
        check_params(params, None, where="ckpt")  # 8 blocks expected, 2 present
    assert "missing" in str(e.value) and "ckpt" in str(e.value)
    bad = jax.tree.map(np.copy, params)
    bad["grad"]["kernel"] = np.zeros((3, 3, 1, 1), np.float32)
    del bad["decoder"]
    bad["extra"] = {"w": np.zeros(1)}
    with pytest.raises(UserError) as e:
        check_params(bad, TINY)
    msg = str(e.value)
    assert "wrong shape: grad/kernel (3, 3, 1, 1) != (5, 5, 1, 1)" in msg
    assert "missing: decoder/" in msg and "unexpected: extra/w" in msg
    with pytest.raises(UserError, match="expected a nested dict"):
        check_params([1, 2], TINY)


def test_converted_dir_records_its_model_config(tmp_path):
    params = _params(TINY, seed=1)
    out = convert.save_params(params, tmp_path / "tiny", model_config=TINY)
    full = {**TINY, "upsample": "align_corners"}  # saved whole, the upsampling grid included
    assert json.loads((out / convert.MODEL_CONFIG_FILE).read_text()) == full
    loaded, cfg = load_refiner(out)
    assert cfg == full
    for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    # params that do not fit the stated model are refused before anything is written
    with pytest.raises(UserError, match="parameters do not fit"):
        convert.save_params(params, tmp_path / "wrong", model_config=None)
    assert not (tmp_path / "wrong").exists()
    # a config file that does not match the arrays is refused on load
    (out / convert.MODEL_CONFIG_FILE).write_text(json.dumps({"cross_iterations": 8}))
    with pytest.raises(UserError, match="parameters do not fit"):
        load_refiner(out)
    (out / convert.MODEL_CONFIG_FILE).write_text("{not json")
    with pytest.raises(UserError, match="not a JSON model config"):
        load_refiner(out)


def test_refine_uses_the_model_config(tmp_path):
    from sddr_jax.inference.one_stage import refine_one_stage

    params = _params(TINY, seed=2)
    params = jax.tree.map(lambda a: 0.02 * a, params)
    low = np.random.default_rng(3).random((128, 128)).astype(np.float32)
    out = refine_one_stage(params, low, low, size=128, model_config=TINY)
    direct = build_refiner(TINY).apply({"params": params}, (low[None, ..., None] - low.min()) / np.ptp(low),
                                       (low[None, ..., None] - low.min()) / np.ptp(low)).refined
    np.testing.assert_allclose(out, np.asarray(direct)[0, ..., 0], atol=1e-5)
    with pytest.raises(UserError, match="refine_one_stage params: parameters do not fit .* missing: cross_attention/"):
        refine_one_stage(params, low, low, size=128)  # the default (8 blocks) does not fit these params


def test_truncated_orbax_folder_is_named_in_our_words(tmp_path):
    """A converted folder whose largest data file was cut short: one line naming the folder and the cause,
    without TensorStore's text."""
    import numpy as np

    from sddr_jax import convert
    from sddr_jax.checkpoints import load_refiner
    from sddr_jax.errors import UserError, storage_problem
    from sddr_jax.models import param_shapes

    tree: dict = {}
    rng = np.random.default_rng(0)
    for path, shape in param_shapes(None).items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = rng.standard_normal(shape).astype(np.float32)  # incompressible: the data file is largest
    convert.save_params(tree, tmp_path / "conv")
    big = max((p for p in (tmp_path / "conv").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    big.write_bytes(big.read_bytes()[: big.stat().st_size // 2])
    with pytest.raises(UserError) as e:
        load_refiner(tmp_path / "conv")
    msg = str(e.value)
    assert str(tmp_path / "conv") in msg and "truncated or corrupt" in msg
    assert "OUT_OF_RANGE" not in msg and "OCDBT" not in msg
    assert storage_problem(ValueError("NOT_FOUND: x")).startswith("a data file is missing")
    assert storage_problem(KeyError("k")) == "KeyError: 'k'"
    import json

    with pytest.raises(json.JSONDecodeError) as j:
        json.loads('{"a": "b')
    assert "truncated or corrupt" in storage_problem(j.value)
