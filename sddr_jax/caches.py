"""The user-level caches of sddr-jax: converted official checkpoints and compiled XLA programs.

    ~/.cache/sddr_jax/              $SDDR_JAX_CACHE: converted `.pt` checkpoints, by SHA-256 (checkpoints.py)
    ~/.cache/sddr_jax/xla/          $SDDR_JAX_COMPILE_CACHE: JAX's persistent compilation cache

The CLI turns the compilation cache on for every command (`enable_compile_cache`), so a second
`sddr-jax refine` (or `train`, `evaluate`) of the same shapes loads its programs instead of compiling them;
docs/benchmarks.md has the first- and second-run times. Off with `--no-compile-cache` or
`SDDR_JAX_COMPILE_CACHE=off`; another folder with `SDDR_JAX_COMPILE_CACHE=DIR`. A JAX compilation cache the
user configured already (`JAX_COMPILATION_CACHE_DIR`, `jax.config`) is kept as it is. A folder that cannot be
created or written turns the cache off with one line on stderr; the command runs as without it. The Python API never
turns it on by itself: a library does not write to the home folder unasked.

Entries are keyed by JAX on the program, the devices and the XLA flags, so a stale entry is never used; the
folder is bounded (`COMPILE_CACHE_MAX_BYTES`, least recently used entries evicted) and can be deleted at any
time.
"""
from __future__ import annotations

import os
import pathlib

COMPILE_CACHE_ENV = "SDDR_JAX_COMPILE_CACHE"
_OFF = ("", "0", "off", "false", "no", "none")
# Programs that compile faster than this are not worth a file (JAX's default is 1 s).
COMPILE_CACHE_MIN_SECONDS = 0.5
COMPILE_CACHE_MAX_BYTES = 4 << 30


def cache_dir() -> pathlib.Path:
    """Where converted official checkpoints are cached: $SDDR_JAX_CACHE, else ~/.cache/sddr_jax."""
    return pathlib.Path(os.environ.get("SDDR_JAX_CACHE") or "~/.cache/sddr_jax").expanduser()


def compile_cache_dir() -> pathlib.Path | None:
    """The compilation cache folder the CLI uses: $SDDR_JAX_COMPILE_CACHE (None when it is off, 0, false,
    no or none), else `cache_dir()/xla`."""
    value = os.environ.get(COMPILE_CACHE_ENV)
    if value is not None:
        if value.strip().lower() in _OFF:
            return None
        return pathlib.Path(value).expanduser()
    return cache_dir() / "xla"


def enable_compile_cache(path: str | os.PathLike | None = None) -> pathlib.Path | None:
    """Turns on JAX's persistent compilation cache in `path` (default: `compile_cache_dir()`); returns the
    folder in use, or None when it is off. A cache folder already set in JAX's config is left in place (and
    returned). Call it before the first compilation. Raises OSError when the folder cannot be created or
    written (nothing is changed then)."""
    import jax

    current = jax.config.jax_compilation_cache_dir
    if current:
        return pathlib.Path(current)
    folder = pathlib.Path(path).expanduser() if path is not None else compile_cache_dir()
    if folder is None:
        return None
    folder.mkdir(parents=True, exist_ok=True)  # OSError here: the caller decides (the CLI runs without it)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(13, "Permission denied", str(folder))
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", COMPILE_CACHE_MIN_SECONDS)
    # A bounded folder needs JAX's file lock (the `filelock` package, a dependency); it also serialises the
    # writes of processes that share the folder.
    jax.config.update("jax_compilation_cache_max_size", COMPILE_CACHE_MAX_BYTES)
    return folder
