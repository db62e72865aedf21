"""Depth map reading/writing by extension, official quantisation, atomic no-overwrite writes."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from sddr_jax import io
from sddr_jax.errors import UserError


@pytest.fixture
def depth():
    rng = np.random.default_rng(0)
    return (rng.random((23, 31)) * 10 + 1).astype(np.float32)


@pytest.mark.parametrize("ext", [".npy", ".pfm", ".tiff", ".tif"])
def test_float_formats_round_trip_exactly(tmp_path, depth, ext):
    path = tmp_path / f"d{ext}"
    io.write_depth(path, depth)
    back = io.read_depth(path)
    assert back.dtype == np.float32 and back.shape == depth.shape
    np.testing.assert_array_equal(back, depth)
    np.testing.assert_array_equal(io.read_depth(path), io.read_depth(str(path)))


def test_png16_uses_the_official_quantisation(tmp_path, depth):
    path = tmp_path / "d.png"
    io.write_depth(path, depth)
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint16
    expected = ((depth - depth.min()) / (depth.max() - depth.min()) * np.float32(65535.0)).astype(np.uint16)
    np.testing.assert_array_equal(raw, expected)
    assert raw.min() == 0 and raw.max() == 65535
    # reading returns raw values as float32, no rescaling (like the official demo)
    np.testing.assert_array_equal(io.read_depth(path), expected.astype(np.float32))
    # hand-computed case: min -> 0, max -> 65535, 1/3 -> trunc(21845.0) and 0.5 -> trunc(32767.5)
    q = io.to_uint_official(np.array([[0.0, 1.0, 3.0, 1.5]], np.float32))
    np.testing.assert_array_equal(q, [[0, 21845, 65535, 32767]])


def test_png8_and_constant_maps(tmp_path):
    path = tmp_path / "d8.png"
    io.write_depth(path, np.array([[0.0, 0.5], [1.0, 0.25]], np.float32), bits=8)
    raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert raw.dtype == np.uint8
    np.testing.assert_array_equal(raw, [[0, 127], [255, 63]])
    np.testing.assert_array_equal(io.to_uint_official(np.full((3, 3), 7.0)), np.zeros((3, 3), np.uint16))
    with pytest.raises(UserError, match="bits"):
        io.to_uint_official(np.zeros((2, 2)), bits=12)


def test_reads_singleton_channel_layouts(tmp_path, depth):
    for i, a in enumerate((depth[:, :, None], depth[None])):
        path = tmp_path / f"c{i}.npy"
        np.save(path, a)
        np.testing.assert_array_equal(io.read_depth(path), depth)
    ints = tmp_path / "ints.npy"
    np.save(ints, np.arange(6, dtype=np.uint16).reshape(2, 3))
    assert io.read_depth(ints).dtype == np.float32


def test_pfm_big_endian_and_bottom_to_top(tmp_path):
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    path = tmp_path / "be.pfm"
    path.write_bytes(b"Pf\n3 2\n1.0\n" + np.flipud(a).astype(">f4").tobytes())
    np.testing.assert_array_equal(io.read_pfm(path), a)
    (tmp_path / "rgb.pfm").write_bytes(b"PF\n1 1\n-1.0\n" + b"\0" * 12)
    with pytest.raises(UserError, match="single-channel"):
        io.read_depth(tmp_path / "rgb.pfm")
    (tmp_path / "short.pfm").write_bytes(b"Pf\n3 2\n-1.0\n" + b"\0" * 8)
    with pytest.raises(UserError, match="truncated"):
        io.read_depth(tmp_path / "short.pfm")


def test_errors_name_the_file(tmp_path, depth):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        io.read_depth(tmp_path / "missing.png")
    bad = tmp_path / "garbage.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(UserError, match="garbage.png: not a readable PNG"):
        io.read_depth(bad)
    rgb = tmp_path / "rgb.png"
    cv2.imwrite(str(rgb), np.zeros((4, 5, 3), np.uint8))
    with pytest.raises(UserError, match="rgb.png: expected a single-channel depth map, got 3 channels"):
        io.read_depth(rgb)
    npy3 = tmp_path / "three.npy"
    np.save(npy3, np.zeros((4, 5, 3), np.float32))
    with pytest.raises(UserError, match="three.npy: expected a single-channel depth map, got 3 channels"):
        io.read_depth(npy3)
    with pytest.raises(UserError, match="unsupported depth file extension '.jpg'"):
        io.read_depth(tmp_path / "x.jpg")
    with pytest.raises(UserError, match="unsupported output extension"):
        io.write_depth(tmp_path / "x.exr", depth)
    with pytest.raises(UserError, match="NaN"):
        io.write_depth(tmp_path / "nan.npy", np.full((2, 2), np.nan))
    corrupt = tmp_path / "corrupt.npy"
    corrupt.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(UserError, match="corrupt.npy"):
        io.read_depth(corrupt)


def test_writes_are_atomic_and_never_overwrite(tmp_path, depth):
    path = tmp_path / "sub" / "out.npy"
    io.write_depth(path, depth)  # creates the parent folder
    with pytest.raises(FileExistsError, match="already exists"):
        io.write_depth(path, depth * 2)
    np.testing.assert_array_equal(io.read_depth(path), depth)
    io.write_depth(path, depth * 2, overwrite=True)
    np.testing.assert_array_equal(io.read_depth(path), depth * 2)

    def failing(tmp):
        tmp.write_bytes(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        io.atomic_write(tmp_path / "sub" / "never.npy", failing)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["out.npy"]  # no temp file, no partial output


def test_read_image_size(tmp_path):
    path = tmp_path / "img.png"
    cv2.imwrite(str(path), np.zeros((7, 9, 3), np.uint8))
    assert io.read_image_size(path) == (7, 9)
    with pytest.raises(FileNotFoundError):
        io.read_image_size(tmp_path / "none.png")


def test_stale_temps_are_atomic_writes_own_names(tmp_path):
    """`stale_temps` finds the temporary file `atomic_write` makes for a path (as a killed writer leaves it),
    and nothing else beside it."""
    import tempfile

    target = tmp_path / "im0.npy"
    _, made = tempfile.mkstemp(dir=tmp_path, prefix=".im0.", suffix=".npy")  # atomic_write's own call
    others = [".im0.notes.npy", ".im00.abcdefgh.npy", ".im0.abcdefgh.png", "im0.abcdefgh.npy", ".im1.abcdefgh.npy"]
    for name in others:
        (tmp_path / name).write_bytes(b"")
    assert io.stale_temps(target) == [Path(made)]
    io.atomic_write(target, lambda p: np.save(p, np.zeros(2)))
    assert io.stale_temps(target) == [Path(made)]  # a finished write leaves none of its own
