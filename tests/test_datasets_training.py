"""TFDS builders `irs` and `ibims1`: tiny fake manual directories in each dataset's documented layout and real
file formats, built and read back with `tfds.data_source`; stored depth is checked against closed forms."""
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from sddr_jax.data import registry as data_registry
from sddr_jax.errors import UserError
from sddr_jax_datasets import common

H, W = 24, 32


def _rgb(seed):
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _write_rgb(path: Path, rgb):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _write_map(path: Path, arr):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), arr)


def _records(builder, split="train"):
    src = builder.as_data_source(split=split)
    return {r["name"].decode(): r for r in (src[i] for i in range(len(src)))}


def _check(builder, expected):
    records = _records(builder)
    assert set(records) == set(expected)
    for name, (rgb, depth) in expected.items():
        r = records[name]
        got = cv2.cvtColor(cv2.imdecode(np.frombuffer(r["rgb"], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(got, rgb)
        assert r["depth"].dtype == np.float32
        np.testing.assert_allclose(r["depth"], depth, rtol=1e-6, atol=0)


# --- IRS: IRSDataset/<Cat>/<Scene>/{l_,r_}<N>.png, d_<N>.exr; lists of 'left right disp normal' ------------

IRS_FRAMES = (("Home", "ArchVizInterior03Data", "00001"), ("Home", "ArchVizInterior03Data", "00008"),
              ("Office", "SimpleOffice_Dark", "00015"))


def _irs_line(cat, scene, n):
    return " ".join(f"{cat}/{scene}/{k}_{n}.{ext}" for k, ext in (("l", "png"), ("r", "png"), ("d", "exr"),
                                                                  ("n", "exr")))


def fake_irs(manual: Path, train_list=True, channel="G"):
    """Writes IRS_FRAMES (one-channel disparity EXRs: IRS's EXRloader reads channel G); the train list (when
    written) holds the first two. Returns {name: (rgb, depth)}."""
    root = manual / "IRSDataset"
    out = {}
    for k, (cat, scene, n) in enumerate(IRS_FRAMES):
        folder = root / cat / scene
        rgb = _rgb(k)
        disp = np.random.default_rng(10 + k).uniform(0.5, 120, (H, W)).astype(np.float32)
        disp[0, :4] = 0  # no disparity -> invalid
        disp[1, 0] = np.inf
        _write_rgb(folder / f"l_{n}.png", rgb)
        _write_rgb(folder / f"r_{n}.png", _rgb(100 + k))
        common.write_exr(folder / f"d_{n}.exr", disp, channel=channel)
        with np.errstate(divide="ignore"):
            depth = np.where(np.isfinite(disp) & (disp > 0), 480.0 * 0.1 / disp.astype(np.float64), 0.0)
        out[f"{cat}_{scene}_{n}"] = (rgb, depth.astype(np.float32))
    if train_list:
        (manual / "lists").mkdir()
        (manual / "lists" / "IRSDataset_TRAIN.list").write_text(
            "\n".join(_irs_line(*f) for f in IRS_FRAMES[:2]) + "\n")
        out.pop("Office_SimpleOffice_Dark_00015")
    return out


def test_irs_train_list_and_depth(tmp_path, caplog):
    expected = fake_irs(tmp_path / "m")
    with caplog.at_level(logging.WARNING, logger="sddr_jax.datasets"):
        builder = data_registry.build("irs", tmp_path / "data", tmp_path / "m")
    assert list(builder.info.splits) == ["train"]
    _check(builder, expected)
    rec = _records(builder)["Home_ArchVizInterior03Data_00001"]["depth"]
    assert (rec[0, :4] == 0).all() and rec[1, 0] == 0
    assert "focal length 480 px and baseline 0.1 m" in caplog.text


def test_irs_without_train_list_excludes_test_list(tmp_path, caplog):
    expected = fake_irs(tmp_path / "m", train_list=False, channel="Y")
    (tmp_path / "m" / "irs_test.list").write_text(_irs_line(*IRS_FRAMES[1]) + "\n")
    expected.pop("Home_ArchVizInterior03Data_00008")
    with caplog.at_level(logging.WARNING, logger="sddr_jax.datasets"):
        builder = data_registry.build("irs", tmp_path / "data", tmp_path / "m")
    _check(builder, expected)  # also: a one-channel EXR whose channel is not named G
    assert "using every frame not in the test list" in caplog.text


def test_irs_missing_disparity_names_it(tmp_path):
    fake_irs(tmp_path / "m")
    (tmp_path / "m/IRSDataset/Home/ArchVizInterior03Data/d_00008.exr").unlink()
    with pytest.raises(UserError, match=r"d_00008\.exr: file not found"):
        data_registry.build("irs", tmp_path / "data", tmp_path / "m")


def test_irs_multichannel_disparity_names_it(tmp_path):
    import OpenEXR

    fake_irs(tmp_path / "m")
    a = np.ones((H, W), np.float32)
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    with OpenEXR.File(header, {"R": a, "G": a, "B": a}) as f:  # the library groups these as one 'RGB' channel
        f.write(str(tmp_path / "m/IRSDataset/Home/ArchVizInterior03Data/d_00001.exr"))
    with pytest.raises(UserError, match=r"d_00001\.exr: channel 'RGB' has shape"):
        data_registry.build("irs", tmp_path / "data", tmp_path / "m")


def test_irs_bad_list_line_names_it(tmp_path):
    fake_irs(tmp_path / "m")
    (tmp_path / "m/lists/IRSDataset_TRAIN.list").write_text("Home/x/l_00001.png Home/x/r_00001.png\n")
    with pytest.raises(UserError, match=r"IRSDataset_TRAIN\.list:1: expected 'left right disparity"):
        data_registry.build("irs", tmp_path / "data", tmp_path / "m")


# --- iBims-1: imagelist.txt + ibims1_core_mat/<name>.mat or ibims1_core_raw/<folder>/<name>.png -----------

def _ibims_arrays(seed):
    rng = np.random.default_rng(seed)
    depth = rng.uniform(0.3, 12, (H, W))
    depth[2, :3] = 0  # missing laser return
    mask_invalid = np.ones((H, W), np.uint8)
    mask_invalid[5:7] = 0
    mask_transp = np.ones((H, W), np.uint8)
    mask_transp[:, 10:12] = 0
    return _rgb(50 + seed), depth, mask_invalid, mask_transp


def fake_ibims_mat(manual: Path):
    """imagelist.txt lists two of three .mat files; returns {name: (rgb, depth)} of the listed ones."""
    out = {}
    (manual / "ibims1_core_mat").mkdir(parents=True)
    for k, name in enumerate(("corridor_01", "office_04", "extra_01")):
        rgb, depth, mask_invalid, mask_transp = _ibims_arrays(k)
        scipy.io.savemat(manual / "ibims1_core_mat" / f"{name}.mat", {"data": {
            "rgb": rgb, "depth": depth.astype(np.float32), "mask_invalid": mask_invalid,
            "mask_transp": mask_transp, "edges": np.zeros((H, W), np.uint8), "calib": np.eye(3)}})
        valid = (mask_invalid * mask_transp * (depth != 0)) != 0
        out[name] = (rgb, np.where(valid, depth.astype(np.float32), 0).astype(np.float32))
    (manual / "imagelist.txt").write_text("corridor_01\noffice_04\n")
    out.pop("extra_01")
    return out


def fake_ibims_raw(manual: Path):
    raw = manual / "ibims1_core_raw"
    rgb, depth, mask_invalid, mask_transp = _ibims_arrays(7)
    value = np.round(depth / 50.0 * 65535).astype(np.uint16)
    _write_rgb(raw / "rgb" / "kitchen_02.png", rgb)
    _write_map(raw / "depth" / "kitchen_02.png", value)
    _write_map(raw / "mask_invalid" / "kitchen_02.png", mask_invalid * 255)
    _write_map(raw / "mask_transp" / "kitchen_02.png", mask_transp)
    (manual / "imagelist.txt").write_text("kitchen_02\n")
    valid = (mask_invalid != 0) & (mask_transp != 0) & (value != 0)
    return {"kitchen_02": (rgb, np.where(valid, value * 50.0 / 65535.0, 0).astype(np.float32))}


def test_ibims_mat_imagelist_and_masks(tmp_path):
    expected = fake_ibims_mat(tmp_path / "m")
    builder = data_registry.build("ibims1", tmp_path / "data", tmp_path / "m")
    assert list(builder.info.splits) == ["train"]
    _check(builder, expected)
    d = _records(builder)["corridor_01"]["depth"]
    assert (d[5:7] == 0).all() and (d[:, 10:12] == 0).all() and (d[2, :3] == 0).all()


def test_ibims_raw_png_scale(tmp_path, caplog):
    expected = fake_ibims_raw(tmp_path / "m")
    with caplog.at_level(logging.WARNING, logger="sddr_jax.datasets"):
        builder = data_registry.build("ibims1", tmp_path / "data", tmp_path / "m")
    _check(builder, expected)
    assert "value * 50 / 65535" in caplog.text


def test_ibims_missing_and_bad_mat_name_the_file(tmp_path):
    fake_ibims_mat(tmp_path / "m")
    (tmp_path / "m/imagelist.txt").write_text("corridor_01\nbathroom_09\n")
    with pytest.raises(UserError, match=r"bathroom_09\.mat: file not found"):
        data_registry.build("ibims1", tmp_path / "d1", tmp_path / "m")
    (tmp_path / "m/imagelist.txt").write_text("office_04\n")
    scipy.io.savemat(tmp_path / "m/ibims1_core_mat/office_04.mat", {"data": {"rgb": _rgb(0)}})
    with pytest.raises(UserError, match=r"office_04\.mat: struct 'data' lacks fields \['depth'"):
        data_registry.build("ibims1", tmp_path / "d2", tmp_path / "m")
