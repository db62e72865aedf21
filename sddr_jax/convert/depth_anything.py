"""Depth Anything V2 weights -> Flax parameters of `sddr_jax.models.depth_anything.DepthAnythingV2`.

Two source layouts, neither needing torch:
- Hugging Face `DepthAnythingForDepthEstimation` (`model.safetensors`, read with the `safetensors` numpy
  API; the `config.json` beside it, when present, gives the architecture);
- the original repository's `depth_anything_v2_vit{s,b,l}.pth` (read with the torch-free pickle reader
  `sddr_jax.convert.torch_pickle.load_torch_file`).

The Hugging Face names are first renamed to the original ones (q/k/v merged into `qkv`), then one mapping
takes the original layout to the Flax tree. Every key is accounted for: a file with missing, unexpected or
wrongly shaped tensors is refused with the full key diff. Tensors that exist in the checkpoints but never
reach the output (DINOv2's `mask_token`, the first residual unit of the deepest fusion block) are dropped
by name. Not part of the SDDR spec (docs/method.md §1 names the predictor as separate work).
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from sddr_jax.errors import UserError
from sddr_jax.models.depth_anything import CONFIGS, DepthAnythingConfig, DepthAnythingV2, get_config


@dataclasses.dataclass(frozen=True)
class ConvertedDepthAnything:
    """The result of a conversion: Flax `params`, the architecture `config`, the source `layout` and the
    position-embedding interpolation that matches it (`pos_embed_mode`, pass it to the predictor)."""

    params: dict
    config: DepthAnythingConfig
    layout: str
    pos_embed_mode: str

    def predictor(self, **kwargs):
        """A `DepthAnythingPredictor` for these weights (kwargs: output, dtype)."""
        from sddr_jax.models.depth_anything import DepthAnythingPredictor

        kwargs.setdefault("pos_embed_mode", self.pos_embed_mode)
        return DepthAnythingPredictor(self.params, self.config, **kwargs)


# ----------------------------------------------------------------------------------------------------
# Hugging Face names -> original names

_HF_BLOCK = re.compile(r"^backbone\.encoder\.layer\.(\d+)\.(.+)$")
_HF_BLOCK_RENAMES = {
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1.weight": "mlp.fc1.weight", "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight", "mlp.fc2.bias": "mlp.fc2.bias",
    # transformers <= 4 names (what `save_pretrained` and the Hub files use) and transformers 5 module names
    "attention.output.dense.weight": "attn.proj.weight", "attention.output.dense.bias": "attn.proj.bias",
    "attention.o_proj.weight": "attn.proj.weight", "attention.o_proj.bias": "attn.proj.bias",
}
_HF_QKV = {
    "attention.attention.query": "q", "attention.attention.key": "k", "attention.attention.value": "v",
    "attention.q_proj": "q", "attention.k_proj": "k", "attention.v_proj": "v",
}
_HF_FIXED = {
    "backbone.embeddings.cls_token": "pretrained.cls_token",
    "backbone.embeddings.mask_token": "pretrained.mask_token",
    "backbone.embeddings.position_embeddings": "pretrained.pos_embed",
    "backbone.embeddings.patch_embeddings.projection.weight": "pretrained.patch_embed.proj.weight",
    "backbone.embeddings.patch_embeddings.projection.bias": "pretrained.patch_embed.proj.bias",
    "backbone.layernorm.weight": "pretrained.norm.weight",
    "backbone.layernorm.bias": "pretrained.norm.bias",
    "head.conv1.weight": "depth_head.scratch.output_conv1.weight",
    "head.conv1.bias": "depth_head.scratch.output_conv1.bias",
    "head.conv2.weight": "depth_head.scratch.output_conv2.0.weight",
    "head.conv2.bias": "depth_head.scratch.output_conv2.0.bias",
    "head.conv3.weight": "depth_head.scratch.output_conv2.2.weight",
    "head.conv3.bias": "depth_head.scratch.output_conv2.2.bias",
}


def hf_to_original(state: Mapping[str, np.ndarray], num_fusion: int = 4) -> dict[str, np.ndarray]:
    """Rename a Hugging Face `DepthAnythingForDepthEstimation` state dict to the original repository's names.

    Keys it does not know are kept under their own name, so the strict diff of the converter reports them.
    """
    out: dict[str, np.ndarray] = {}
    qkv: dict[int, dict[str, dict[str, np.ndarray]]] = {}
    for key, value in state.items():
        value = np.asarray(value)
        if key in _HF_FIXED:
            out[_HF_FIXED[key]] = value
            continue
        m = _HF_BLOCK.match(key)
        if m:
            i, rest = int(m.group(1)), m.group(2)
            if rest in _HF_BLOCK_RENAMES:
                out[f"pretrained.blocks.{i}.{_HF_BLOCK_RENAMES[rest]}"] = value
                continue
            stem, _, leaf = rest.rpartition(".")
            if stem in _HF_QKV and leaf in ("weight", "bias"):
                qkv.setdefault(i, {}).setdefault(leaf, {})[_HF_QKV[stem]] = value
                continue
        m = re.match(r"^neck\.reassemble_stage\.layers\.(\d+)\.(projection|resize)\.(weight|bias)$", key)
        if m:
            name = "projects" if m.group(2) == "projection" else "resize_layers"
            out[f"depth_head.{name}.{m.group(1)}.{m.group(3)}"] = value
            continue
        m = re.match(r"^neck\.convs\.(\d+)\.weight$", key)
        if m:
            out[f"depth_head.scratch.layer{int(m.group(1)) + 1}_rn.weight"] = value
            continue
        m = re.match(r"^neck\.fusion_stage\.layers\.(\d+)\.(.+)$", key)
        if m:
            # HF fuses deepest first: its layer j is the original refinenet(4 - j).
            k = num_fusion - int(m.group(1))
            rest = m.group(2)
            rest = rest.replace("projection.", "out_conv.").replace("residual_layer1.", "resConfUnit1.")
            rest = rest.replace("residual_layer2.", "resConfUnit2.").replace("convolution1.", "conv1.")
            rest = rest.replace("convolution2.", "conv2.")
            out[f"depth_head.scratch.refinenet{k}.{rest}"] = value
            continue
        out[key] = value
    for i, leaves in sorted(qkv.items()):
        for leaf, parts in leaves.items():
            if set(parts) != {"q", "k", "v"}:
                missing = sorted({"q", "k", "v"} - set(parts))
                raise UserError(f"Hugging Face state dict: block {i} attention {leaf} lacks {missing} projection(s)")
            out[f"pretrained.blocks.{i}.attn.qkv.{leaf}"] = np.concatenate([parts["q"], parts["k"], parts["v"]], axis=0)
    return out


# ----------------------------------------------------------------------------------------------------
# original names -> Flax tree

# Present in the checkpoints, never used by the depth output.
_UNUSED = (re.compile(r"^pretrained\.mask_token$"), re.compile(r"^depth_head\.scratch\.refinenet4\.resConfUnit1\."))


def _conv(w):  # torch (out, in, kh, kw) -> flax (kh, kw, in, out)
    return np.transpose(w, (2, 3, 1, 0))


def _conv_transpose(w):  # torch ConvTranspose2d (in, out, kh, kw) -> (kh, kw, in, out); stride == kernel, no flip
    return np.transpose(w, (2, 3, 0, 1))


def _dense(w):  # torch Linear (out, in) -> flax (in, out)
    return np.transpose(w)


def _same(w):
    return w


def _original_rule(key: str) -> tuple[tuple[str, ...], Any] | None:
    """Flax path and transform for one original-layout key, or None if the key is not part of the model."""
    m = re.match(r"^pretrained\.(cls_token|pos_embed)$", key)
    if m:
        return ("pretrained", m.group(1)), _same
    m = re.match(r"^pretrained\.patch_embed\.proj\.(weight|bias)$", key)
    if m:
        return ("pretrained", "patch_embed", "kernel" if m.group(1) == "weight" else "bias"), (_conv if m.group(1) == "weight" else _same)
    m = re.match(r"^pretrained\.norm\.(weight|bias)$", key)
    if m:
        return ("pretrained", "norm", "scale" if m.group(1) == "weight" else "bias"), _same
    m = re.match(r"^pretrained\.blocks\.(\d+)\.(.+)$", key)
    if m:
        block, rest = f"blocks_{m.group(1)}", m.group(2)
        mm = re.match(r"^(norm1|norm2)\.(weight|bias)$", rest)
        if mm:
            return ("pretrained", block, mm.group(1), "scale" if mm.group(2) == "weight" else "bias"), _same
        mm = re.match(r"^(ls1|ls2)\.gamma$", rest)
        if mm:
            return ("pretrained", block, mm.group(1), "gamma"), _same
        mm = re.match(r"^(attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)$", rest)
        if mm:
            mod, sub = mm.group(1).split(".")
            w = mm.group(2) == "weight"
            return ("pretrained", block, mod, sub, "kernel" if w else "bias"), (_dense if w else _same)
        return None
    m = re.match(r"^depth_head\.projects\.(\d)\.(weight|bias)$", key)
    if m:
        w = m.group(2) == "weight"
        return ("depth_head", f"projects_{m.group(1)}", "kernel" if w else "bias"), (_conv if w else _same)
    m = re.match(r"^depth_head\.resize_layers\.([013])\.(weight|bias)$", key)
    if m:
        w = m.group(2) == "weight"
        transform = (_conv_transpose if m.group(1) in "01" else _conv) if w else _same
        return ("depth_head", f"resize_layers_{m.group(1)}", "kernel" if w else "bias"), transform
    m = re.match(r"^depth_head\.scratch\.(layer[1-4]_rn)\.weight$", key)
    if m:
        return ("depth_head", m.group(1), "kernel"), _conv
    m = re.match(r"^depth_head\.scratch\.(refinenet[1-4])\.(out_conv|resConfUnit[12]\.conv[12])\.(weight|bias)$", key)
    if m:
        w = m.group(3) == "weight"
        return ("depth_head", m.group(1), *m.group(2).split("."), "kernel" if w else "bias"), (_conv if w else _same)
    m = re.match(r"^depth_head\.scratch\.(output_conv1|output_conv2\.0|output_conv2\.2)\.(weight|bias)$", key)
    if m:
        w = m.group(2) == "weight"
        return ("depth_head", m.group(1).replace(".", "_"), "kernel" if w else "bias"), (_conv if w else _same)
    return None


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    flat = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            flat.update(_flatten(v, prefix + (k,)))
        else:
            flat[prefix + (k,)] = v
    return flat


def _unflatten(flat: Mapping[tuple[str, ...], Any]) -> dict:
    tree: dict = {}
    for path, v in flat.items():
        node = tree
        for k in path[:-1]:
            node = node.setdefault(k, {})
        node[path[-1]] = v
    return tree


def expected_shapes(config: DepthAnythingConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Flax parameter paths and shapes of `DepthAnythingV2(config)` (abstract init, no FLOPs)."""
    model = DepthAnythingV2(config)
    x = jax.ShapeDtypeStruct((1, 14, 14, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)["params"]
    return {path: tuple(v.shape) for path, v in _flatten(shapes).items()}


def convert_original_state_dict(
    state: Mapping[str, np.ndarray], config: str | DepthAnythingConfig | None = None, *, source: str = "state dict"
) -> dict:
    """Original-layout state dict (numpy arrays) -> Flax params, float32. Strict: refuses with a key diff."""
    config = infer_config(state) if config is None else get_config(config)
    expected = expected_shapes(config)
    flat: dict[tuple[str, ...], np.ndarray] = {}
    unexpected, shape_errors = [], []
    for key, value in state.items():
        if any(p.search(key) for p in _UNUSED):
            continue
        rule = _original_rule(key)
        if rule is None or rule[0] not in expected:
            unexpected.append(key)
            continue
        path, transform = rule
        arr = transform(np.asarray(value, np.float32))
        if tuple(arr.shape) != expected[path]:
            shape_errors.append(f"{key}: got {tuple(np.shape(value))} -> {tuple(arr.shape)}, expected {expected[path]} at {'/'.join(path)}")
            flat[path] = None  # present, reported as a shape error rather than as missing
            continue
        flat[path] = np.ascontiguousarray(arr)
    missing = ["/".join(p) for p in expected if p not in flat]
    if unexpected or missing or shape_errors:
        lines = [f"{source}: does not match Depth Anything V2 {config.name!r} "
                 f"(dim {config.dim}, depth {config.depth}, features {config.features})"]
        if missing:
            lines.append(f"missing ({len(missing)}): " + ", ".join(missing))
        if unexpected:
            lines.append(f"unexpected ({len(unexpected)}): " + ", ".join(sorted(unexpected)))
        if shape_errors:
            lines.append(f"wrong shape ({len(shape_errors)}): " + "; ".join(shape_errors))
        raise UserError("\n".join(lines))
    return _unflatten(flat)


def convert_hf_state_dict(
    state: Mapping[str, np.ndarray], config: str | DepthAnythingConfig | None = None, *, source: str = "state dict"
) -> dict:
    """Hugging Face `DepthAnythingForDepthEstimation` state dict -> Flax params (strict, see module doc)."""
    return convert_original_state_dict(hf_to_original(state), config, source=source)


def original_key_names(config: str | DepthAnythingConfig) -> list[str]:
    """The original repository's state-dict keys that the Flax model uses (no `mask_token`, no unused unit)."""
    config = get_config(config)
    keys = ["pretrained.cls_token", "pretrained.pos_embed", "pretrained.patch_embed.proj.weight",
            "pretrained.patch_embed.proj.bias"]
    for i in range(max(config.out_indices) + 1):
        for mod in ("norm1", "norm2", "attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"):
            keys += [f"pretrained.blocks.{i}.{mod}.weight", f"pretrained.blocks.{i}.{mod}.bias"]
        keys += [f"pretrained.blocks.{i}.ls1.gamma", f"pretrained.blocks.{i}.ls2.gamma"]
    keys += ["pretrained.norm.weight", "pretrained.norm.bias"]
    for i in range(4):
        keys += [f"depth_head.projects.{i}.weight", f"depth_head.projects.{i}.bias"]
    for i in (0, 1, 3):
        keys += [f"depth_head.resize_layers.{i}.weight", f"depth_head.resize_layers.{i}.bias"]
    keys += [f"depth_head.scratch.layer{k}_rn.weight" for k in range(1, 5)]
    for k in range(1, 5):
        units = ("resConfUnit2",) if k == 4 else ("resConfUnit1", "resConfUnit2")
        for mod in ("out_conv",) + tuple(f"{u}.conv{c}" for u in units for c in (1, 2)):
            keys += [f"depth_head.scratch.refinenet{k}.{mod}.weight", f"depth_head.scratch.refinenet{k}.{mod}.bias"]
    for mod in ("output_conv1", "output_conv2.0", "output_conv2.2"):
        keys += [f"depth_head.scratch.{mod}.weight", f"depth_head.scratch.{mod}.bias"]
    return keys


_INVERSE = {_conv: lambda w: np.transpose(w, (3, 2, 0, 1)), _conv_transpose: lambda w: np.transpose(w, (2, 3, 0, 1)),
            _dense: np.transpose, _same: lambda w: w}


def export_original_state_dict(params: Mapping, config: str | DepthAnythingConfig) -> dict[str, np.ndarray]:
    """Flax params -> original-layout state dict of float32 numpy arrays (inverse of the converter; used to
    write test checkpoints and to hand JAX-trained weights back to the PyTorch code)."""
    flat = _flatten(params)
    out = {}
    for key in original_key_names(config):
        path, transform = _original_rule(key)
        if path not in flat:
            raise UserError(f"params: no {'/'.join(path)} for {key}")
        out[key] = np.ascontiguousarray(_INVERSE[transform](np.asarray(flat[path], np.float32)))
    return out


# ----------------------------------------------------------------------------------------------------
# configs


def infer_config(state: Mapping[str, np.ndarray]) -> DepthAnythingConfig:
    """The standard size (small/base/large) whose shapes match an original-layout state dict."""
    try:
        dim = int(np.shape(state["pretrained.cls_token"])[-1])
        features = int(np.shape(state["depth_head.scratch.layer1_rn.weight"])[0])
    except KeyError as e:
        raise UserError(f"state dict: no {e.args[0]!r}; not a Depth Anything V2 checkpoint") from None
    depth = 1 + max((int(m.group(1)) for k in state if (m := re.match(r"^pretrained\.blocks\.(\d+)\.", k))), default=-1)
    for cfg in CONFIGS.values():
        if (cfg.dim, cfg.depth, cfg.features) == (dim, depth, features):
            n_pos = int(np.shape(state["pretrained.pos_embed"])[1]) - 1
            grid = int(round(n_pos**0.5))
            return dataclasses.replace(cfg, pretrain_grid=grid) if grid != cfg.pretrain_grid else cfg
    raise UserError(
        f"state dict: width {dim}, {depth} blocks, fusion width {features} match no standard Depth Anything V2 size "
        f"({', '.join(f'{c.name}: {c.dim}/{c.depth}/{c.features}' for c in CONFIGS.values())}); pass a config"
    )


def config_from_hf(cfg: Mapping[str, Any], name: str = "hf") -> DepthAnythingConfig:
    """A `DepthAnythingConfig` from a Hugging Face `DepthAnythingConfig` dict (`config.json`)."""
    bb = cfg.get("backbone_config") or {}
    checks = {
        "depth_estimation_type": (cfg.get("depth_estimation_type", "relative"), "relative"),
        "patch_size": (cfg.get("patch_size", 14), 14),
        "backbone patch_size": (bb.get("patch_size", 14), 14),
        "reassemble_factors": ([float(f) for f in cfg.get("reassemble_factors", (4, 2, 1, 0.5))], [4.0, 2.0, 1.0, 0.5]),
        "head_in_index": (cfg.get("head_in_index", -1), -1),
        "backbone use_swiglu_ffn": (bb.get("use_swiglu_ffn", False), False),
        "backbone hidden_act": (bb.get("hidden_act", "gelu"), "gelu"),
        "backbone apply_layernorm": (bb.get("apply_layernorm", True), True),
        "backbone num_register_tokens": (bb.get("num_register_tokens", 0) or 0, 0),
    }
    for what, (got, want) in checks.items():
        if got != want:
            raise UserError(f"config.json: {what} = {got!r} is not supported (expected {want!r})")
    if bb.get("model_type", "dinov2") != "dinov2":
        raise UserError(f"config.json: backbone model_type {bb.get('model_type')!r} is not supported (expected 'dinov2')")
    out_indices = bb.get("out_indices")
    if not out_indices:
        raise UserError("config.json: backbone_config.out_indices is missing")
    image_size = bb.get("image_size", 518)
    image_size = image_size[0] if isinstance(image_size, (list, tuple)) else image_size
    return DepthAnythingConfig(
        name=name,
        dim=int(bb.get("hidden_size", 384)),
        depth=int(bb.get("num_hidden_layers", 12)),
        num_heads=int(bb.get("num_attention_heads", 6)),
        # HF stage k is the output of block k (stage 0 is the embedding), i.e. block index k - 1.
        out_indices=tuple(int(i) - 1 for i in out_indices),
        features=int(cfg.get("fusion_hidden_size", 64)),
        out_channels=tuple(int(c) for c in cfg.get("neck_hidden_sizes", (48, 96, 192, 384))),
        licence="see the model card",
        mlp_ratio=float(bb.get("mlp_ratio", 4.0)),
        pretrain_grid=int(image_size) // 14,
        head_hidden=int(cfg.get("head_hidden_size", 32)),
    )


def _matching_standard(cfg: DepthAnythingConfig) -> DepthAnythingConfig:
    """Use the standard config's name and licence when an HF config describes a standard size."""
    for std in CONFIGS.values():
        if dataclasses.replace(cfg, name=std.name, licence=std.licence) == std:
            return std
    return cfg


# ----------------------------------------------------------------------------------------------------
# files


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(path)
    except Exception as e:  # safetensors raises its own error types for corrupt files
        raise UserError(f"{path}: cannot read as safetensors ({e})") from None


def _read_pth(path: str) -> dict[str, np.ndarray]:
    try:
        from sddr_jax.convert.torch_pickle import load_torch_file
    except ImportError:  # pragma: no cover - the reader ships with the package
        raise UserError(f"{path}: reading .pth files needs sddr_jax.convert.torch_pickle, which is not available") from None
    state = load_torch_file(path)
    # Some training scripts wrap the weights: {"model": {...}} or {"state_dict": {...}}; and DDP adds "module.".
    for wrapper in ("model", "state_dict"):
        if isinstance(state, Mapping) and wrapper in state and isinstance(state[wrapper], Mapping) and "pretrained.cls_token" not in state:
            state = state[wrapper]
    flat = {}
    for k, v in state.items():
        flat[k[len("module."):] if k.startswith("module.") else k] = v
    return flat


def detect_layout(state: Mapping[str, Any]) -> str:
    """'hf' or 'original' from the key names."""
    if "backbone.embeddings.cls_token" in state:
        return "hf"
    if "pretrained.cls_token" in state:
        return "original"
    some = ", ".join(list(state)[:5])
    raise UserError(f"state dict: neither a Hugging Face nor an original Depth Anything V2 layout (first keys: {some})")


def load_depth_anything(path: str | os.PathLike, config: str | DepthAnythingConfig | None = None) -> ConvertedDepthAnything:
    """Read Depth Anything V2 weights from a file or a Hugging Face model folder and convert them.

    path: a `model.safetensors` (HF layout; its folder's `config.json` is used when `config` is None), a
      folder holding both, or an original `.pth` (e.g. `depth_anything_v2_vits.pth`).
    config: a size name or `DepthAnythingConfig`; by default inferred (config.json, else tensor shapes).
    Never downloads anything.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        candidate = os.path.join(path, "model.safetensors")
        if not os.path.isfile(candidate):
            raise FileNotFoundError(f"{path}: folder has no model.safetensors")
        path = candidate
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.endswith(".safetensors"):
        state = _read_safetensors(path)
    elif path.endswith((".pth", ".pt", ".bin")):
        state = _read_pth(path)
    else:
        raise UserError(f"{path}: expected a .safetensors or .pth file")
    layout = detect_layout(state)
    if layout == "hf":
        if config is None:
            cfg_path = os.path.join(os.path.dirname(path), "config.json")
            if os.path.isfile(cfg_path):
                with open(cfg_path) as f:
                    config = _matching_standard(config_from_hf(json.load(f), name=os.path.basename(os.path.dirname(os.path.abspath(path))) or "hf"))
        original = hf_to_original(state)
        params = convert_original_state_dict(original, config, source=path)
        config = infer_config(original) if config is None else get_config(config)
        return ConvertedDepthAnything(params, config, "hf", "hf")
    params = convert_original_state_dict(state, config, source=path)
    config = infer_config(state) if config is None else get_config(config)
    return ConvertedDepthAnything(params, config, "original", "original")
