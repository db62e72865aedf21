"""Converter (docs/method.md §4, checklist 13.5) and the torch-free `.pt` reader/writer."""
import collections
import json
import pickle
import sys
import zipfile

import jax
import ml_dtypes
import numpy as np
import pytest

from sddr_jax import cli, convert
from sddr_jax.errors import UserError
from sddr_jax.models import MIT_CONFIGS, param_shapes
from sddr_jax.convert.torch_pickle import load_torch_file, save_torch_file


@pytest.fixture(scope="module")
def official(data_dir, official_state):
    z = np.load(data_dir / "official_parity.npz")
    keys = json.loads((data_dir / "official_keys.json").read_text())["keys"]
    sd = official_state.official_state_dict(int(z["state_seed"]))
    return sd, keys, z


@pytest.fixture(scope="module")
def params(official):
    return convert.official_to_flax(official[0])


@pytest.fixture(scope="module")
def official_pt(official, tmp_path_factory):
    path = tmp_path_factory.mktemp("pt") / "model_dict_1_5600.pt"
    save_torch_file({"net": collections.OrderedDict(official[0])}, path)
    return path


def test_fixture_state_dict_is_the_one_the_official_outputs_were_made_with(official):
    sd, keys, z = official
    assert list(sd) == [k["name"] for k in keys] and len(sd) == convert.N_KEYS
    np.testing.assert_allclose([float(sd[k["name"]].astype(np.float64).sum()) for k in keys], z["state_key_sum"],
                               rtol=1e-9, atol=1e-9)


def test_key_map_matches_official_order_shapes_and_aliases(official):
    _, keys, _ = official
    entries = convert.official_key_map()
    assert [e[0] for e in entries] == [k["name"] for k in keys]
    shapes = param_shapes()
    for (name, path, kind), k in zip(entries, keys):
        if path is not None:
            assert tuple(k["shape"]) == convert.TRANSFORMS[kind][2](shapes[path]), name
    # the json marks the first occurrence as canonical (encoder.layer_K, cvt.cvt_1); we read en_layerK / cross:
    # the alias pairs are the same
    json_pairs = {frozenset((k["name"], k["alias_of"])) for k in keys if k["alias_of"] is not None}
    our_pairs = {frozenset((name, canon)) for name, path, canon in entries if path is None}
    assert json_pairs == our_pairs and len(our_pairs) == 145
    assert sum(path is None for _, path, _ in entries) == convert.N_KEYS - 383


def test_counts_and_round_trip_identity(official, params):
    sd, keys, _ = official
    assert convert.count_params(params) == convert.N_UNIQUE_PARAMS == 10_302_483
    back = convert.flax_to_official(params)
    assert list(back) == list(sd)
    assert sum(v.size for v in back.values()) == convert.N_PARAMS_WITH_ALIASES == 16_765_339
    for k in sd:
        assert back[k].dtype == np.float32 and back[k].shape == sd[k].shape
        np.testing.assert_array_equal(back[k], sd[k], err_msg=k)
    # Flax -> torch -> Flax is the identity too
    again = convert.official_to_flax(back)
    jax.tree.map(np.testing.assert_array_equal, again, params)
    # and {'params': ...} is accepted by flax_to_official
    assert list(convert.flax_to_official({"params": params})) == list(sd)


def test_layout_rules_on_known_keys(official, params):
    sd = official[0]
    np.testing.assert_array_equal(params["grad"]["kernel"], sd["grad.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["backbone"]["block1_0"]["attn"]["q"]["kernel"], sd["backbone.block1.0.attn.q.weight"].T)
    np.testing.assert_array_equal(params["backbone"]["block2_1"]["mlp"]["dwconv"]["kernel"][:, :, 0, 5],
                                  sd["backbone.block2.1.mlp.dwconv.dwconv.weight"][5, 0])
    np.testing.assert_array_equal(params["cross_attention"]["pre_scale"], sd["cross.sep_conv.conv1.weight"][:, 0, 0, 0])
    np.testing.assert_array_equal(params["cross_attention"]["post_proj"]["kernel"],
                                  sd["cross.sep_deconv.pointwise.weight"][:, :, 0, 0].T)
    np.testing.assert_array_equal(params["decoder"]["mask5"]["norm"]["scale"], sd["decoder.layer_5_f.0.weight"])
    np.testing.assert_array_equal(params["decoder"]["head_quart"]["conv"]["kernel"],
                                  sd["mid_out_quart.2.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["stem2"]["shortcut_norm"]["bias"], sd["en_layer2.downsample.1.bias"])


def test_one_error_lists_every_problem(official):
    sd = dict(official[0])
    del sd["grad.bias"]
    del sd["cross.decoder.3.mlp.fc1.weight"]
    sd["backbone.block1.0.attn.q.weight"] = np.zeros((32, 31), np.float32)
    sd["en_layer1.conv1.weight"] = sd["en_layer1.conv1.weight"] + np.float32(1e-3)  # alias mismatch
    sd["module.extra"] = np.zeros(3, np.float32)
    sd["decoder.layer_0.0.bias"] = np.zeros(256, np.int64)
    with pytest.raises(UserError) as e:
        convert.official_to_flax(sd)
    msg = str(e.value)
    for needle in ("2 missing key(s)", "grad.bias", "cross.decoder.3.mlp.fc1.weight", "unexpected key(s): module.extra",
                   "backbone.block1.0.attn.q.weight: shape (32, 31), expected (32, 32)",
                   "encoder.layer_1.conv1.weight: alias of en_layer1.conv1.weight but not bit-identical",
                   "decoder.layer_0.0.bias: expected a floating-point tensor"):
        assert needle in msg, (needle, msg)


def test_alias_mismatch_alone_is_detected(official):
    sd = dict(official[0])
    w = sd["cvt.cvt_1.decoder.7.norm2.bias"].copy()
    w[3] = np.nextafter(w[3], np.float32(1))  # one ulp
    sd["cvt.cvt_1.decoder.7.norm2.bias"] = w
    with pytest.raises(UserError, match=r"cvt\.cvt_1\.decoder\.7\.norm2\.bias: alias of cross\.decoder\.7\.norm2\.bias"):
        convert.official_to_flax(sd)


def test_torch_free_pt_round_trip(tmp_path):
    obj = {
        "net": collections.OrderedDict(
            a=np.arange(6, dtype=np.float32).reshape(2, 3),
            b=np.array([1.5, -2], ml_dtypes.bfloat16),
            c=np.arange(4, dtype=np.int64),
            d=np.zeros((0, 3), np.float32),
        ),
        "step": 7,
        "nested": {"x": [np.ones(2, np.float16), "text"]},
    }
    path = tmp_path / "x.pt"
    save_torch_file(obj, path)
    got = load_torch_file(path)
    assert isinstance(got["net"], collections.OrderedDict) and list(got["net"]) == ["a", "b", "c", "d"]
    for k, v in obj["net"].items():
        assert got["net"][k].dtype == v.dtype
        np.testing.assert_array_equal(got["net"][k], v)
    assert got["step"] == 7 and got["nested"]["x"][1] == "text"
    np.testing.assert_array_equal(got["nested"]["x"][0], np.ones(2, np.float16))
    with pytest.raises(FileExistsError):
        save_torch_file(obj, path)


def test_load_official_without_torch(official_pt, params):
    loaded = convert.load_official(official_pt)
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    np.testing.assert_array_equal(convert.load_params(official_pt)["grad"]["bias"], params["grad"]["bias"])


def test_truncated_and_tampered_files_are_refused(official_pt, tmp_path):
    raw = official_pt.read_bytes()
    cut = tmp_path / "truncated.pt"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(UserError, match="truncated.pt"):
        convert.load_official(cut)
    # flip one byte inside a stored tensor: the zip CRC catches it
    flipped = bytearray(raw)
    with zipfile.ZipFile(official_pt) as z:
        info = z.getinfo(next(n for n in z.namelist() if n.endswith("/data/5")))
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    flipped[start + 3] ^= 0xFF
    bad = tmp_path / "tampered.pt"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(UserError, match="tampered.pt.*(CRC|corrupt)"):
        convert.load_official(bad)
    # a pickle that asks for any other global is refused, naming it, and nothing runs
    evil = tmp_path / "evil.pt"
    payload = b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueq\x00\x85q\x01Rq\x02."
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("evil/data.pkl", payload)
    with pytest.raises(UserError, match="refusing to load global 'os.system'"):
        load_torch_file(evil)
    evil_legacy = tmp_path / "evil_legacy.pt"  # the same payload as a (non-zip) legacy file
    evil_legacy.write_bytes(payload)
    with pytest.raises(UserError, match="refusing to load global 'os.system'"):
        load_torch_file(evil_legacy)
    # a storage shorter than its tensor claims
    short = tmp_path / "short.pt"
    save_torch_file({"net": {"w": np.zeros(10, np.float32)}}, short)
    with zipfile.ZipFile(short) as z:
        records = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(short, "w") as z:
        for n, data in records.items():
            z.writestr(n, data[:12] if n.endswith("data/0") else data)
    with pytest.raises(UserError, match="storage 'short/data/0' has 12 bytes, expected 40"):
        load_torch_file(short)
    # not a checkpoint at all
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"hello world")
    with pytest.raises(UserError, match="junk.pt: neither a PyTorch zip archive nor a legacy PyTorch pickle"):
        load_torch_file(junk)
    with pytest.raises(FileNotFoundError):
        load_torch_file(tmp_path / "missing.pt")
    # right format, wrong content
    wrong = tmp_path / "wrong.pt"
    save_torch_file({"net": {"w": np.zeros(3, np.float32)}}, wrong)
    with pytest.raises(UserError, match="528 missing key"):
        convert.load_official(wrong)
    listing = tmp_path / "list.pt"
    save_torch_file([np.zeros(2, np.float32)], listing)
    with pytest.raises(UserError, match="dict with key 'net'"):
        convert.load_official(listing)


def test_orbax_save_and_load(params, tmp_path):
    out = tmp_path / "converted"
    convert.save_params(params, out)
    loaded = convert.load_params(out)
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    with pytest.raises(FileExistsError, match="already exists"):
        convert.save_params(params, out)
    convert.save_params({"params": params}, out, overwrite=True)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left behind
    with pytest.raises(FileNotFoundError):
        convert.load_params(tmp_path / "nothing")
    empty = tmp_path / "empty_dir"
    empty.mkdir()
    with pytest.raises(UserError, match="empty_dir"):
        convert.load_params(empty)


def test_convert_cli(official_pt, tmp_path, capsys):
    out = tmp_path / "ckpt"
    assert cli.main(["convert", str(official_pt), str(out)]) == 0
    assert "10,302,483 parameters" in capsys.readouterr().out
    assert cli.main(["convert", str(official_pt), str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert cli.main(["convert", str(tmp_path / "none.pt"), str(tmp_path / "o")]) == 2
    assert "no such file" in capsys.readouterr().err


def _fake_segformer_b0():
    """A SegFormer ImageNet MiT-b0 state dict: 3-channel stage-1 projection and a 1000-class head."""
    rng = np.random.default_rng(0)
    cfg = MIT_CONFIGS["b0"]
    shapes = param_shapes()
    sd = collections.OrderedDict()
    for key, path, kind in convert.mit_entries(cfg, torch_prefix="", flax_prefix=("backbone",)):
        shape = convert.TRANSFORMS[kind][2](shapes[path])
        if key == "patch_embed1.proj.weight":
            shape = (32, 3, 7, 7)
        sd[key] = rng.standard_normal(shape).astype(np.float32)
    sd["head.weight"] = rng.standard_normal((1000, 256)).astype(np.float32)
    sd["head.bias"] = np.zeros(1000, np.float32)
    return sd


def test_load_mit_imagenet(params, tmp_path):
    sd = _fake_segformer_b0()
    path = tmp_path / "mit_b0.pth"
    save_torch_file(sd, path)
    new = convert.load_mit_imagenet(path, params)
    bb = new["backbone"]
    np.testing.assert_array_equal(bb["block3_1"]["attn"]["kv"]["kernel"], sd["block3.1.attn.kv.weight"].T)
    np.testing.assert_array_equal(bb["patch_embed2"]["proj"]["kernel"], sd["patch_embed2.proj.weight"].transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(bb["norm4"]["scale"], sd["norm4.weight"])
    # the 16-channel stage-1 projection and everything outside the backbone are kept
    np.testing.assert_array_equal(bb["patch_embed1"]["proj"]["kernel"], params["backbone"]["patch_embed1"]["proj"]["kernel"])
    np.testing.assert_array_equal(new["decoder"]["up0"]["conv"]["kernel"], params["decoder"]["up0"]["conv"]["kernel"])
    assert params["backbone"]["norm4"]["scale"] is not bb["norm4"]["scale"]  # input not modified
    wrapped = convert.load_mit_imagenet(path, {"params": params})
    assert set(wrapped) == {"params"}
    # a missing and a foreign key are both reported
    del sd["block1.0.mlp.fc2.bias"]
    sd["decode_head.conv.weight"] = np.zeros(3, np.float32)
    bad = tmp_path / "bad.pth"
    save_torch_file({"state_dict": sd}, bad)
    with pytest.raises(UserError, match=r"missing key\(s\): block1.0.mlp.fc2.bias.*unexpected key\(s\): decode_head"):
        convert.load_mit_imagenet(bad, params)


@pytest.mark.torch
def test_interop_with_real_torch(official, tmp_path):
    torch = pytest.importorskip("torch")
    sd = official[0]
    # torch reads our files, with the safe weights_only loader
    ours = tmp_path / "ours.pt"
    save_torch_file({"net": collections.OrderedDict(sd)}, ours)
    back = torch.load(ours, weights_only=True)["net"]
    assert list(back) == list(sd)
    np.testing.assert_array_equal(back["backbone.block4.1.mlp.fc2.weight"].numpy(), sd["backbone.block4.1.mlp.fc2.weight"])
    # we read torch's files: zip and legacy formats, parameters, non-contiguous views, bfloat16
    t = torch.arange(12.0).reshape(3, 4)
    obj = {"net": collections.OrderedDict(w=t.t(), v=torch.arange(10.0)[2:5], p=torch.nn.Parameter(torch.ones(2)),
                                          h=torch.tensor([1.5, 2.0], dtype=torch.bfloat16), i=torch.arange(3))}
    for legacy in (False, True):
        path = tmp_path / f"torch_{legacy}.pt"
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
        got = load_torch_file(path)["net"]
        np.testing.assert_array_equal(got["w"], t.t().numpy())
        np.testing.assert_array_equal(got["v"], [2.0, 3.0, 4.0])
        np.testing.assert_array_equal(got["p"], [1.0, 1.0])
        np.testing.assert_array_equal(got["h"].astype(np.float32), [1.5, 2.0])
        np.testing.assert_array_equal(got["i"], [0, 1, 2])
    # a full official-layout checkpoint written by torch converts without torch
    path = tmp_path / "torch_official.pt"
    torch.save({"net": collections.OrderedDict((k, torch.from_numpy(v)) for k, v in sd.items())}, path)
    params = convert.load_official(path)
    assert convert.count_params(params) == convert.N_UNIQUE_PARAMS


def test_unknown_globals_are_refused_by_name(tmp_path):
    """Refusal happens in find_class, before the global is resolved, and names it."""
    path = tmp_path / "x.pt"
    payload = pickle.dumps(collections.Counter(a=1), protocol=2)  # collections.Counter is not allowed
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x/data.pkl", payload)
    with pytest.raises(UserError, match="collections.Counter"):
        load_torch_file(path)
