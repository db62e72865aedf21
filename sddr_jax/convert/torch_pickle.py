"""Torch-free reading (and, for tests, writing) of PyTorch `.pt` / `.pth` checkpoint files (docs/method.md §4.1).

`load_torch_file(path)` reads the zip format that `torch.save` writes since PyTorch 1.6 (a zip archive
`<name>/data.pkl` + `<name>/data/<key>` raw storages + `<name>/byteorder`) and the legacy non-zip format of
older versions. The pickle is read with a restricted unpickler: it knows only the handful of globals a
state dict needs (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`, `_rebuild_parameter` and the
typed storage classes) and refuses every other global with a message naming it, so loading a checkpoint
never executes code from the file. Tensors come back as numpy arrays (bfloat16 via `ml_dtypes`).

`save_torch_file(obj, path)` writes nested dicts of numpy arrays in the same zip format (loadable by
`torch.load`, including with `weights_only=True`); the tests use it to build `.pt` files without torch.
"""
from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import sys
import zipfile
from pathlib import Path
from typing import Any, Callable

import ml_dtypes
import numpy as np

from sddr_jax.errors import UserError
from sddr_jax.io import atomic_write

# typed storage class name -> numpy dtype
STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype(np.float32),
    "DoubleStorage": np.dtype(np.float64),
    "HalfStorage": np.dtype(np.float16),
    "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "LongStorage": np.dtype(np.int64),
    "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16),
    "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8),
    "BoolStorage": np.dtype(np.bool_),
}
_DTYPE_TO_STORAGE = {v: k for k, v in STORAGE_DTYPES.items()}

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class _StorageType:
    """Stand-in for a `torch.<X>Storage` class inside the pickle."""

    def __init__(self, name: str):
        self.name = name
        self.dtype = STORAGE_DTYPES[name]


class _LazyStorage:
    """A legacy-format storage whose bytes come after the main pickle."""

    def __init__(self, key: str, dtype: np.dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel
        self.array: np.ndarray | None = None


class _LazyTensor:
    def __init__(self, storage: _LazyStorage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _strided_copy(flat: np.ndarray, offset: int, size, stride, where: str) -> np.ndarray:
    """Materialise the tensor (offset, size, stride) of a flat storage, checking every bound."""
    try:
        size = tuple(int(s) for s in size)
        stride = tuple(int(s) for s in stride)
        offset = int(offset)
    except (TypeError, ValueError):
        raise UserError(f"{where}: malformed tensor metadata (size={size!r}, stride={stride!r})") from None
    if len(size) != len(stride) or offset < 0 or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise UserError(f"{where}: malformed tensor metadata (offset={offset}, size={size}, stride={stride})")
    if 0 in size:
        return np.zeros(size, flat.dtype)
    last = offset + sum((n - 1) * st for n, st in zip(size, stride))
    if last >= flat.size:
        raise UserError(
            f"{where}: tensor of size {size} (offset {offset}, stride {stride}) needs {last + 1} elements "
            f"but its storage holds {flat.size}; the file is truncated or corrupted"
        )
    item = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        flat[offset:], shape=size, strides=tuple(s * item for s in stride), writeable=False
    )
    return np.array(view, copy=True)


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds tensors from storages and refuses any global it does not know."""

    def __init__(self, file, where: str, load_storage: Callable[[str, np.dtype, int], Any]):
        super().__init__(file)
        self._where = where
        self._load_storage = load_storage

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild_tensor
        if module == "torch._utils" and name == "_rebuild_parameter":
            return self._rebuild_parameter
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise UserError(
            f"{self._where}: refusing to load global '{module}.{name}' from the pickle; only tensors, "
            "storages and (ordered) dicts of them are accepted"
        )

    def persistent_load(self, pid):
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise UserError(f"{self._where}: unsupported persistent id {pid!r} in the pickle")
        _, storage_type, key, _location, numel = pid[:5]
        if not isinstance(storage_type, _StorageType):
            raise UserError(f"{self._where}: unsupported storage type {storage_type!r}")
        if len(pid) > 5 and pid[5] is not None:
            raise UserError(f"{self._where}: legacy storage views are not supported")
        return self._load_storage(str(key), storage_type.dtype, int(numel))

    def _rebuild_tensor(self, storage, offset, size, stride, requires_grad=False, hooks=None, metadata=None):
        if isinstance(storage, _LazyStorage):
            return _LazyTensor(storage, offset, size, stride)
        if not isinstance(storage, np.ndarray):
            raise UserError(f"{self._where}: tensor rebuilt from a non-storage {type(storage).__name__}")
        return _strided_copy(storage, offset, size, stride, self._where)

    def _rebuild_parameter(self, data, requires_grad=False, hooks=None):
        return data


def _from_bytes(raw: bytes, dtype: np.dtype, numel: int, byteorder: str) -> np.ndarray:
    a = np.frombuffer(raw, dtype, count=numel)
    if byteorder != sys.byteorder and dtype.itemsize > 1:
        a = a.byteswap()
    return a


def _read_zip(path: Path, where: str):
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as e:
        raise UserError(
            f"{where}: not a readable PyTorch zip archive ({e}); the file may be truncated"
        ) from None
    with archive:
        names = archive.namelist()
        pkl = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pkl) != 1:
            raise UserError(
                f"{where}: expected exactly one '<name>/data.pkl' record in the zip, found {pkl or 'none'}"
            )
        prefix = pkl[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise UserError(f"{where}: unknown byteorder {byteorder!r}")

        def load_storage(key: str, dtype: np.dtype, numel: int) -> np.ndarray:
            record = f"{prefix}data/{key}"
            try:
                raw = archive.read(record)
            except KeyError:
                raise UserError(f"{where}: storage record '{record}' is missing from the archive") from None
            except (zipfile.BadZipFile, OSError, EOFError) as e:
                raise UserError(
                    f"{where}: cannot read storage '{record}' ({e}); the file is corrupted"
                ) from None
            if len(raw) < numel * dtype.itemsize:
                raise UserError(
                    f"{where}: storage '{record}' has {len(raw)} bytes, expected {numel * dtype.itemsize}"
                )
            return _from_bytes(raw, dtype, numel, byteorder)

        try:
            data = archive.read(pkl[0])
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise UserError(f"{where}: cannot read '{pkl[0]}' ({e}); the file is corrupted") from None
        return _unpickle(io.BytesIO(data), where, load_storage)


def _unpickle(stream, where: str, load_storage):
    try:
        return _RestrictedUnpickler(stream, where, load_storage).load()
    except UserError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError, AttributeError,
            OverflowError, struct.error) as e:
        raise UserError(f"{where}: malformed pickle data ({type(e).__name__}: {e})") from None


def _read_legacy(path: Path, where: str):
    with open(path, "rb") as f:
        not_torch = (f"{where}: neither a PyTorch zip archive nor a legacy PyTorch pickle "
                     "(the file may be truncated or corrupted)")
        try:
            magic = _unpickle(f, where, None)  # restricted even here: the file is untrusted
        except UserError as e:
            if "refusing" in str(e):
                raise
            raise UserError(not_torch) from None
        if magic != _LEGACY_MAGIC:
            raise UserError(not_torch)
        protocol = _unpickle(f, where, None)
        if protocol != _LEGACY_PROTOCOL:
            raise UserError(f"{where}: unsupported legacy protocol version {protocol!r}")
        sys_info = _unpickle(f, where, None)
        if not isinstance(sys_info, dict) or not sys_info.get("little_endian", True):
            raise UserError(f"{where}: big-endian legacy files are not supported")
        storages: dict[str, _LazyStorage] = {}

        def lazy(key: str, dtype: np.dtype, numel: int):
            return storages.setdefault(key, _LazyStorage(key, dtype, numel))

        result = _unpickle(f, where, lazy)
        keys = _unpickle(f, where, None)
        if not isinstance(keys, list):
            raise UserError(f"{where}: malformed legacy storage list")
        for key in keys:
            if key not in storages:
                raise UserError(f"{where}: storage {key!r} listed but never used")
            st = storages[key]
            head = f.read(8)
            if len(head) != 8:
                raise UserError(f"{where}: file truncated before storage {key!r}")
            (numel,) = struct.unpack("<q", head)
            raw = f.read(numel * st.dtype.itemsize)
            if numel != st.numel or len(raw) != numel * st.dtype.itemsize:
                raise UserError(f"{where}: storage {key!r} is truncated or has the wrong size")
            st.array = _from_bytes(raw, st.dtype, numel, "little")
        if f.read(1):
            raise UserError(f"{where}: unexpected trailing bytes after the last storage")

    def resolve(obj):
        if isinstance(obj, _LazyTensor):
            if obj.storage.array is None:
                raise UserError(f"{where}: storage {obj.storage.key!r} has no data")
            return _strided_copy(obj.storage.array, obj.offset, obj.size, obj.stride, where)
        if isinstance(obj, dict):
            return type(obj)((k, resolve(v)) for k, v in obj.items())
        if isinstance(obj, (list, tuple)):
            return type(obj)(resolve(v) for v in obj)
        return obj

    return resolve(result)


def load_torch_file(path: str | os.PathLike) -> Any:
    """Read a PyTorch `.pt` / `.pth` file without torch: nested dicts/lists with tensors as np.ndarray.

    Accepts the zip format (PyTorch >= 1.6) and the legacy pickle format. Raises UserError naming the file
    for a missing, truncated or tampered file, or for any pickled global other than tensors/storages/dicts.
    """
    p = Path(path)
    where = str(p)
    if not p.exists():
        raise FileNotFoundError(f"{where}: no such file")
    if p.is_dir():
        raise UserError(f"{where}: is a directory, expected a PyTorch .pt/.pth file")
    if zipfile.is_zipfile(p):
        return _read_zip(p, where)
    return _read_legacy(p, where)


# ----------------------------------------------------------------------------------------------------
# writer (zip format), torch-free


class _GlobalRef:
    """A reference to `module.name` that pickles as a GLOBAL opcode without importing the module."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle requires reduce callables to be callable
        raise TypeError("placeholder for a torch global; never called")


class _TensorRef:
    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, array

    def __reduce__(self):
        storage = _StorageRef(self.key, self.array)
        shape = tuple(int(s) for s in self.array.shape)
        stride, acc = [], 1
        for s in reversed(shape):
            stride.append(acc)
            acc *= max(s, 1)
        return (
            _GlobalRef("torch._utils", "_rebuild_tensor_v2"),
            (storage, 0, shape, tuple(reversed(stride)), False, collections.OrderedDict()),
        )


class _StorageRef:
    def __init__(self, key: str, array: np.ndarray):
        self.key, self.array = key, array


class _TorchPickler(pickle._Pickler):  # the pure-Python pickler lets us add a dispatch entry
    dispatch = pickle._Pickler.dispatch.copy()

    def _save_global_ref(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("utf-8"))
        self.memoize(obj)

    dispatch[_GlobalRef] = _save_global_ref

    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            name = _DTYPE_TO_STORAGE[obj.array.dtype]
            return ("storage", _GlobalRef("torch", name), obj.key, "cpu", int(obj.array.size))
        return None


def save_torch_file(obj: Any, path: str | os.PathLike, *, overwrite: bool = False) -> None:
    """Write nested dicts (OrderedDict kept) / lists of np.ndarray in PyTorch's zip format (atomic write)."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise FileExistsError(f"{p}: already exists (pass overwrite=True to replace it)")
    storages: list[tuple[str, np.ndarray]] = []

    def wrap(o):
        if isinstance(o, np.ndarray) or np.isscalar(o) and isinstance(o, np.generic):
            a = np.ascontiguousarray(np.asarray(o))
            if a.dtype not in _DTYPE_TO_STORAGE:
                raise UserError(f"save_torch_file: unsupported dtype {a.dtype}")
            key = str(len(storages))
            storages.append((key, a))
            return _TensorRef(key, a)
        if isinstance(o, dict):
            return type(o)((k, wrap(v)) for k, v in o.items())
        if isinstance(o, (list, tuple)):
            return type(o)(wrap(v) for v in o)
        return o

    buf = io.BytesIO()
    _TorchPickler(buf, protocol=2).dump(wrap(obj))
    archive_name = p.stem or "archive"
    swap = sys.byteorder != "little"  # storages are written little-endian, as the byteorder record says

    def write(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as z:
            z.writestr(f"{archive_name}/data.pkl", buf.getvalue())
            z.writestr(f"{archive_name}/byteorder", "little")
            for key, a in storages:
                z.writestr(f"{archive_name}/data/{key}", (a.byteswap() if swap else a).tobytes())
            z.writestr(f"{archive_name}/version", "3\n")

    atomic_write(p, write, overwrite=overwrite)


__all__ = ["load_torch_file", "save_torch_file", "STORAGE_DTYPES"]
