"""TFDS builders: every builder from a tiny fake manual directory in its dataset's real file format.

All builders are built once into one module-scoped directory; the tests then read the records back with
`tfds.data_source` and compare them with the values written (closed forms of each format's conversion).
"""
import sys
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest

from sddr_jax import io
from sddr_jax.data import registry as data_registry
from sddr_jax.errors import UserError
from sddr_jax_datasets import common

H, W = 32, 48
RNG = np.random.default_rng(0)


def _rgb(seed):
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _write_rgb(path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _write_map(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), arr)


def _save_npy(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, arr)


def _h5(path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("dataset", data=arr)


# --- fake manual directories: each returns {sample name: (rgb uint8, expected depth float32)} ------------

CALIB = ("cam0=[1758.23 0 953.34; 0 1758.23 552.29; 0 0 1]\ncam1=[1758.23 0 953.34; 0 1758.23 552.29; 0 0 1]\n"
         "doffs=0\nbaseline=124.86\nwidth=48\nheight=32\nndisp=290\nisint=0\nvmin=1\nvmax=270\n")


def fake_middlebury(root: Path, legacy: bool):
    out = {}
    rng = np.random.default_rng(7)  # both configs see the same disparities
    scene = root / "data" / "artroom1"
    scene.mkdir(parents=True, exist_ok=True)
    (scene / "calib.txt").write_text(CALIB)
    for view, suffix in ((0, "l"), (1, "r")):
        rgb = _rgb(10 + view)
        disp = rng.uniform(20, 300, (H, W)).astype(np.float32)
        disp[0, :5] = np.inf  # unknown disparity -> invalid
        _write_rgb(scene / f"im{view}.png", rgb)
        io.write_pfm(scene / f"disp{view}.pfm", disp)
        with np.errstate(divide="ignore"):
            depth = np.where(np.isfinite(disp), 1758.23 * 124.86 / disp, 0).astype(np.float32)
        if legacy:
            depth = (np.floor(depth).astype(np.int64) % 256).astype(np.float32)
        out[f"artroom1_{suffix}"] = (rgb, depth)
    # Precomputed predictions in the official demo layout.
    for name in out:
        _write_map(root / "LeRes" / "low_448" / f"{name}.png", rng.integers(0, 256, (16, 16), dtype=np.uint8))
        _write_map(root / "LeRes" / "high_1920" / f"{name}.png", rng.integers(0, 65535, (H, W), dtype=np.uint16))
    return out


def fake_multiscopic(root: Path):
    # GBDF's utils/multiscopic.py: multiscopic/test_b/<scene>/view<k>.png, disp<k>.png read as
    # cv2.imread(...)[:, :, 0]; view 1's disparity is a colour PNG whose channel 0 (B) holds the disparity.
    out = {}
    scene = root / "test_b" / "000001"
    for k in range(2):
        rgb, disp = _rgb(20 + k), RNG.integers(0, 200, (H, W), dtype=np.uint8)
        disp[1, 1] = 0
        _write_rgb(scene / f"view{k}.png", rgb)
        stored = disp if k == 0 else np.dstack([disp, RNG.integers(0, 256, (H, W, 2), dtype=np.uint8)])
        _write_map(scene / f"disp{k}.png", stored)
        d = disp.astype(np.float32)
        out[f"000001_view{k}"] = (rgb, np.where(disp != 0, d.max() - d, 0).astype(np.float32))
    return out


def fake_hypersim(root: Path):
    linear = RNG.uniform(0, 3, (H, W, 3)).astype(np.float16)
    dist = RNG.uniform(1, 10, (H, W)).astype(np.float16)
    dist[2, 3] = np.nan
    entity = np.ones((H, W), np.int32)
    entity[:4] = -1
    base = root / "ai_001_010" / "images"
    _h5(base / "scene_cam_00_final_hdf5" / "frame.0007.color.hdf5", linear)
    _h5(base / "scene_cam_00_geometry_hdf5" / "frame.0007.depth_meters.hdf5", dist)
    _h5(base / "scene_cam_00_geometry_hdf5" / "frame.0007.render_entity_id.hdf5", entity)
    _h5(base / "scene_cam_00_final_hdf5" / "frame.0008.color.hdf5", linear)  # not in the test list
    _h5(base / "scene_cam_00_geometry_hdf5" / "frame.0008.depth_meters.hdf5", dist)
    (root / "test_list.txt").write_text("ai_001_010/cam_00/0007\n")
    # Tone mapping by hand (Hypersim's script): p90 of brightness over entity pixels -> 0.8.
    lin = linear.astype(np.float64)
    bright = 0.3 * lin[..., 0] + 0.59 * lin[..., 1] + 0.11 * lin[..., 2]
    scale = 0.8 ** 2.2 / np.percentile(bright[entity != -1], 90)
    rgb = np.round(np.clip((scale * lin) ** (1 / 2.2), 0, 1) * 255).astype(np.uint8)
    depth = np.nan_to_num(dist.astype(np.float32), nan=0.0)
    return {"ai_001_010_cam_00_0007": (rgb, depth)}


def fake_diml(root: Path):
    rgb, mm = _rgb(30), RNG.integers(0, 20000, (H, W), dtype=np.uint16)
    scene = root / "indoor" / "test" / "HR" / "16. Billiard"  # ZoeDepth's root: diml/indoor/test/{HR,LR}
    _write_rgb(scene / "color" / "in_01_160225_155012_c.png", rgb)
    _write_map(scene / "depth_filled" / "in_01_160225_155012_depth_filled.png", mm)
    return {"in_01_160225_155012": (rgb, mm.astype(np.float32) / 1000.0)}


def fake_diode(root: Path):
    out = {}
    for kind in ("indoors", "outdoor"):
        stem = f"00019_00183_{kind}_000_010"
        scan = root / "val" / kind / "scene_00019" / "scan_00183"
        rgb, depth = _rgb(40 if kind == "indoors" else 41), RNG.uniform(0.5, 50, (H, W, 1)).astype(np.float32)
        mask = (RNG.uniform(size=(H, W)) > 0.2).astype(np.float32)
        _write_rgb(scan / f"{stem}.png", rgb)
        _save_npy(scan / f"{stem}_depth.npy", depth)
        _save_npy(scan / f"{stem}_depth_mask.npy", mask)
        out[stem] = (rgb, np.where(mask > 0, depth[..., 0], 0).astype(np.float32))
    return out


def fake_hrwsi(root: Path):
    rgb, disp = _rgb(50), RNG.integers(0, 256, (H, W), dtype=np.uint8)
    mask = np.full((H, W), 255, np.uint8)
    mask[5:7] = 0
    (root / "train" / "imgs").mkdir(parents=True)
    assert cv2.imwrite(str(root / "train" / "imgs" / "5a3e.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    _write_map(root / "train" / "gts" / "5a3e.png", disp)
    _write_map(root / "train" / "valid_masks" / "5a3e.png", mask)
    d = np.where(mask > 0, disp.astype(np.float32), 0)
    with np.errstate(divide="ignore"):
        depth = np.where(d > 0, 1.0 / (d / 255.0), 0).astype(np.float32)
    return {"5a3e": (rgb, depth)}


def fake_tartanair(root: Path):
    out = {}
    for side in ("left", "right"):
        rgb, depth = _rgb(60 if side == "left" else 61), RNG.uniform(0.5, 100, (H, W)).astype(np.float32)
        depth[0, :4] = 10000.0  # sky: a large finite depth (data_type.md), kept as valid
        # The zips unpack to <env>/<env>/<level>/P<NNN>; the README's tree has <env>/<level>/P<NNN>: one each.
        seq = root / "abandonedfactory" / ("abandonedfactory" if side == "left" else "") / "Easy" / "P001"
        _write_rgb(seq / f"image_{side}" / f"000000_{side}.png", rgb)
        _save_npy(seq / f"depth_{side}" / f"000000_{side}_depth.npy", depth)
        out[f"abandonedfactory_Easy_P001_000000_{side}"] = (rgb, depth)
    return out


def fake_unrealstereo4k(root: Path):
    # SMD-Nets filenames/train.txt: <seq>/Image{0,1}/<frame>.png, <seq>/Disp{0,1}/<frame>.npy; inf and 0 invalid.
    out = {}
    for view in (0, 1):
        rgb, disp = _rgb(70 + view), RNG.uniform(1, 300, (H, W)).astype(np.float32)
        disp[3, 3] = 0
        disp[4, :3] = np.inf
        _write_rgb(root / "00000" / f"Image{view}" / "00007.png", rgb)
        _save_npy(root / "00000" / f"Disp{view}" / "00007.npy", disp)
        with np.errstate(divide="ignore"):
            out[f"00000_00007_{view}"] = (rgb, np.where((disp > 0) & np.isfinite(disp), 1.0 / disp, 0)
                                          .astype(np.float32))
    return out


def fake_mvs_synth(root: Path):
    rgb, depth = _rgb(80), RNG.uniform(1, 500, (H, W)).astype(np.float32)
    depth[:3] = np.inf  # sky
    seq = root / "GTAV_540" / "0000"
    _write_rgb(seq / "images" / "0003.png", rgb)
    seq.joinpath("depths").mkdir(parents=True)
    common.write_exr(seq / "depths" / "0003.exr", depth, compression="ZIP")
    return {"GTAV_540_0000_0003": (rgb, np.where(np.isfinite(depth), depth, 0).astype(np.float32))}


FAKES = {
    ("middlebury2021", "legacy_uint8"): lambda r: fake_middlebury(r, legacy=True),
    ("middlebury2021", "float"): lambda r: fake_middlebury(r, legacy=False),
    ("multiscopic", None): fake_multiscopic,
    ("hypersim", None): fake_hypersim,
    ("diml", "hr"): fake_diml,
    ("diode", "all"): fake_diode,
    ("hrwsi", None): fake_hrwsi,
    ("tartanair", None): fake_tartanair,
    ("unrealstereo4k", None): fake_unrealstereo4k,
    ("mvs_synth", None): fake_mvs_synth,
}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Builds every real-format builder from its fake manual directory: {(name, config): (builder, expected)}."""
    root = tmp_path_factory.mktemp("datasets")
    out = {}
    for (name, config), fake in FAKES.items():
        manual = root / "manual" / f"{name}_{config}"
        manual.mkdir(parents=True)
        expected = fake(manual)
        builder = data_registry.build(name, root / "data", manual, config)
        out[(name, config)] = (builder, expected)
    return out


def _records(builder):
    split = next(iter(builder.info.splits))
    src = builder.as_data_source(split=split)
    return {r["name"].decode(): r for r in (src[i] for i in range(len(src)))}


@pytest.mark.parametrize("key", list(FAKES), ids=[f"{n}-{c}" for n, c in FAKES])
def test_builder_matches_format(built, key):
    builder, expected = built[key]
    records = _records(builder)
    assert set(records) == set(expected)
    for name, (rgb, depth) in expected.items():
        r = records[name]
        got_rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(r["rgb"], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(got_rgb, rgb)
        np.testing.assert_allclose(r["depth"], depth, rtol=1e-6, atol=0)
        assert r["depth"].dtype == np.float32


def test_no_tensorflow_imported(built):
    assert "tensorflow" not in sys.modules


def test_middlebury_predictions_and_configs(built):
    builder, expected = built[("middlebury2021", "legacy_uint8")]
    records = _records(builder)
    low = cv2.imdecode(np.frombuffer(records["artroom1_l"]["low"], np.uint8), cv2.IMREAD_UNCHANGED)
    high = cv2.imdecode(np.frombuffer(records["artroom1_l"]["high"], np.uint8), cv2.IMREAD_UNCHANGED)
    assert low.shape == (16, 16) and low.dtype == np.uint8
    assert high.shape == (H, W) and high.dtype == np.uint16
    # Legacy GT wraps modulo 256; the float config keeps millimetres (here > 256 for most pixels).
    flt = _records(built[("middlebury2021", "float")][0])["artroom1_l"]["depth"]
    leg = records["artroom1_l"]["depth"]
    assert flt.max() > 256 and leg.max() < 256
    np.testing.assert_array_equal(leg, np.floor(flt).astype(np.int64) % 256)
    assert (flt[0, :5] == 0).all()  # infinite disparity -> invalid


def test_datasets_without_predictions_store_empty(built):
    records = _records(built[("tartanair", None)][0])
    assert all(r["low"] == b"" and r["high"] == b"" for r in records.values())


def test_hypersim_test_list_selects_frames(built):
    records = _records(built[("hypersim", None)][0])
    assert list(records) == ["ai_001_010_cam_00_0007"]


def test_hypersim_test_list_line_forms():
    from sddr_jax_datasets.hypersim.hypersim_dataset_builder import parse_frame

    for line in ("ai_001_010/cam_00/0007", "ai_001_010_cam_00_0007", " ai_001_010/cam_0/7 ",
                 "/data/hypersim/ai_001_010/images/scene_cam_00_final_hdf5/frame.0007.color.hdf5",
                 "C:\\hypersim\\ai_001_010\\images\\scene_cam_00_final_hdf5\\frame.0007.color.hdf5"):
        assert parse_frame(line) == "ai_001_010_cam_00_0007", line
    assert parse_frame("frame.0007.color.hdf5") is None and parse_frame("xai_001_010/cam_00/0007") is None


# --- bad input ---------------------------------------------------------------------------------------------

def _build(tmp_path, name, manual, **kw):
    return data_registry.build(name, tmp_path / "data", manual, **kw)


def test_missing_file_names_it(tmp_path):
    manual = tmp_path / "m"
    fake_tartanair(manual)
    (manual / "abandonedfactory/abandonedfactory/Easy/P001/depth_left/000000_left_depth.npy").unlink()
    with pytest.raises(UserError, match=r"000000_left_depth\.npy: file not found"):
        _build(tmp_path, "tartanair", manual)


def test_nan_depth_names_file(tmp_path):
    manual = tmp_path / "m"
    fake_tartanair(manual)
    path = manual / "abandonedfactory/Easy/P001/depth_right/000000_right_depth.npy"
    d = np.load(path)
    d[0, 0] = np.nan
    np.save(path, d)
    with pytest.raises(UserError, match=r"000000_right_depth\.npy: depth has 1 NaN"):
        _build(tmp_path, "tartanair", manual)


def test_mismatched_sizes_names_files(tmp_path):
    manual = tmp_path / "m"
    fake_unrealstereo4k(manual)
    np.save(manual / "00000/Disp0/00007.npy", np.ones((H + 1, W), np.float32))
    with pytest.raises(UserError, match=r"00007\.png.*00007\.npy: image is 48x32 but depth is 48x33"):
        _build(tmp_path, "unrealstereo4k", manual)


def test_wrong_format_names_file(tmp_path):
    manual = tmp_path / "m"
    fake_middlebury(manual, legacy=False)
    (manual / "data/artroom1/disp1.pfm").write_bytes(b"P6\n1 1\n255\n\0\0\0")
    with pytest.raises(UserError, match=r"disp1\.pfm: not a PFM file"):
        _build(tmp_path, "middlebury2021", manual, config="float")


def test_corrupt_sample_skipped_only_with_flag(tmp_path, capsys):
    manual = tmp_path / "m"
    fake_multiscopic(manual)
    (manual / "test_b/000001/view1.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match=r"view1\.png: not a readable image.*--skip_corrupt"):
        _build(tmp_path, "multiscopic", manual)
    builder = data_registry.build("multiscopic", tmp_path / "data2", manual, skip_corrupt=True)
    assert builder.info.splits["test"].num_examples == 1
    assert len(builder.skipped["test"]) == 1 and "view1.png" in builder.skipped["test"][0]
    assert "skipped 1 corrupt sample(s)" in capsys.readouterr().err


def test_empty_manual_dir_and_unknown_names(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(UserError, match="empty. diode expects"):
        _build(tmp_path, "diode", tmp_path / "m")
    with pytest.raises(UserError, match="unknown; known datasets"):
        data_registry.get_builder("nyu", tmp_path)
    with pytest.raises(UserError, match="unknown config 'x'"):
        data_registry.get_builder("diml", tmp_path, "x")


def test_several_predictors_need_a_choice(tmp_path):
    manual = tmp_path / "m"
    fake_multiscopic(manual)
    for pred in ("LeRes", "MiDaS"):
        for name in ("000001_view0", "000001_view1"):
            _write_map(manual / pred / "low_384" / f"{name}.png", np.zeros((8, 8), np.uint8))
            _write_map(manual / pred / "high_1024" / f"{name}.png", np.zeros((8, 8), np.uint8))
    with pytest.raises(UserError, match="several precomputed predictions"):
        _build(tmp_path, "multiscopic", manual)
    builder = data_registry.build("multiscopic", tmp_path / "d2", manual, predictor="MiDaS")
    assert all(len(r["low"]) for r in _records(builder).values())


# --- format helpers ------------------------------------------------------------------------------------------

# Every compression of the OpenEXR library, on files that the library writes by itself: the lossless ones
# (and B44/B44A, lossy only on HALF channels) exactly, PXR24 (24-bit floats) and DWAA/DWAB (lossy) to their
# precision; so are the files our writer makes.
@pytest.mark.parametrize("compression", common.EXR_COMPRESSIONS)
def test_exr_every_compression(tmp_path, compression):
    import OpenEXR

    a = RNG.uniform(0, 100, (37, 21)).astype(np.float32)
    a[0, 0] = np.inf
    # written by the library alone (not by our writer), with a second channel before the depth one
    header = {"compression": getattr(OpenEXR, f"{compression}_COMPRESSION"), "type": OpenEXR.scanlineimage}
    with OpenEXR.File(header, {"A": np.zeros_like(a), "Z": a}) as f:
        f.write(str(tmp_path / "lib.exr"))
    common.write_exr(tmp_path / "ours.exr", a, compression=compression)
    # default channel: Z before the first one (A)
    for got in (common.read_exr(tmp_path / "lib.exr"), common.read_exr(tmp_path / "ours.exr")):
        assert got.dtype == np.float32 and got.shape == a.shape
        if compression == "PXR24":  # 24-bit float: 15 mantissa bits
            np.testing.assert_allclose(got, a, rtol=2 ** -15)
        elif compression.startswith("DWA"):  # lossy (DCT on half floats); the inf pixel may saturate
            np.testing.assert_allclose(got[1:], a[1:], rtol=0.05)
        else:
            np.testing.assert_array_equal(got, a)


def test_exr_tiled_half_and_errors(tmp_path):
    import OpenEXR

    a = RNG.uniform(0, 10, (20, 33)).astype(np.float16)
    tiles = OpenEXR.TileDescription()
    tiles.xSize, tiles.ySize, tiles.mode, tiles.roundingMode = 16, 16, OpenEXR.ONE_LEVEL, OpenEXR.ROUND_DOWN
    header = {"compression": OpenEXR.PIZ_COMPRESSION, "type": OpenEXR.tiledimage, "tiles": tiles}
    with OpenEXR.File(header, {"R": a, "G": a}) as f:
        f.write(str(tmp_path / "tiled.exr"))
    got = common.read_exr(tmp_path / "tiled.exr")
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, a.astype(np.float32))
    with pytest.raises(UserError, match="no channel 'Y'"):
        common.read_exr(tmp_path / "tiled.exr", channel="Y")
    (tmp_path / "bad.exr").write_bytes(b"not an exr at all")
    with pytest.raises(UserError, match="bad.exr"):
        common.read_exr(tmp_path / "bad.exr")
    with pytest.raises(UserError, match="compression"):
        common.write_exr(tmp_path / "x.exr", a, compression="LZW")


def test_pfm_is_bottom_up(tmp_path):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    io.write_pfm(tmp_path / "a.pfm", a)
    raw = (tmp_path / "a.pfm").read_bytes()
    # The first stored row is the bottom image row.
    assert np.frombuffer(raw[-24:-12], "<f4").tolist() == [3.0, 4.0, 5.0]
    arr, scale = common.read_pfm(tmp_path / "a.pfm", return_scale=True)
    np.testing.assert_array_equal(arr, a)
    assert scale == 1.0


def test_hypersim_tonemap_closed_form():
    from sddr_jax_datasets.hypersim.hypersim_dataset_builder import tonemap

    img = np.full((4, 4, 3), 0.5)
    # Uniform brightness 0.5 -> scale = 0.8^2.2 / 0.5 -> every channel maps to 0.8.
    np.testing.assert_array_equal(tonemap(img), np.full((4, 4, 3), round(0.8 * 255), np.uint8))


def test_cli_build_and_list(tmp_path, capsys):
    from sddr_jax.cli import main

    manual = tmp_path / "m"
    fake_diml(manual)
    assert main(["datasets", "build", "diml", "--data_dir", str(tmp_path / "d"), "--manual_dir", str(manual)]) == 0
    assert "diml/hr/1.0.0 test: 1 examples" in capsys.readouterr().out
    assert main(["datasets", "build", "diml", "--data_dir", str(tmp_path / "d"), "--manual_dir", str(manual)]) == 0
    assert "already built" in capsys.readouterr().out
    assert main(["datasets", "build", "diml", "--data_dir", str(tmp_path / "d"), "--manual_dir",
                 str(tmp_path / "none")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["datasets", "list"]) == 0
    assert "middlebury2021" in capsys.readouterr().out
