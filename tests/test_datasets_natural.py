"""TFDS builders `holopix50k`, `wsvd`, `vdw` and the build-time stereo matcher: tiny fake manual directories in
each dataset's documented layout and real formats, built and read back with `tfds.data_source`; stored depth is
checked against closed forms."""
import logging
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest

from sddr_jax.data import registry as data_registry
from sddr_jax.errors import UserError
from sddr_jax_datasets import stereo

H, W = 64, 128
D_BG, D_FG = 4, 12  # disparities (px) of the background and of a fronto-parallel foreground square
FG_Y, FG_X, FG_H, FG_W = 20, 60, 24, 32


def _records(builder, split="train"):
    src = builder.as_data_source(split=split)
    return {r["name"].decode(): r for r in (src[i] for i in range(len(src)))}


def _decode(png):
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def stereo_scene(seed):
    """A rectified pair (x_right = x_left - d) of random texture: background at D_BG, a square at D_FG.

    Returns left, right and masks (foreground interior, background interior, occluded strip: the background just
    left of the square in the left view, hidden behind it in the right view)."""
    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 256, (H, W + 32, 3), dtype=np.uint8)
    fg = rng.integers(0, 256, (FG_H, FG_W, 3), dtype=np.uint8)
    left = bg[:, 16:16 + W].copy()
    left[FG_Y:FG_Y + FG_H, FG_X:FG_X + FG_W] = fg
    right = bg[:, 16 + D_BG:16 + D_BG + W].copy()  # right(x) = left(x + d)
    right[FG_Y:FG_Y + FG_H, FG_X - D_FG:FG_X - D_FG + FG_W] = fg
    fg_in = np.zeros((H, W), bool)
    fg_in[FG_Y + 5:FG_Y + FG_H - 5, FG_X + 5:FG_X + FG_W - 5] = True  # 5x5 windows + path smoothing
    occluded = np.zeros((H, W), bool)
    occluded[FG_Y + 3:FG_Y + FG_H - 3, FG_X - (D_FG - D_BG):FG_X] = True
    bg_in = np.ones((H, W), bool)
    # SGBM leaves the first num_disparities (16) columns unmatched; keep 4 px from the frame and the square.
    bg_in[:, :24] = bg_in[:4] = bg_in[-4:] = bg_in[:, -4:] = False
    bg_in[FG_Y - 4:FG_Y + FG_H + 4, FG_X - (D_FG - D_BG) - 4:FG_X + FG_W + 4] = False
    return left, right, {"fg": fg_in, "bg": bg_in, "occluded": occluded}


def check_stereo_depth(depth, masks, outliers=0.0):
    """On exact integer shifts SGBM's sub-pixel output (1/16 px steps) lands on d; we allow one step, i.e. a depth
    within (1/16)/d relative of 1/d, on every valid interior pixel, and require most interior pixels valid
    (SGBM's uniqueness and speckle filters drop a few) and most of the occluded strip invalid (left-right check).
    `outliers`: the fraction of valid interior pixels allowed off by more (bilinearly upscaled views, WSVD)."""
    for key, d in (("fg", D_FG), ("bg", D_BG)):
        v = depth[masks[key]]
        assert (v > 0).mean() >= 0.8, key
        v = v[v > 0]
        off = np.abs(v * d - 1.0) > (1 / 16) / d + 1e-6
        assert off.mean() <= outliers, (key, off.mean())
    assert (depth[masks["occluded"]] == 0).mean() >= 0.7
    assert depth.dtype == np.float32 and (depth >= 0).all()


def test_left_right_check_closed_form():
    dl = np.array([[2.0, 2.0, 2.0, 3.0, 0.0, 1.0]], np.float32)
    dr = np.array([[2.0, 2.5, 0.0, 9.0, 1.0, 1.0]], np.float32)
    # x=0,1: match x-2 < 0 -> 0; x=2 -> dr[0]=2 ok; x=3 -> dr[0]=2, |3-2| <= 1 ok; x=4: dl=0; x=5 -> dr[4]=1 ok
    np.testing.assert_array_equal(stereo.left_right_check(dl, dr, 1.0), [[0, 0, 2, 3, 0, 1]])
    np.testing.assert_array_equal(stereo.left_right_check(dl, dr, 0.5), [[0, 0, 2, 0, 0, 1]])


def test_sgbm_disparity_two_planes():
    left, right, masks = stereo_scene(0)
    disp = stereo.sgbm_disparity(left, right)
    with np.errstate(divide="ignore"):
        check_stereo_depth(np.where(disp > 0, 1.0 / disp, 0.0).astype(np.float32), masks)


# --- Holopix50k: Holopix50k/<split>/left/<id>_left.jpg, right/<id>_right.jpg ------------------------------------
# JPEG would blur the closed form; the builder reads any image extension, the test writes lossless PNG.

def fake_holopix(manual: Path, ids=("-LMtwlM1N9gvTDTw6-Y9", "-LMu0DlYpepPWNvoAKIe"), split="train"):
    out = {}
    for k, pid in enumerate(ids):
        left, right, masks = stereo_scene(k)
        for view, img in (("left", left), ("right", right)):
            path = manual / "Holopix50k" / split / view / f"{pid}_{view}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(path), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        out[pid] = (left, masks)
    return out


def test_holopix50k_sgbm_depth(tmp_path, caplog):
    expected = fake_holopix(tmp_path / "m")
    fake_holopix(tmp_path / "m", ids=("-LQzA2kMfyMG316f7Mr",), split="val")
    with caplog.at_level(logging.WARNING, logger="sddr_jax.datasets"):
        builder = data_registry.build("holopix50k", tmp_path / "data", tmp_path / "m")
    assert sorted(builder.info.splits) == ["train", "validation"]
    records = _records(builder)
    assert set(records) == set(expected)
    for pid, (left, masks) in expected.items():
        np.testing.assert_array_equal(_decode(records[pid]["rgb"]), left)
        check_stereo_depth(records[pid]["depth"], masks)
    assert "third-party loaders" in caplog.text and "StereoSGBM" in caplog.text


def test_holopix50k_missing_right_view_names_it(tmp_path):
    fake_holopix(tmp_path / "m")
    (tmp_path / "m/Holopix50k/train/right/-LMu0DlYpepPWNvoAKIe_right.png").unlink()
    with pytest.raises(UserError, match=r"-LMu0DlYpepPWNvoAKIe_right\.png: file not found"):
        data_registry.build("holopix50k", tmp_path / "data", tmp_path / "m")


# --- WSVD: wsvd_{train,test}_clip_frame_ids.pkl + wsvd/<id>.mp4 (half-width side-by-side frames) --------------
# A lossless FFV1 .mkv stands in for YouTube's H.264 .mp4 (the reader is OpenCV's either way).

def _half_width(img):
    return img[:, ::2]  # x2 bilinear upscaling of these columns gives back a pair shifted by exactly 2x


def fake_wsvd(manual: Path, n_frames=5):
    """One video, 'abcDEF12345', whose frame t is the scene of seed t; clips list frames [0, 2, 4] and [3]."""
    manual.mkdir(parents=True)
    (manual / "wsvd").mkdir()
    path = manual / "wsvd" / "abcDEF12345.mkv"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"FFV1"), 30, (W, H))
    assert writer.isOpened()
    scenes = []
    for t in range(n_frames):
        left, right, masks = stereo_scene(10 + t)
        sbs = np.concatenate([_half_width(left), _half_width(right)], axis=1)
        writer.write(cv2.cvtColor(sbs, cv2.COLOR_RGB2BGR))
        scenes.append((sbs, masks))
    writer.release()
    clips = [{"name": "abcDEF12345", "clips": [{"frames": np.array([0, 2, 4])}, {"frames": [3]}]},
             {"name": "gone_video1", "clips": [{"frames": [0]}]}]
    (manual / "wsvd_train_clip_frame_ids.pkl").write_bytes(pickle.dumps(clips))
    return scenes


def test_wsvd_sampled_frames_and_depth(tmp_path, caplog):
    scenes = fake_wsvd(tmp_path / "m")
    with caplog.at_level(logging.WARNING, logger="sddr_jax.datasets"):
        builder = data_registry.build("wsvd", tmp_path / "data", tmp_path / "m", frame_stride=2)
    records = _records(builder)
    # stride 2 over each clip's list: [0, 4] from the first clip, [3] from the second
    assert sorted(records) == ["abcDEF12345_000000", "abcDEF12345_000003", "abcDEF12345_000004"]
    for t in (0, 3, 4):
        sbs, masks = scenes[t]
        r = records[f"abcDEF12345_{t:06d}"]
        left = cv2.resize(sbs[:, :W // 2], (W, H), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_array_equal(_decode(r["rgb"]), left)
        # halving and bilinear x2 upscaling keep the shifts at 2 * (d/2) = d; the square's edges blur by a pixel
        check_stereo_depth(r["depth"], masks, outliers=0.01)
    assert "1 video(s) of wsvd_train_clip_frame_ids.pkl not found" in caplog.text


def test_wsvd_bad_pickle_and_short_video_name_the_file(tmp_path):
    fake_wsvd(tmp_path / "m")
    clip_list = tmp_path / "m/wsvd_train_clip_frame_ids.pkl"
    clip_list.write_bytes(pickle.dumps([{"name": "abcDEF12345", "clips": [{"frames": [9]}]}]))
    with pytest.raises(UserError, match=r"abcDEF12345\.mkv: the video ends before frame 9"):
        data_registry.build("wsvd", tmp_path / "d1", tmp_path / "m")
    clip_list.write_bytes(pickle.dumps([{"name": "abcDEF12345", "clips": [{"frames": [0]}]}])[:-5])
    with pytest.raises(UserError, match=r"wsvd_train_clip_frame_ids\.pkl: not a readable WSVD clip list"):
        data_registry.build("wsvd", tmp_path / "d2", tmp_path / "m")
    clip_list.write_bytes(pickle.dumps([{"name": Path("x")}]))  # a non-builtin class is refused, not run
    with pytest.raises(UserError, match=r"wsvd_train_clip_frame_ids\.pkl: not a readable WSVD clip list"):
        data_registry.build("wsvd", tmp_path / "d3", tmp_path / "m")


# --- VDW: <NNNNNN>/{left,left_gt,left_mask}/frame_<FFFFFF>.png --------------------------------------------------

def fake_vdw(manual: Path, n_frames=4):
    """Two sequences of n_frames; gt uint16 disparity (0 = sky), mask 255 on a block. Returns {name: (rgb,
    depth)} for frames 0 and 2 (stride 2) of the left view."""
    out = {}
    for s, seq in enumerate(("000001", "000417")):
        for f in range(n_frames):
            rng = np.random.default_rng(100 * s + f)
            rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
            gt = rng.integers(1, 65536, (H, W)).astype(np.uint16)
            gt[:5] = 0  # sky
            mask = np.zeros((H, W), np.uint8)
            mask[10:20, 30:50] = 255  # inconsistent
            name = f"frame_{f:06d}.png"
            right = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
            for folder, arr in (("left", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)), ("left_gt", gt), ("left_mask", mask),
                                ("right", right), ("right_gt", gt), ("right_mask", mask)):
                (manual / seq / folder).mkdir(parents=True, exist_ok=True)
                assert cv2.imwrite(str(manual / seq / folder / name), arr)
            depth = np.where((mask != 255) & (gt > 0), 65535.0 / np.maximum(gt, 1).astype(np.float64), 0.0)
            if f % 2 == 0:
                out[f"{seq}_{f:06d}_left"] = (rgb, depth.astype(np.float32))
    return out


def test_vdw_depth_mask_and_stride(tmp_path, caplog):
    expected = fake_vdw(tmp_path / "m")
    with caplog.at_level(logging.WARNING, logger="sddr_jax.datasets"):
        builder = data_registry.build("vdw", tmp_path / "data", tmp_path / "m", frame_stride=2)
    records = _records(builder)
    assert set(records) == set(expected)
    for name, (rgb, depth) in expected.items():
        np.testing.assert_array_equal(_decode(records[name]["rgb"]), rgb)
        np.testing.assert_allclose(records[name]["depth"], depth, rtol=1e-6, atol=0)
    rec = records["000001_000000_left"]["depth"]
    assert (rec[:5] == 0).all() and (rec[10:20, 30:50] == 0).all()
    assert "shift unknown" in caplog.text


def test_vdw_both_views(tmp_path):
    fake_vdw(tmp_path / "m", n_frames=1)
    builder = data_registry.build("vdw", tmp_path / "data", tmp_path / "m", views="both")
    assert sorted(_records(builder)) == ["000001_000000_left", "000001_000000_right",
                                         "000417_000000_left", "000417_000000_right"]


def test_vdw_missing_and_bad_files_name_them(tmp_path):
    fake_vdw(tmp_path / "m", n_frames=1)
    (tmp_path / "m/000417/left_mask/frame_000000.png").unlink()
    with pytest.raises(UserError, match=r"000417/left_mask/frame_000000\.png: file not found"):
        data_registry.build("vdw", tmp_path / "d1", tmp_path / "m")
    assert cv2.imwrite(str(tmp_path / "m/000417/left_mask/frame_000000.png"), np.zeros((H, W), np.uint8))
    assert cv2.imwrite(str(tmp_path / "m/000001/left_gt/frame_000000.png"), np.zeros((H, W), np.uint8))
    with pytest.raises(UserError, match=r"000001/left_gt/frame_000000\.png: expected dtype in \['uint16'\]"):
        data_registry.build("vdw", tmp_path / "d2", tmp_path / "m")
