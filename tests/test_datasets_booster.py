"""TFDS builder `booster`: a tiny fake manual directory in Booster's layout, built and read back."""
import cv2
import numpy as np
import pytest

from sddr_jax.data import registry as data_registry
from sddr_jax.errors import UserError

H, W = 12, 16
FX, BASELINE_MM = 1200.0, 78.5


def _write_calib(path, fx=FX, baseline_mm=BASELINE_MM):
    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_WRITE)
    fs.write("proj_matL", np.array([[fx, 0, W / 2, 0], [0, fx, H / 2, 0], [0, 0, 1, 0]], np.float64))
    fs.write("baselineLR", float(baseline_mm))
    fs.release()


def fake_booster(root, scenes=("Bottle", "Mirror"), lights=2):
    """Writes <root>/train/balanced/<Scene>/...; returns {sample name: (rgb, expected depth in metres)}."""
    out = {}
    for s, scene in enumerate(scenes):
        d = root / "train" / "balanced" / scene
        (d / "camera_00").mkdir(parents=True)
        (d / "camera_02").mkdir()
        disp = np.random.default_rng(s).uniform(50, 400, (H, W)).astype(np.float32)
        disp[0, :3] = 0  # no GT
        np.save(d / "disp_00.npy", disp)
        np.save(d / "disp_02.npy", disp)  # the right view's GT is not used
        _write_calib(d / "calib_00-02.xml")
        cv2.imwrite(str(d / "mask_00.png"), np.full((H, W), 255, np.uint8))
        cv2.imwrite(str(d / "mask_cat.png"), np.zeros((H, W), np.uint8))
        depth = np.where(disp > 0, FX * BASELINE_MM / 1000.0 / np.where(disp > 0, disp, 1), 0).astype(np.float32)
        for k in range(lights):
            rgb = np.random.default_rng(100 + 10 * s + k).integers(0, 256, (H, W, 3), dtype=np.uint8)
            assert cv2.imwrite(str(d / "camera_00" / f"im{k}.png"), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
            assert cv2.imwrite(str(d / "camera_02" / f"im{k}.png"), rgb[..., ::-1])
            out[f"{scene}_im{k}"] = (rgb, depth)
    return out


def _records(builder):
    src = builder.as_data_source(split="train")
    return {r["name"].decode(): r for r in (src[i] for i in range(len(src)))}


def _build(tmp_path, manual, config=None):
    return data_registry.build("booster", tmp_path / "data", manual, config=config)


def test_booster_depth_matches_closed_form(tmp_path):
    manual = tmp_path / "manual"
    expected = fake_booster(manual)
    records = _records(_build(tmp_path, manual))
    assert set(records) == set(expected) == {"Bottle_im0", "Bottle_im1", "Mirror_im0", "Mirror_im1"}
    for name, (rgb, depth) in expected.items():
        r = records[name]
        got = cv2.cvtColor(cv2.imdecode(np.frombuffer(r["rgb"], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(got, rgb)
        np.testing.assert_allclose(r["depth"], depth, rtol=1e-6)
        assert (r["depth"][0, :3] == 0).all() and (r["depth"][1:] > 0).all()  # disparity 0 -> invalid
        assert r["low"] == b"" and r["high"] == b""


def test_booster_im0_config_keeps_one_image_per_scene(tmp_path):
    manual = tmp_path / "manual"
    fake_booster(manual, lights=3)
    assert set(_records(_build(tmp_path, manual, config="im0"))) == {"Bottle_im0", "Mirror_im0"}


def test_booster_missing_calib_names_it(tmp_path):
    manual = tmp_path / "manual"
    fake_booster(manual, scenes=("Bottle",), lights=1)
    (manual / "train/balanced/Bottle/calib_00-02.xml").unlink()
    with pytest.raises(UserError, match=r"calib_00-02\.xml: file not found"):
        _build(tmp_path, manual)


def test_booster_bad_calib_names_it(tmp_path):
    manual = tmp_path / "manual"
    fake_booster(manual, scenes=("Bottle",), lights=1)
    calib = manual / "train/balanced/Bottle/calib_00-02.xml"
    _write_calib(calib, baseline_mm=-1.0)
    with pytest.raises(UserError, match=r"calib_00-02\.xml: expected positive"):
        _build(tmp_path, manual)


def test_booster_bad_disparity_names_it(tmp_path):
    manual = tmp_path / "manual"
    fake_booster(manual, scenes=("Bottle",), lights=1)
    (manual / "train/balanced/Bottle/disp_00.npy").write_bytes(b"not an npy file")
    with pytest.raises(UserError, match=r"disp_00\.npy: not a readable \.npy"):
        _build(tmp_path, manual)


def test_booster_scene_without_images_names_it(tmp_path):
    manual = tmp_path / "manual"
    fake_booster(manual, scenes=("Bottle",), lights=1)
    (manual / "train/balanced/Bottle/camera_00/im0.png").unlink()
    with pytest.raises(UserError, match=r"camera_00: no left images"):
        _build(tmp_path, manual)
