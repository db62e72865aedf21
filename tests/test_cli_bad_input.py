"""The bad-input catalogue: every case gives one clear line on stderr, exit code 2, and no partial output.

Plus the folder mode of `sddr-jax refine` (official demo layout, previews) on a random-weight checkpoint.
"""
import collections
import pathlib
import struct
import zipfile
import zlib

import cv2
import numpy as np
import pytest

from sddr_jax import cli, convert, io
from sddr_jax.convert.torch_pickle import save_torch_file

S = 128
REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, official_state):
    d = tmp_path_factory.mktemp("cat")
    sd = collections.OrderedDict(official_state.official_state_dict(0))
    save_torch_file({"net": sd}, d / "model.pt")
    convert.save_params(convert.official_to_flax(sd), d / "converted")
    rng = np.random.default_rng(0)
    low = rng.uniform(size=(24, 32)).astype(np.float32)
    high = rng.uniform(size=(48, 64)).astype(np.float32)
    io.write_depth(d / "low.npy", low)
    io.write_depth(d / "high.png", high)
    cv2.imwrite(str(d / "rgb3.png"), rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    np.save(d / "nan.npy", np.full((24, 32), np.nan, np.float32))
    np.save(d / "four_d.npy", np.zeros((1, 2, 24, 32), np.float32))
    (d / "garbage.png").write_bytes(b"\x89PNG not really")
    (d / "map.txt").write_text("1 2 3")
    raw = (d / "model.pt").read_bytes()
    (d / "truncated.pt").write_bytes(raw[: len(raw) // 2])
    save_torch_file({"net": {"unexpected.weight": np.zeros((3,), np.float32)}}, d / "wrong_keys.pt")
    with zipfile.ZipFile(d / "evil.pt", "w") as z:  # a pickle that calls os.system
        z.writestr("evil/data.pkl", b"cos\nsystem\n(S'echo hacked'\ntR.")
        z.writestr("evil/version", "3\n")
    (d / "a_file").write_text("")
    for sub in ("demo/rgb", "demo/low_448", "demo/high_1920", "mismatch/low", "mismatch/high", "empty", "nolayout/x"):
        (d / sub).mkdir(parents=True)
    for name in ("a", "b"):
        cv2.imwrite(str(d / "demo/rgb" / f"{name}.png"), rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
        io.write_depth(d / "demo/low_448" / f"{name}.png", rng.uniform(size=(20, 20)))
        io.write_depth(d / "demo/high_1920" / f"{name}.png", rng.uniform(size=(40, 56)))
    io.write_depth(d / "mismatch/low/a.npy", low)
    io.write_depth(d / "mismatch/high/b.npy", low)
    (d / "taken.png").write_bytes(b"keep me")
    # Files whose headers declare sizes that must be refused before anything is allocated.
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    (d / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000, 16, 0, 0, 0, 0))
                                 + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))
    with open(d / "huge.npy", "wb") as f:  # 64 bytes of header declaring a 37 GiB array
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (100000, 100000)})
    (d / "huge.pfm").write_bytes(b"Pf\n100000 100000\n-1.0\n" + b"\0" * 16)
    np.save(d / "complex.npy", np.ones((24, 32), np.complex64))
    np.save(d / "strings.npy", np.array([["a", "b"], ["c", "d"]]))
    (d / "rgb.pfm").write_bytes(b"PF\n2 2\n-1.0\n" + b"\0" * 48)
    np.save(d / "empty_map.npy", np.zeros((0, 32), np.float32))
    np.save(d / "one_d.npy", np.zeros((32,), np.float32))
    full = (d / "low.npy").read_bytes()
    (d / "short.npy").write_bytes(full[: len(full) - 100])  # header intact, data cut short
    (d / "zero.png").write_bytes(b"")
    (d / "short.pfm").write_bytes(b"Pf\n32 24\n-1.0\n" + b"\0" * 100)
    (d / "garbage_dir").mkdir()
    (d / "garbage_dir" / "params.msgpack").write_bytes(b"not msgpack")
    return d


def _refine(d, *extra, low="low.npy", high="high.png", out="out/refined.png"):
    args = ["refine", "--checkpoint", str(d / "converted"), "--size", str(S), "--output", str(d / out)]
    if low is not None:
        args += ["--low", str(d / low)]
    if high is not None:
        args += ["--high", str(d / high)]
    return args + list(extra)


CASES = {
    "missing low file": (lambda d: _refine(d, low="nope.npy"), "nope.npy"),
    "missing checkpoint": (lambda d: _refine(d)[:2] + [str(d / "nope.pt")] + _refine(d)[3:], "nope.pt"),
    "rgb image as depth (3 channels)": (lambda d: _refine(d, low="rgb3.png"), "rgb3.png"),
    "unreadable png": (lambda d: _refine(d, low="garbage.png"), "garbage.png"),
    "NaN map": (lambda d: _refine(d, low="nan.npy"), "nan.npy"),
    "4-D array": (lambda d: _refine(d, low="four_d.npy"), "four_d.npy"),
    "unsupported extension": (lambda d: _refine(d, low="map.txt"), "map.txt"),
    "truncated checkpoint": (lambda d: _refine(d)[:2] + [str(d / "truncated.pt")] + _refine(d)[3:], "truncated.pt"),
    "checkpoint with wrong keys": (lambda d: _refine(d)[:2] + [str(d / "wrong_keys.pt")] + _refine(d)[3:], "missing"),
    "pickle with a forbidden global": (lambda d: _refine(d)[:2] + [str(d / "evil.pt")] + _refine(d)[3:], "system"),
    "size not a multiple of 128": (lambda d: _refine(d, "--size", "200"), "128"),
    "output parent is a file": (lambda d: _refine(d, out="a_file/refined.png"), "a_file"),
    "output exists": (lambda d: _refine(d, out="taken.png"), "already exists"),
    "file and folder mixed": (lambda d: _refine(d, high="demo/high_1920", out="out"), "two files or two folders"),
    "folders with unmatched names": (lambda d: _refine(d, low="mismatch/low", high="mismatch/high", out="out"),
                                     "unmatched"),
    "empty low folder": (lambda d: _refine(d, low="empty", high="mismatch/high", out="out"), "no depth maps"),
    "input without the demo layout": (lambda d: _refine(d, "--input", str(d / "nolayout"), low=None, high=None,
                                                        out="out"), "demo layout"),
    "input and low together": (lambda d: _refine(d, "--input", str(d / "demo"), out="out"), "not both"),
    "neither input nor low/high": (lambda d: _refine(d, low=None, high=None), "--low and --high"),
    "convert: missing input": (lambda d: ["convert", str(d / "nope.pt"), str(d / "out/conv")], "nope.pt"),
    "convert: tampered checkpoint": (lambda d: ["convert", str(d / "evil.pt"), str(d / "out/conv")], "system"),
    "convert: output exists": (lambda d: ["convert", str(d / "model.pt"), str(d / "converted")], "exists"),
    "evaluate: dataset not built": (lambda d: ["evaluate", "--dataset", "sddr_synthetic", "--data_dir",
                                               str(d / "empty"), "--predictions", str(d / "demo/low_448")],
                                    "not built"),
    "evaluate: predictions folder missing": (lambda d: ["evaluate", "--dataset", "sddr_synthetic", "--data_dir",
                                                        str(d / "empty"), "--predictions", str(d / "nope")], "nope"),
    "demo: negative panel count": (lambda d: ["demo", "--out", str(d / "out/demo"), "--num-panels", "-1"],
                                   "--num-panels"),
    # sizes bounded before allocating
    "png header declaring 100000x100000": (lambda d: _refine(d, low="huge.png"), "too large: 100000x100000"),
    "npy header declaring 100000x100000": (lambda d: _refine(d, low="huge.npy"), "too large: 100000x100000"),
    "pfm header declaring 100000x100000": (lambda d: _refine(d, low="huge.pfm"), "too large: 100000x100000"),
    "--size 131072": (lambda d: _refine(d, "--size", "131072"), "--size 131072: too large"),
    # dtypes by rule
    "complex npy": (lambda d: _refine(d, low="complex.npy"), "complex dtype"),
    "string npy": (lambda d: _refine(d, low="strings.npy"), "non-numeric dtype"),
    "3-channel pfm": (lambda d: _refine(d, low="rgb.pfm"), "3-channel"),
    # OS errors on paths: one line, not a traceback
    "folder-mode output is a file": (lambda d: _refine(d, low="demo/low_448", high="demo/high_1920", out="a_file"),
                                     "a_file"),
    # more refine, checkpoint, train and evaluate inputs
    "NaN high map": (lambda d: _refine(d, high="nan.npy"), "nan.npy"),
    "checkpoint folder without params": (lambda d: _refine(d)[:2] + [str(d / "empty")] + _refine(d)[3:], "empty"),
    "two-stage with a negative low resolution": (lambda d: _refine(d, "--two-stage", "--low-resolution", "-5"),
                                                 "--low-resolution"),
    "skip-existing together with overwrite": (lambda d: _refine(d, "--skip-existing", "--overwrite", low="demo/low_448",
                                                               high="demo/high_1920", out="out"), "choose one"),
    "train: config file missing": (lambda d: ["train", "--config", str(d / "nope.py"), "--workdir",
                                              str(d / "out/run")], "nope.py"),
    "train: unknown config argument": (lambda d: ["train", "--config", str(REPO / "configs/synthetic.py") + ":bogus",
                                                  "--workdir", str(d / "out/run")], "bogus"),
    "train: unknown override key": (lambda d: ["train", "--config", str(REPO / "configs/synthetic.py") + ":tiny",
                                               "--workdir", str(d / "out/run"), "--config.train.nope=1"],
                                    "train.nope is not a key"),
    "evaluate: negative limit": (lambda d: ["evaluate", "--dataset", "sddr_synthetic", "--data_dir", str(d / "empty"),
                                            "--predictions", str(d / "demo/low_448"), "--limit", "-1"], "--limit"),
    "evaluate: checkpoint missing": (lambda d: ["evaluate", "--dataset", "sddr_synthetic", "--data_dir",
                                                str(d / "empty"), "--checkpoint", str(d / "nope.pt"), "--size", "128"],
                                     "nope.pt"),
    "evaluate: --predictions is a file": (lambda d: ["evaluate", "--dataset", "sddr_synthetic", "--data_dir",
                                                     str(d / "empty"), "--predictions", str(d / "low.npy")],
                                          "expected a folder of depth maps"),
    # more inputs of refine
    "empty map (0 x 32)": (lambda d: _refine(d, low="empty_map.npy"), "empty_map.npy"),
    "1-D array": (lambda d: _refine(d, low="one_d.npy"), "one_d.npy"),
    "npy cut short": (lambda d: _refine(d, low="short.npy"), "short.npy"),
    "zero-byte png": (lambda d: _refine(d, high="zero.png"), "zero.png"),
    "pfm cut short": (lambda d: _refine(d, low="short.pfm"), "short.pfm"),
    "--size 0": (lambda d: _refine(d, "--size", "0"), "--size"),
    "checkpoint folder with garbage params": (lambda d: _refine(d)[:2] + [str(d / "garbage_dir")] + _refine(d)[3:],
                                              "garbage_dir"),
    "convert: destination under a file": (lambda d: ["convert", str(d / "model.pt"), str(d / "a_file/conv")],
                                          "a_file"),
    # training configs refused before anything is built
    "train: unknown labels.predictor": (lambda d: _train(d, "--config.labels.predictor=zoe"),
                                        "labels.predictor: expected one of"),
    "train: Depth Anything labels without weights": (
        lambda d: _train(d, "--config.labels.predictor=depth-anything-v2-small"), "labels.predictor_weights"),
    "train: labels.predictor_weights missing file": (
        lambda d: _train(d, "--config.labels.predictor=depth-anything-v2-small",
                         f"--config.labels.predictor_weights={d / 'nope.safetensors'}"), "nope.safetensors"),
    "train: labels.size not a multiple of 128": (lambda d: _train(d, "--config.labels.size=100"),
                                                 "labels.size: the refiner works at multiples of 128, got 100"),
    "train: unknown labels.edge_from": (lambda d: _train(d, "--config.labels.edge_from=rgb"), "labels.edge_from"),
    "train: bad labels.schedule": (lambda d: _train(d, "--config.labels.schedule=((1, 0.2),)"), "pieces >= 2"),
    "train: unknown labels.resolution": (lambda d: _train(d, "--config.labels.resolution=paper"),
                                         "labels.resolution"),
    "train: image size not a multiple of 128": (lambda d: _train(d, "--config.data.image_size=200"),
                                                "data.image_size"),
    "train: workdir is a file": (lambda d: ["train", "--config", str(REPO / "configs/synthetic.py") + ":tiny",
                                            "--workdir", str(d / "a_file")], "a_file"),
}


def _train(d, *extra):
    return ["train", "--config", str(REPO / "configs/synthetic.py") + ":tiny", "--workdir", str(d / "out/run"),
            f"--config.data.data_dir={d / 'empty'}", *extra]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_catalogue(case, workspace, capsys):
    make_args, needle = CASES[case]
    out_dir = workspace / "out"
    before = sorted(p.name for p in out_dir.rglob("*")) if out_dir.exists() else []
    taken = (workspace / "taken.png").read_bytes()
    code = cli.main(make_args(workspace))
    err = capsys.readouterr().err.strip()
    assert code == 2, (case, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sddr-jax ") and ": error: " in lines[0], err
    assert needle in lines[0], (case, lines[0])
    after = sorted(p.name for p in out_dir.rglob("*")) if out_dir.exists() else []
    assert after == before, f"{case}: left output behind: {set(after) - set(before)}"
    assert (workspace / "taken.png").read_bytes() == taken


def test_refine_demo_layout_with_previews(workspace, capsys):
    out = workspace / "demo_out"
    args = ["refine", "--checkpoint", str(workspace / "model.pt"), "--input", str(workspace / "demo"),
            "--output", str(out), "--size", str(S), "--preview"]
    assert cli.main(args) == 0
    for name in ("a", "b"):
        m = cv2.imread(str(out / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert m.dtype == np.uint16 and m.shape == (40, 56)  # the RGB's size, as the official demo
        assert m.min() == 0 and m.max() == 65535  # official min-max normalisation
        assert (out / f"{name}_preview.png").is_file()
    # a second run refuses before writing anything; --format npy writes floats equal to the png up to rounding
    assert cli.main(args) == 2 and "already exists" in capsys.readouterr().err
    assert cli.main(args[:-1] + ["--format", "npy"]) == 0
    a16 = cv2.imread(str(out / "a.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(io.to_uint_official(io.read_depth(out / "a.npy")), a16)


def test_a_refused_refine_creates_no_folder(workspace, capsys):
    """The checkpoint is checked before any output folder exists (nothing is created by a refused run)."""
    args = _refine(workspace, out="fresh/deeper/refined.png")
    args[2] = str(workspace / "nope.pt")
    assert cli.main(args) == 2
    assert "nope.pt" in capsys.readouterr().err
    assert not (workspace / "fresh").exists()



def test_folder_run_resumes_with_skip_existing(workspace, capsys):
    """An interrupted folder run (one map missing, one of the wrong size) is finished without redoing the
    complete ones."""
    out = workspace / "resume_out"
    args = ["refine", "--checkpoint", str(workspace / "converted"), "--input", str(workspace / "demo"),
            "--output", str(out), "--size", str(S), "--format", "npy"]
    assert cli.main(args) == 0
    reference = {n: np.load(out / f"{n}.npy") for n in ("a", "b")}
    (out / "b.npy").unlink()  # never written
    finished = (out / "a.npy").stat().st_mtime_ns
    assert cli.main(args) == 2 and "--skip-existing" in capsys.readouterr().err  # a plain rerun refuses
    assert cli.main(args + ["--skip-existing"]) == 0
    assert "kept 1 complete outputs" in capsys.readouterr().out
    assert (out / "a.npy").stat().st_mtime_ns == finished  # not redone
    np.testing.assert_array_equal(np.load(out / "b.npy"), reference["b"])
    np.save(out / "a.npy", np.zeros((3, 3), np.float32))  # complete file, wrong size: redone
    assert cli.main(args + ["--skip-existing"]) == 0
    np.testing.assert_array_equal(np.load(out / "a.npy"), reference["a"])
    assert cli.main(args + ["--skip-existing"]) == 0
    assert "all 2 outputs are complete" in capsys.readouterr().out
    assert cli.main(args + ["--skip-existing", "--overwrite"]) == 2


def test_convert_cleans_up_what_a_killed_convert_left(workspace, tmp_path):
    stale = tmp_path / ".conv.tmp999999.abcd"  # a temp folder of a process that no longer exists
    (stale / "ckpt").mkdir(parents=True)
    (stale / "ckpt" / "partial").write_bytes(b"x")
    assert cli.main(["convert", str(workspace / "model.pt"), str(tmp_path / "conv")]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["conv"]
    assert convert.load_params(tmp_path / "conv")["grad"]["kernel"].shape == (5, 5, 1, 1)


def _cli_subprocess(args):
    import os
    import subprocess
    import sys

    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    return subprocess.Popen([sys.executable, "-m", "sddr_jax.cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _kill_when(proc, cond, timeout=300):
    import signal
    import time

    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None and not cond():
        time.sleep(0.02)
    assert proc.poll() is None, "the process ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytest.mark.slow
def test_kill_9_during_refine_and_convert(workspace, tmp_path):
    """kill -9 in the middle of a folder refine and of a convert: no partial output, and the next run finishes
    (refine --skip-existing) or cleans up (convert) on its own."""
    rng = np.random.default_rng(3)
    src = tmp_path / "in"
    for sub in ("rgb", "low_448", "high_1920"):
        (src / sub).mkdir(parents=True)
    names = [f"im{i}" for i in range(8)]
    for n in names:
        cv2.imwrite(str(src / "rgb" / f"{n}.png"), rng.integers(0, 255, (40, 56, 3), dtype=np.uint8))
        io.write_depth(src / "low_448" / f"{n}.png", rng.uniform(size=(20, 20)))
        io.write_depth(src / "high_1920" / f"{n}.png", rng.uniform(size=(40, 56)))
    out = tmp_path / "out"
    args = ["refine", "--checkpoint", str(workspace / "converted"), "--input", str(src), "--output", str(out),
            "--size", str(S), "--format", "npy"]
    _kill_when(_cli_subprocess(args), lambda: out.is_dir() and any(out.glob("im*.npy")))
    # Every final name is a complete output; a kill between a temp file's creation and its rename may leave that
    # temp file (hidden, atomic_write's name), which --skip-existing removes. One is planted so that the cleanup
    # is checked in every run, not only when the kill lands there.
    done = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    temps = [p for p in out.iterdir() if p.name.startswith(".")]
    assert done and all(p.endswith(".npy") for p in done), done
    for p in done:
        assert np.load(out / p).shape == (40, 56)
    assert all(t in io.stale_temps(out / (t.name.split(".")[1] + ".npy")) for t in temps), temps
    assert len(done) < len(names)
    todo = next(n for n in names if f"{n}.npy" not in done)
    planted = out / f".{todo}.abcd_123.npy"
    planted.write_bytes(b"half")
    assert planted in io.stale_temps(out / f"{todo}.npy")
    assert cli.main(args + ["--skip-existing"]) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.npy" for n in names)  # temp files gone

    dest = tmp_path / "conv"
    _kill_when(_cli_subprocess(["convert", str(workspace / "model.pt"), str(dest)]),
               lambda: any(tmp_path.glob(".conv.tmp*")))
    assert not dest.exists()  # the destination appears only once it is complete
    assert cli.main(["convert", str(workspace / "model.pt"), str(dest)]) == 0
    assert not list(tmp_path.glob(".conv.tmp*")) and (dest / "sddr_model.json").is_file()


def test_unwritable_convert_destination_is_named_by_its_path(workspace, tmp_path, monkeypatch, capsys):
    """A destination folder that cannot be written (read-only, quota): the message names the destination,
    not the hidden temporary folder (root ignores permissions here, so the refusal is simulated)."""
    import errno
    import tempfile

    def refuse(prefix="", dir=None, **_):
        raise PermissionError(errno.EACCES, "Permission denied", f"{dir}/{prefix}x1y2")

    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    dest = tmp_path / "ro" / "conv"
    assert cli.main(["convert", str(workspace / "model.pt"), str(dest)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{dest}: cannot write the converted checkpoint here" in err, err
    assert ".conv.tmp" not in err and not dest.exists()
