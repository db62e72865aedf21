"""Test setup: 8 simulated CPU devices, set before jax is imported anywhere."""
import os

# XLA:CPU compile time dominates this suite on 2 cores; without LLVM optimisation (backend level 0) programs
# compile 2-3x faster and run a little slower. The HLO is the same; results differ from the default level by
# float rounding (1.3e-7 relative on the init draws), and every reference tolerance holds at both levels.
# Measured on a clean clone, 2 cores: 1297 s of pytest at the default level, 1125 s at level 0 (328 passed).
_TEST_XLA_FLAGS = ("--xla_force_host_platform_device_count=8", "--xla_backend_optimization_level=0")
_flags = os.environ.get("XLA_FLAGS", "")
for _f in _TEST_XLA_FLAGS:
    _flags = _flags.replace(_f, "")
os.environ["XLA_FLAGS"] = " ".join([_flags.strip(), *_TEST_XLA_FLAGS]).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Converted official checkpoints are cached; tests keep that cache out of the home folder.
import tempfile  # noqa: E402

os.environ.setdefault("SDDR_JAX_CACHE", tempfile.mkdtemp(prefix="sddr_jax_cache_"))
# One persistent compilation cache for the whole suite: the xdist workers, the CLI subprocesses and the notebook
# kernels compile the same refiner, training and label programs, and each is compiled once (JAX keys the
# entries on the program, the 8 simulated devices and the XLA flags). It lives under pytest's cache folder,
# never in the user's ~/.cache/sddr_jax/xla; the file lock of a bounded cache serialises the processes' writes.
_XLA_CACHE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache",
                          "sddr_jax_xla")
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", _XLA_CACHE)
os.environ.setdefault("SDDR_JAX_COMPILE_CACHE", os.environ["JAX_COMPILATION_CACHE_DIR"])
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(8 << 30))

import pathlib  # noqa: E402

import pytest  # noqa: E402

DATA_DIR = pathlib.Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def data_dir() -> pathlib.Path:
    return DATA_DIR


@pytest.fixture(scope="session")
def official_state():
    """tests/data/official_state.py as a module: the deterministic random official state dict and inputs."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("official_state", DATA_DIR / "official_state.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_collection_modifyitems(config, items):
    """Files with slow tests first. xdist's `--dist loadfile` hands out whole files in collection order, and the
    suite's wall time is its busiest worker's: the long files started last used to run alone at the end (a
    clean clone: 641 s of pytest, the last minutes on two files). The sort is stable: order within each group
    is kept."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.path not in slow_files)
