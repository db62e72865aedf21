"""Official PyTorch state dict <-> Flax params of `Refiner`; MiT ImageNet init; Orbax export (docs/method.md §4).

The official checkpoint (`model_dict_1_5600.pt`, a dict {'net': state_dict}) holds 528 tensors: 383 unique
ones plus two alias groups (docs/method.md §4.2): `encoder.layer_K.*` == `en_layerK.*` (the stem) and
`cvt.cvt_1.*` == `cross.*` (the cross-attention). The converter reads the canonical copy (`en_layerK`,
`cross`), checks that the alias copy is bit-identical, and fails with ONE error listing every missing,
unexpected, shape-mismatched and alias-mismatched key. Group counts and epsilons are not in the
checkpoint; they are fixed by the module definitions (docs/method.md §4.3).

Reading `.pt` files never needs torch (`sddr_jax.convert.torch_pickle`); converted checkpoints are Orbax
directories, so inference does not depend on torch either.
"""
from __future__ import annotations

import collections
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from sddr_jax.errors import UserError, storage_problem
from sddr_jax.convert.torch_pickle import load_torch_file
from sddr_jax.models.mit import MIT_CONFIGS, MiTConfig
from sddr_jax.models.refiner import check_params, model_config_dict, param_shapes

Params = dict[str, Any]
STEM_CHANNELS = (8, 16, 32)
CROSS_ITERATIONS = 8
N_KEYS = 528
N_UNIQUE_PARAMS = 10_302_483
N_PARAMS_WITH_ALIASES = 16_765_339

# Aliases (docs/method.md §4.2): alias prefix -> canonical prefix.
ALIASES: dict[str, str] = {
    **{f"encoder.layer_{k}.": f"en_layer{k}." for k in (1, 2, 3)},
    "cvt.cvt_1.": "cross.",
}

# ----------------------------------------------------------------------------------------------------
# layout transforms: torch array -> flax array, and back


def _conv_in(w):  # OIHW -> HWIO
    return np.transpose(w, (2, 3, 1, 0))


def _conv_out(w):
    return np.transpose(w, (3, 2, 0, 1))


def _pointwise_in(w):  # (out, in, 1, 1) -> Dense kernel (in, out)
    return np.ascontiguousarray(w[:, :, 0, 0].T)


def _pointwise_out(w):
    return np.ascontiguousarray(w.T)[:, :, None, None]


TRANSFORMS = {
    # kind: (torch -> flax, flax -> torch, flax shape -> torch shape)
    "conv": (_conv_in, _conv_out, lambda s: (s[3], s[2], s[0], s[1])),
    "dense": (
        lambda w: np.ascontiguousarray(w.T), lambda w: np.ascontiguousarray(w.T), lambda s: (s[1], s[0])
    ),
    "vector": (lambda w: w, lambda w: w, lambda s: tuple(s)),
    "scale": (lambda w: w.reshape(-1), lambda w: w.reshape(-1, 1, 1, 1), lambda s: (s[0], 1, 1, 1)),
    "pointwise": (_pointwise_in, _pointwise_out, lambda s: (s[1], s[0], 1, 1)),
}


# ----------------------------------------------------------------------------------------------------
# the key map, in official state-dict order


def _pairs(prefix_t: str, path: tuple[str, ...], kind_w: str, bias: bool = True):
    """(torch key, flax path, kind) for a layer's weight (and bias)."""
    name = "scale" if kind_w == "norm" else "kernel"
    yield f"{prefix_t}.weight", path + (name,), ("vector" if kind_w == "norm" else kind_w)
    if bias:
        yield f"{prefix_t}.bias", path + ("bias",), "vector"


def _stem_entries(torch_prefix: str, k: int):
    p = ("stem%d" % k,)
    yield from _pairs(f"{torch_prefix}.conv1", p + ("conv1",), "conv")
    yield from _pairs(f"{torch_prefix}.bn1", p + ("norm1",), "norm")
    yield from _pairs(f"{torch_prefix}.bn2", p + ("norm2",), "norm")
    yield from _pairs(f"{torch_prefix}.conv2", p + ("conv2",), "conv")
    yield from _pairs(f"{torch_prefix}.downsample.0", p + ("shortcut_conv",), "conv")
    yield from _pairs(f"{torch_prefix}.downsample.1", p + ("shortcut_norm",), "norm")


def _cross_entries(torch_prefix: str, iterations: int):
    p = ("cross_attention",)
    for i in range(iterations):
        t, b = f"{torch_prefix}.decoder.{i}", p + (f"block_{i}",)
        yield from _pairs(f"{t}.norm1", b + ("norm1",), "norm")
        for src, dst in (("q_linear", "q"), ("k_linear", "k"), ("v_linear", "v")):
            yield from _pairs(f"{t}.attn.{src}", b + (dst,), "dense", bias=False)
        yield from _pairs(f"{t}.attn.proj", b + ("out",), "dense")
        yield from _pairs(f"{t}.norm2", b + ("norm2",), "norm")
        yield from _pairs(f"{t}.mlp.fc1", b + ("fc1",), "dense")
        yield from _pairs(f"{t}.mlp.fc2", b + ("fc2",), "dense")
    yield f"{torch_prefix}.sep_conv.conv1.weight", p + ("pre_scale",), "scale"
    yield f"{torch_prefix}.sep_conv.pointwise.weight", p + ("pre_proj", "kernel"), "pointwise"
    yield f"{torch_prefix}.sep_deconv.conv1.weight", p + ("post_scale",), "scale"
    yield f"{torch_prefix}.sep_deconv.conv1.bias", p + ("post_bias",), "vector"
    yield f"{torch_prefix}.sep_deconv.pointwise.weight", p + ("post_proj", "kernel"), "pointwise"


def _decoder_entries():
    p = ("decoder",)
    yield from _pairs("decoder.layer_0.0", p + ("up0", "norm"), "norm")
    yield from _pairs("decoder.layer_0.2", p + ("up0", "conv"), "conv")
    for k in range(1, 7):
        yield from _pairs(f"decoder.layer_{k}_f.0", p + (f"mask{k}", "norm"), "norm")
        yield from _pairs(f"decoder.layer_{k}_f.1", p + (f"mask{k}", "conv"), "conv")
        yield from _pairs(f"decoder.layer_{k}.0", p + (f"up{k}", "norm"), "norm")
        yield from _pairs(f"decoder.layer_{k}.2", p + (f"up{k}", "conv"), "conv")


def _head_entries():
    for torch_name, flax_name in (("mid_out_half", "head_half"), ("mid_out_quart", "head_quart")):
        yield from _pairs(f"{torch_name}.0", ("decoder", flax_name, "norm"), "norm")
        yield from _pairs(f"{torch_name}.2", ("decoder", flax_name, "conv"), "conv")


def mit_entries(
    config: MiTConfig, torch_prefix: str = "backbone.", flax_prefix: tuple[str, ...] = ("backbone",)
):
    """(torch key, flax path, kind) of a SegFormer MiT backbone in its state-dict order."""
    p = flax_prefix
    for s in range(1, 5):
        yield from _pairs(f"{torch_prefix}patch_embed{s}.proj", p + (f"patch_embed{s}", "proj"), "conv")
        yield from _pairs(f"{torch_prefix}patch_embed{s}.norm", p + (f"patch_embed{s}", "norm"), "norm")
    for s in range(1, 5):
        for j in range(config.depths[s - 1]):
            t, b = f"{torch_prefix}block{s}.{j}", p + (f"block{s}_{j}",)
            yield from _pairs(f"{t}.norm1", b + ("norm1",), "norm")
            yield from _pairs(f"{t}.attn.q", b + ("attn", "q"), "dense")
            yield from _pairs(f"{t}.attn.kv", b + ("attn", "kv"), "dense")
            yield from _pairs(f"{t}.attn.proj", b + ("attn", "proj"), "dense")
            if config.sr_ratios[s - 1] > 1:
                yield from _pairs(f"{t}.attn.sr", b + ("attn", "sr"), "conv")
                yield from _pairs(f"{t}.attn.norm", b + ("attn", "sr_norm"), "norm")
            yield from _pairs(f"{t}.norm2", b + ("norm2",), "norm")
            yield from _pairs(f"{t}.mlp.fc1", b + ("mlp", "fc1"), "dense")
            yield from _pairs(f"{t}.mlp.dwconv.dwconv", b + ("mlp", "dwconv"), "conv")
            yield from _pairs(f"{t}.mlp.fc2", b + ("mlp", "fc2"), "dense")
        yield from _pairs(f"{torch_prefix}norm{s}", p + (f"norm{s}",), "norm")


def official_key_map(backbone: str = "b0") -> list[tuple[str, tuple[str, ...] | None, str]]:
    """Every official key in state-dict order: (torch key, flax path, kind); aliases have path None and
    kind = the canonical key they duplicate."""
    cfg = MIT_CONFIGS[backbone]
    canonical: list[tuple[str, tuple[str, ...], str]] = []
    order: list[str] = []
    for k in (1, 2, 3):
        order += [key for key, _, _ in _stem_entries(f"encoder.layer_{k}", k)]
    order += [key for key, _, _ in _decoder_entries()]
    order += [key for key, _, _ in _cross_entries("cvt.cvt_1", CROSS_ITERATIONS)]
    backbone_entries = list(mit_entries(cfg))
    order += [key for key, _, _ in backbone_entries]
    order += ["grad.weight", "grad.bias"]
    heads = list(_head_entries())
    order += [key for key, _, _ in heads]
    stems = [e for k in (1, 2, 3) for e in _stem_entries(f"en_layer{k}", k)]
    order += [key for key, _, _ in stems]
    cross = list(_cross_entries("cross", CROSS_ITERATIONS))
    order += [key for key, _, _ in cross]

    canonical = (list(_decoder_entries()) + backbone_entries
                 + [("grad.weight", ("grad", "kernel"), "conv"), ("grad.bias", ("grad", "bias"), "vector")]
                 + heads + stems + cross)
    by_key = {key: (path, kind) for key, path, kind in canonical}
    out = []
    for key in order:
        if key in by_key:
            path, kind = by_key[key]
            out.append((key, path, kind))
        else:
            out.append((key, None, canonical_key(key)))
    return out


def canonical_key(key: str) -> str:
    """The canonical official key for `key` (aliases map to `en_layerK.*` / `cross.*`)."""
    for alias, canon in ALIASES.items():
        if key.startswith(alias):
            return canon + key[len(alias):]
    return key


# ----------------------------------------------------------------------------------------------------
# params tree helpers


def _get(tree: Mapping, path: tuple[str, ...]):
    for p in path:
        tree = tree[p]
    return tree


def _set(tree: dict, path: tuple[str, ...], value) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    for k, v in tree.items():
        if isinstance(v, Mapping):
            yield from _flatten(v, prefix + (k,))
        else:
            yield prefix + (k,), v


def count_params(params: Mapping) -> int:
    """Number of scalars in a params tree."""
    return int(sum(np.size(v) for _, v in _flatten(params)))


# ----------------------------------------------------------------------------------------------------
# conversion


def key_report(missing, unexpected, problems) -> str:
    """One line listing every missing, unexpected and bad (shape-mismatched / non-identical alias) key."""
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): " + ", ".join(missing))
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): " + ", ".join(unexpected))
    if problems:
        parts.append(f"{len(problems)} bad tensor(s): " + "; ".join(problems))
    return " | ".join(parts)


def official_to_flax(state_dict: Mapping[str, Any]) -> Params:
    """Convert the official FuseNet state dict (PyTorch layouts, 528 keys) to `Refiner` params.

    Strict: raises ONE UserError listing every missing, unexpected and shape-mismatched key and every
    alias whose copy is not bit-identical to its canonical key. Arrays are returned as float32 numpy.
    """
    if not isinstance(state_dict, Mapping):
        raise UserError(
            f"official_to_flax: expected a mapping of key -> array, got {type(state_dict).__name__}"
        )
    entries = official_key_map("b0")
    shapes = param_shapes()
    expected = {key for key, _, _ in entries}
    missing = [key for key, _, _ in entries if key not in state_dict]
    unexpected = sorted(k for k in state_dict if k not in expected)
    problems: list[str] = []
    params: Params = {}
    arrays: dict[str, np.ndarray] = {}
    for key, path, kind in entries:
        if key not in state_dict:
            continue
        try:
            a = np.asarray(state_dict[key])
        except Exception as e:  # noqa: BLE001 - report, keep collecting
            problems.append(f"{key}: not an array ({e})")
            continue
        if not np.issubdtype(a.dtype, np.floating) and a.dtype.name != "bfloat16":
            problems.append(f"{key}: expected a floating-point tensor, got dtype {a.dtype}")
            continue
        arrays[key] = a
        if path is None:
            continue
        want = TRANSFORMS[kind][2](shapes[path])
        if tuple(a.shape) != tuple(want):
            problems.append(f"{key}: shape {tuple(a.shape)}, expected {tuple(want)}")
            continue
        _set(params, path, np.ascontiguousarray(TRANSFORMS[kind][0](a.astype(np.float32))))
    for key, path, canon in entries:
        if path is not None or key not in arrays or canon not in arrays:
            continue
        a, c = arrays[key], arrays[canon]
        if a.shape != c.shape or a.dtype != c.dtype or not np.array_equal(a.view(np.uint8), c.view(np.uint8)):
            problems.append(f"{key}: alias of {canon} but not bit-identical to it")
    if missing or unexpected or problems:
        raise UserError("official state dict does not match the SDDR refiner: "
                        + key_report(missing, unexpected, problems))
    return params


def flax_to_official(params: Mapping) -> "collections.OrderedDict[str, np.ndarray]":
    """Inverse of `official_to_flax`: all 528 official keys (aliases included) in state-dict order."""
    params = params.get("params", params) if isinstance(params, Mapping) and "params" in params else params
    out: collections.OrderedDict[str, np.ndarray] = collections.OrderedDict()
    entries = official_key_map("b0")
    canon_arrays = {}
    for key, path, kind in entries:
        if path is None:
            continue
        try:
            a = np.asarray(_get(params, path), np.float32)
        except KeyError:
            raise UserError(f"flax_to_official: params lack {'/'.join(path)} (for {key})") from None
        canon_arrays[key] = np.ascontiguousarray(TRANSFORMS[kind][1](a))
    for key, path, canon in entries:
        out[key] = canon_arrays[key] if path is not None else canon_arrays[canon].copy()
    return out


def _unwrap_checkpoint(obj: Any, where: str) -> Mapping:
    if isinstance(obj, Mapping) and "net" in obj:
        obj = obj["net"]
    if not isinstance(obj, Mapping) or not all(isinstance(k, str) for k in obj):
        raise UserError(f"{where}: expected a dict with key 'net' holding the refiner's state dict")
    return obj


def load_official(path: str | os.PathLike) -> Params:
    """Read the official `.pt` checkpoint (a dict {'net': state_dict}; a bare state dict is also accepted)
    without torch and convert it to `Refiner` params."""
    obj = load_torch_file(path)
    try:
        return official_to_flax(_unwrap_checkpoint(obj, str(path)))
    except UserError as e:
        raise UserError(f"{path}: {e}") from None


def load_mit_imagenet(path: str | os.PathLike, params: Mapping, backbone: str = "b0") -> Params:
    """Put SegFormer's ImageNet MiT weights (`mit_b0.pth`) into the backbone of `params` (docs/method.md §3.7).

    The 3-channel stage-1 projection (`patch_embed1.proj.*`) is discarded (the refiner's takes 16 channels
    and keeps its own init) and the classification head (`head.*`) is ignored. Every other backbone key
    must be present with the right shape (ONE error lists all problems). Returns a new params tree.
    """
    obj = load_torch_file(path)
    where = str(path)
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise UserError(f"{where}: expected a MiT state dict")
    sd = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in obj.items()}
    cfg = MIT_CONFIGS[backbone]
    inner = params.get("params", params) if "params" in params else params
    new = _deep_copy(inner)
    entries = [e for e in mit_entries(cfg, torch_prefix="", flax_prefix=("backbone",))
               if not e[0].startswith("patch_embed1.proj.")]
    known = {k for k, _, _ in entries} | {"patch_embed1.proj.weight", "patch_embed1.proj.bias"}
    missing = [k for k, _, _ in entries if k not in sd]
    unexpected = sorted(k for k in sd if k not in known and not k.startswith("head."))
    problems = []
    for key, path, kind in entries:
        if key not in sd:
            continue
        a = np.asarray(sd[key])
        try:
            want_flax = np.shape(_get(new, path))
        except KeyError:
            raise UserError(
                f"load_mit_imagenet: params have no {'/'.join(path)}; is it a Refiner tree?"
            ) from None
        if tuple(a.shape) != tuple(TRANSFORMS[kind][2](want_flax)):
            problems.append(f"{key}: shape {tuple(a.shape)}, expected {TRANSFORMS[kind][2](want_flax)}")
            continue
        _set(new, path, np.ascontiguousarray(TRANSFORMS[kind][0](a.astype(np.float32))))
    if missing or unexpected or problems:
        raise UserError(f"{where}: not a SegFormer MiT-{backbone} checkpoint: "
                        + key_report(missing, unexpected, problems))
    return {"params": new} if "params" in params else new


def _deep_copy(tree: Mapping) -> dict:
    return {k: _deep_copy(v) if isinstance(v, Mapping) else v for k, v in tree.items()}


# ----------------------------------------------------------------------------------------------------
# Flax-native checkpoints (Orbax)


MODEL_CONFIG_FILE = "sddr_model.json"


def save_params(params: Mapping, path: str | os.PathLike, *, overwrite: bool = False,
                model_config: Any = None) -> Path:
    """Save a params tree as an Orbax (PyTree) checkpoint directory at `path`, atomically, with its model
    config (`sddr_model.json` beside the arrays; None = the official b0 refiner).

    The tree is checked against the model config first. Writes into a temporary sibling directory and
    renames it into place; refuses an existing `path` unless overwrite=True.
    """
    import orbax.checkpoint as ocp

    tree = _to_numpy_tree(params.get("params", params) if "params" in params else params)
    cfg = model_config_dict(model_config)
    check_params(tree, cfg, where=f"save_params {path}")
    dest = Path(path).absolute()
    if dest.exists() and not overwrite:
        raise FileExistsError(f"{dest}: already exists (pass overwrite=True / --overwrite to replace it)")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_dirs(dest)
        tmp_root = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp{os.getpid()}.", dir=dest.parent))
    except OSError as e:  # name the destination, not our hidden temporary folder
        raise type(e)(e.errno, f"{dest}: cannot write the converted checkpoint here ({e.strerror})") from None
    try:
        with ocp.PyTreeCheckpointer() as ckptr:
            ckptr.save(tmp_root / "ckpt", {"params": tree})
        (tmp_root / "ckpt" / MODEL_CONFIG_FILE).write_text(json.dumps(cfg, indent=1, sort_keys=True))
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp_root / "ckpt", dest)
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return dest


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temp_dirs(dest: str | os.PathLike) -> list[Path]:
    """Removes the temporary folders `.<name>.tmp<pid>.*` that a killed `save_params` left beside `dest`
    (those whose process is gone); returns what it removed."""
    dest = Path(dest)
    removed = []
    for p in dest.parent.glob(f".{dest.name}.tmp*"):
        pid = p.name[len(dest.name) + 5:].split(".", 1)[0]
        if p.is_dir() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def _to_numpy_tree(tree: Mapping) -> dict:
    return {k: _to_numpy_tree(v) if isinstance(v, Mapping) else np.asarray(v) for k, v in tree.items()}


def read_model_config(path: str | os.PathLike) -> dict[str, Any]:
    """The model config recorded in a `save_params` directory (the official b0 refiner if none is)."""
    f = Path(path) / MODEL_CONFIG_FILE
    if not f.is_file():
        return model_config_dict(None)
    try:
        return model_config_dict(json.loads(f.read_text()))
    except json.JSONDecodeError as e:
        raise UserError(f"{f}: not a JSON model config ({e})") from None


def load_refiner(path: str | os.PathLike) -> tuple[Params, dict[str, Any]]:
    """(params, model config) from an official `.pt`/`.pth` file or an Orbax directory of `save_params`.

    The params are checked against the model config (one error listing every key/shape difference).
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(
            f"{p}: no such checkpoint (expected an official .pt file or a converted directory)"
        )
    if p.is_dir():
        import orbax.checkpoint as ocp

        cfg = read_model_config(p)
        try:
            with ocp.PyTreeCheckpointer() as ckptr:
                restored = ckptr.restore(p.absolute())
        except Exception as e:  # noqa: BLE001 - orbax raises many types; the user needs the path
            raise UserError(f"{p}: not a readable Orbax checkpoint ({storage_problem(e)})") from None
        if not isinstance(restored, Mapping) or "params" not in restored:
            raise UserError(f"{p}: Orbax checkpoint without a 'params' entry")
        params = _to_numpy_tree(restored["params"])
        check_params(params, cfg, where=str(p))
        return params, cfg
    return load_official(p), model_config_dict(None)


def load_params(path: str | os.PathLike) -> Params:
    """Refiner params from an official `.pt`/`.pth` file or a `save_params` directory (see `load_refiner`)."""
    return load_refiner(path)[0]


__all__ = [
    "ALIASES",
    "N_KEYS",
    "N_PARAMS_WITH_ALIASES",
    "N_UNIQUE_PARAMS",
    "canonical_key",
    "count_params",
    "flax_to_official",
    "load_mit_imagenet",
    "load_official",
    "load_params",
    "load_refiner",
    "read_model_config",
    "MODEL_CONFIG_FILE",
    "mit_entries",
    "official_key_map",
    "official_to_flax",
    "save_params",
]
