"""TFDS builders `middlebury2014` and `eth3d` from tiny fake manual directories in the documented layouts.

Each fake writes the real file formats (PNG + little-endian 'Pf' PFM + calib.txt; JPEG + raw float32 depth
named like the JPEG), the builder is built into tmp_path and the records read back are compared with the
closed forms computed here from the numbers written.
"""
import logging
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from sddr_jax import io
from sddr_jax.data import registry as data_registry
from sddr_jax.errors import UserError

H, W = 24, 32
F, CX, BASELINE, DOFFS = 3997.684, 1176.728, 193.001, 131.111  # numbers of a real 2014 calib.txt
CALIB_2014 = (f"cam0=[{F} 0 {CX}; 0 {F} 1011.728; 0 0 1]\ncam1=[{F} 0 1307.839; 0 {F} 1011.728; 0 0 1]\n"
              f"doffs={DOFFS}\nbaseline={BASELINE}\nwidth={W}\nheight={H}\nndisp=280\nisint=0\nvmin=31\n"
              "vmax=257\ndyavg=0.918\ndymax=1.516\n")


def _rgb(seed):
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _write_rgb(path, rgb, params=()):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), list(params))


def fake_middlebury2014(root: Path):
    """Two -perfect scenes (one nested as torchvision lays them out) and one -imperfect folder to ignore."""
    out = {}
    rng = np.random.default_rng(3)
    folders = (root / "Adirondack-perfect", root / "Middlebury2014" / "additional" / "Couch-perfect")
    for k, folder in enumerate(folders):
        folder.mkdir(parents=True)
        (folder / "calib.txt").write_text(CALIB_2014)
        for view, suffix in ((0, "l"), (1, "r")):
            rgb = _rgb(10 * k + view)
            disp = rng.uniform(30, 250, (H, W)).astype(np.float32)
            disp[2, 3:7] = np.inf  # unknown disparity
            _write_rgb(folder / f"im{view}.png", rgb)
            io.write_pfm(folder / f"disp{view}.pfm", disp)
            with np.errstate(divide="ignore"):
                depth = np.where(np.isfinite(disp), F * BASELINE / (disp.astype(np.float64) + DOFFS), 0.0)
            out[f"{folder.name.removesuffix('-perfect')}_{suffix}"] = (rgb, depth.astype(np.float32))
    imperfect = root / "Adirondack-imperfect"
    imperfect.mkdir()
    (imperfect / "calib.txt").write_text(CALIB_2014)  # no images: building it would fail
    return out


def fake_eth3d(root: Path):
    """Two training scenes: JPEGs in images/dslr_images, raw float32 depth of the same name beside them."""
    out = {}
    rng = np.random.default_rng(5)
    for k, (scene, stem) in enumerate((("courtyard", "DSC_0286"), ("courtyard", "DSC_0287"),
                                       ("relief_2", "DSC_0427"))):
        image = root / scene / "images" / "dslr_images" / f"{stem}.JPG"
        _write_rgb(image, _rgb(40 + k), (cv2.IMWRITE_JPEG_QUALITY, 90))
        rgb = cv2.cvtColor(cv2.imread(str(image), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)  # JPEG is lossy
        depth = rng.uniform(0.5, 40.0, (H, W)).astype("<f4")
        depth[0, :4] = np.inf  # no laser point seen in two images
        depth_file = root / scene / "ground_truth_depth" / "dslr_images" / f"{stem}.JPG"
        depth_file.parent.mkdir(parents=True, exist_ok=True)
        depth_file.write_bytes(depth.tobytes())  # row-major, no header
        out[f"{scene}_{stem}"] = (rgb, np.where(np.isfinite(depth), depth, 0.0).astype(np.float32))
    return out


def _records(builder):
    assert list(builder.info.splits) == ["test"]
    src = builder.as_data_source(split="test")
    return {r["name"].decode(): r for r in (src[i] for i in range(len(src)))}


def _check(records, expected):
    assert set(records) == set(expected)
    for name, (rgb, depth) in expected.items():
        r = records[name]
        got = cv2.imdecode(np.frombuffer(r["rgb"], np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
        np.testing.assert_array_equal(got, rgb)
        np.testing.assert_allclose(r["depth"], depth, rtol=1e-6, atol=0)
        assert r["low"] == b"" and r["high"] == b""


def test_middlebury2014_depth_is_f_b_over_d_plus_doffs(tmp_path, caplog):
    manual = tmp_path / "m"
    expected = fake_middlebury2014(manual)
    with caplog.at_level(logging.WARNING, logger="sddr_jax.datasets"):
        builder = data_registry.build("middlebury2014", tmp_path / "data", manual)
    records = _records(builder)
    _check(records, expected)
    assert sorted(records) == ["Adirondack_l", "Adirondack_r", "Couch_l", "Couch_r"]
    assert (records["Adirondack_l"]["depth"][2, 3:7] == 0).all()  # inf disparity -> invalid
    np.testing.assert_allclose(records["Couch_r"]["depth"][2, 2], expected["Couch_r"][1][2, 2], rtol=1e-6)
    assert 2000 < records["Couch_r"]["depth"][2, 2] < 4800  # mm: F*B/(250+doffs) .. F*B/(30+doffs)
    assert "not confirmed" in caplog.text  # unconfirmed facts are reported at build time


def test_middlebury2014_legacy_uint8(tmp_path):
    manual = tmp_path / "m"
    expected = fake_middlebury2014(manual)
    builder = data_registry.build("middlebury2014", tmp_path / "data", manual, config="legacy_uint8")
    depth = _records(builder)["Adirondack_l"]["depth"]
    np.testing.assert_array_equal(depth, np.floor(expected["Adirondack_l"][1]).astype(np.int64) % 256)


def test_middlebury2014_missing_disparity_names_it(tmp_path):
    manual = tmp_path / "m"
    fake_middlebury2014(manual)
    (manual / "Adirondack-perfect" / "disp1.pfm").unlink()
    with pytest.raises(UserError, match=r"Adirondack-perfect/disp1\.pfm: file not found"):
        data_registry.build("middlebury2014", tmp_path / "data", manual)


def test_middlebury2014_nan_disparity_names_it(tmp_path):
    manual = tmp_path / "m"
    fake_middlebury2014(manual)
    path = manual / "Adirondack-perfect" / "disp0.pfm"
    disp = io.read_pfm(path)
    disp[1, 1] = np.nan
    io.write_pfm(path, disp, overwrite=True)
    with pytest.raises(UserError, match=r"disp0\.pfm: disparity has 1 NaN"):
        data_registry.build("middlebury2014", tmp_path / "data", manual)


def test_eth3d_depth_is_raw_float32_inf_invalid(tmp_path, caplog):
    manual = tmp_path / "m"
    expected = fake_eth3d(manual)
    with caplog.at_level(logging.WARNING, logger="sddr_jax.datasets"):
        builder = data_registry.build("eth3d", tmp_path / "data", manual)
    records = _records(builder)
    _check(records, expected)
    assert sorted(records) == ["courtyard_DSC_0286", "courtyard_DSC_0287", "relief_2_DSC_0427"]
    assert (records["relief_2_DSC_0427"]["depth"][0, :4] == 0).all()  # +inf -> invalid
    assert "not confirmed" in caplog.text and "little-endian" in caplog.text


def test_eth3d_missing_depth_names_it(tmp_path):
    manual = tmp_path / "m"
    fake_eth3d(manual)
    (manual / "courtyard/ground_truth_depth/dslr_images/DSC_0287.JPG").unlink()
    with pytest.raises(UserError, match=r"ground_truth_depth/dslr_images/DSC_0287\.JPG: file not found"):
        data_registry.build("eth3d", tmp_path / "data", manual)


def test_eth3d_wrong_size_depth_names_it(tmp_path):
    manual = tmp_path / "m"
    fake_eth3d(manual)
    path = manual / "relief_2/ground_truth_depth/dslr_images/DSC_0427.JPG"
    path.write_bytes(np.ones((H, W + 1), "<f4").tobytes())
    with pytest.raises(UserError, match=rf"DSC_0427\.JPG: {H * (W + 1) * 4} bytes, expected {H * W * 4}"):
        data_registry.build("eth3d", tmp_path / "data", manual)


def test_eth3d_unreadable_image_names_it(tmp_path):
    manual = tmp_path / "m"
    fake_eth3d(manual)
    (manual / "courtyard/images/dslr_images/DSC_0286.JPG").write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=r"images/dslr_images/DSC_0286\.JPG: not a readable image"):
        data_registry.build("eth3d", tmp_path / "data", manual)


def test_no_tensorflow_imported():
    assert "tensorflow" not in sys.modules
