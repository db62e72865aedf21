"""The CLI's persistent compilation cache (sddr_jax/caches.py): on by default, off by flag or variable."""
import collections
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from sddr_jax import caches, convert, io

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_compile_cache_dir_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.delenv(caches.COMPILE_CACHE_ENV, raising=False)
    monkeypatch.setenv("SDDR_JAX_CACHE", str(tmp_path / "home_cache"))
    assert caches.compile_cache_dir() == tmp_path / "home_cache" / "xla"
    for off in ("off", "0", "False", "no", "none", " "):
        monkeypatch.setenv(caches.COMPILE_CACHE_ENV, off)
        assert caches.compile_cache_dir() is None, off
    monkeypatch.setenv(caches.COMPILE_CACHE_ENV, str(tmp_path / "mine"))
    assert caches.compile_cache_dir() == tmp_path / "mine"


@pytest.fixture(scope="module")
def refine_inputs(tmp_path_factory, official_state):
    d = tmp_path_factory.mktemp("compile_cache")
    sd = collections.OrderedDict(official_state.official_state_dict(0))
    convert.save_params(convert.official_to_flax(sd), d / "converted")
    rng = np.random.default_rng(0)
    io.write_depth(d / "low.npy", rng.uniform(size=(24, 32)).astype(np.float32))
    io.write_depth(d / "high.npy", rng.uniform(size=(48, 64)).astype(np.float32))
    return d


def _refine(d, out, cache, *extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COMPILATION_CACHE")}
    env.update(JAX_LOG_COMPILES="1", PYTHONPATH=str(ROOT))
    env[caches.COMPILE_CACHE_ENV] = str(cache)
    cmd = [sys.executable, "-m", "sddr_jax", "refine", "--checkpoint", str(d / "converted"), "--low",
           str(d / "low.npy"), "--high", str(d / "high.npy"), "--size", "128", "--output", str(d / out), *extra]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stderr, np.load(d / out)


def _entries(folder):
    return sorted(p.name for p in pathlib.Path(folder).glob("*-cache")) if pathlib.Path(folder).is_dir() else []


def test_second_refine_loads_its_programs_from_the_cache(refine_inputs):
    d = refine_inputs
    cache = d / "xla"
    log1, first = _refine(d, "a.npy", cache)
    written = _entries(cache)
    assert any(name.startswith("jit_") for name in written), written  # the refiner program was stored
    assert "Persistent compilation cache hit" not in log1
    log2, second = _refine(d, "b.npy", cache)
    assert "Persistent compilation cache hit" in log2
    assert _entries(cache) == written  # nothing compiled again, nothing added
    np.testing.assert_array_equal(first, second)
    # Off: neither read nor written, by flag or by variable.
    log3, _ = _refine(d, "c.npy", cache, "--no-compile-cache")
    assert "Persistent compilation cache hit" not in log3
    log4, _ = _refine(d, "d.npy", "off")
    assert "Persistent compilation cache hit" not in log4 and not (pathlib.Path.cwd() / "off").exists()
    empty = d / "unused"
    _refine(d, "e.npy", empty, "--no-compile-cache")
    assert _entries(empty) == []
    # A folder that cannot be made: one line says the cache is off, and the command still works.
    blocker = d / "a_file"
    blocker.write_text("")
    log6, sixth = _refine(d, "f.npy", blocker / "xla")
    assert f"sddr-jax refine: compilation cache off ({blocker / 'xla'}:" in log6
    assert "Error reading persistent compilation cache" not in log6
    np.testing.assert_array_equal(first, sixth)
