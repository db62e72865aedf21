"""`Refiner`: the whole SDDR refiner network (docs/method.md §3), a port of the official PyTorch `FuseNet`.

Forward (docs/method.md §3.4): high' = grad(high); the stem and the MiT backbone (shared weights) turn both inputs
into feature lists [x1, x2, x3, b1, b2, b3, b4]; the cross-attention adds residuals to both b4 maps; the
decoder fuses the two lists with soft masks and returns the refined map plus side outputs.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from sddr_jax.models.cross_attention import CrossAttention
from sddr_jax.models.decoder import Decoder
from sddr_jax.models.mit import MixVisionTransformer, get_mit_config
from sddr_jax.models.stem import Down
from sddr_jax.errors import UserError
from sddr_jax.ops import UPSAMPLE_MODES, ConvReplicate

Array = jax.Array
Dtype = Any

STEM_CHANNELS = (8, 16, 32)
SIZE_MULTIPLE = 128  # every stage halves the map exactly and the decoder's x2 upsamplings meet the skips


@flax.struct.dataclass
class RefinerOutput:
    """Outputs of `Refiner` (NHWC, float32 unless the Refiner computes in another dtype and keeps it).

    refined (B, S, S, 1); out_half (B, S/2, S/2, 1); out_quart (B, S/4, S/4, 1);
    mask_quart = m5 (B, S/4, S/4, 1); mask_half = m6 (B, S/2, S/2, 1). Masks weight the LOW branch.
    """

    refined: Array
    out_half: Array
    out_quart: Array
    mask_quart: Array
    mask_half: Array


def check_refiner_inputs(low, high) -> int:
    """Validate `(B, S, S, 1)` inputs with S a multiple of 128; return S (ValueError otherwise)."""
    for name, a in (("low", low), ("high", high)):
        shape = tuple(getattr(a, "shape", ()))
        if len(shape) != 4 or shape[-1] != 1 or shape[1] != shape[2]:
            raise ValueError(f"Refiner: {name} must have shape (B, S, S, 1), got {shape}")
    if tuple(low.shape) != tuple(high.shape):
        raise ValueError(
            f"Refiner: low and high must have the same shape, got {tuple(low.shape)} and {tuple(high.shape)}"
        )
    s = int(low.shape[1])
    if s % SIZE_MULTIPLE or s == 0:
        raise ValueError(
            f"Refiner: the working size S must be a positive multiple of {SIZE_MULTIPLE}, got S={s}"
        )
    return s


class Refiner(nn.Module):
    """The SDDR refiner. `Refiner().apply({'params': p}, low, high, train=False) -> RefinerOutput`.

    low, high: (B, S, S, 1), S a multiple of 128, each min-max normalised to [0, 1] by the caller.
    backbone: MiT variant ('b0' for the official checkpoint; b1..b5 for training larger refiners).
    dtype: computation dtype (e.g. jnp.bfloat16); parameters stay float32; outputs are returned in float32.
    train=True enables the backbone's stochastic depth and needs a 'dropout' rng. It also picks the forms of a
    few layers: inference uses the ones XLA:CPU runs fastest (element-wise depthwise and one-channel convs,
    taps as one matmul, bicubic x2 as slices), training XLA's convolutions and gathers, whose backward compiles
    faster; both are the same function to float32 rounding (docs/benchmarks.md).
    """

    backbone: str = "b0"
    cross_iterations: int = 8
    dtype: Dtype | None = None
    upsample: str = "align_corners"

    @nn.compact
    def __call__(self, low: Array, high: Array, train: bool = False) -> RefinerOutput:
        check_refiner_inputs(low, high)
        cfg = get_mit_config(self.backbone)
        dt = self.dtype
        channels = STEM_CHANNELS + tuple(cfg.embed_dims)
        if dt is not None:
            low, high = low.astype(dt), high.astype(dt)

        high = ConvReplicate(1, 5, dtype=dt, name="grad")(high)
        stems = [Down(c, dtype=dt, name=f"stem{i + 1}") for i, c in enumerate(STEM_CHANNELS)]
        mit = MixVisionTransformer(cfg, in_channels=STEM_CHANNELS[1], dtype=dt, name="backbone")

        # Both branches go through the shared stem and backbone as one batch of 2B maps: per-sample ops
        # (GroupNorm, LayerNorm, attention) make this identical to two calls, with half the compiled graph.
        b = low.shape[0]
        x = jnp.concatenate([low, high], axis=0)
        feats = []
        for stem in stems:
            x = stem(x, train=train)
            feats.append(x)
        feats += mit(feats[1], train=train)
        feats_low = [f[:b] for f in feats]
        feats_high = [f[b:] for f in feats]
        z_low, z_high = CrossAttention(cfg.embed_dims[-1], self.cross_iterations, dtype=dt,
                                       name="cross_attention")(feats_low[-1], feats_high[-1])
        feats_low[-1] = feats_low[-1] + z_low
        feats_high[-1] = feats_high[-1] + z_high
        out = Decoder(channels, dtype=dt, upsample=self.upsample, name="decoder")(feats_low, feats_high, train=train)
        out = [o.astype(jnp.float32) for o in out]
        return RefinerOutput(*out)


# ----------------------------------------------------------------------------------------------------
# The one place that builds a Refiner from a model config (training, checkpoints, CLI and Python API).

DEFAULT_MODEL_CONFIG = {"backbone": "b0", "cross_iterations": 8, "dtype": "float32", "upsample": "align_corners"}
_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def model_config_dict(model_config: Any = None) -> dict[str, Any]:
    """A model config (`config.model` of training, a dict saved in a checkpoint, or None for the official
    b0 refiner) as a plain, validated dict {backbone, cross_iterations, dtype, upsample}; unknown keys are
    refused, missing ones take the official value (a checkpoint saved before `upsample` existed is an
    align_corners refiner)."""
    given = {} if model_config is None else dict(model_config)
    unknown = sorted(set(given) - set(DEFAULT_MODEL_CONFIG))
    if unknown:
        raise UserError(f"model config: unknown keys {unknown} (expected {sorted(DEFAULT_MODEL_CONFIG)})")
    cfg = {**DEFAULT_MODEL_CONFIG, **given}
    try:
        get_mit_config(str(cfg["backbone"]))
    except ValueError as e:
        raise UserError(f"model config: backbone: {e}") from None
    try:
        cfg["cross_iterations"] = int(cfg["cross_iterations"])
    except (TypeError, ValueError):
        raise UserError(f"model config: cross_iterations must be an integer, got {cfg['cross_iterations']!r}") from None
    if cfg["cross_iterations"] < 0:
        raise UserError(f"model config: cross_iterations must be >= 0, got {cfg['cross_iterations']}")
    if cfg["dtype"] not in _DTYPES:
        raise UserError(f"model config: dtype must be one of {sorted(_DTYPES)}, got {cfg['dtype']!r}")
    if cfg["upsample"] not in UPSAMPLE_MODES:
        raise UserError(f"model config: upsample must be one of {list(UPSAMPLE_MODES)}, got {cfg['upsample']!r}")
    cfg["backbone"] = str(cfg["backbone"])
    return cfg


def build_refiner(model_config: Any = None, *, dtype: Dtype | None = None) -> Refiner:
    """The `Refiner` of a model config (None: the official b0 refiner with 8 cross-attention blocks).

    `dtype` (a jnp dtype) overrides the config's compute dtype, e.g. bf16 inference of a float32 model.
    """
    cfg = model_config_dict(model_config)
    return Refiner(backbone=cfg["backbone"], cross_iterations=cfg["cross_iterations"], upsample=cfg["upsample"],
                   dtype=dtype if dtype is not None else _DTYPES[cfg["dtype"]])


def _flatten_tree(tree: Any, prefix: tuple[str, ...] = ()):
    for k, v in tree.items():
        if hasattr(v, "items"):
            yield from _flatten_tree(v, prefix + (str(k),))
        else:
            yield prefix + (str(k),), v


@functools.lru_cache(maxsize=None)
def _param_shapes(model_items: tuple) -> dict[tuple[str, ...], tuple[int, ...]]:
    x = jax.ShapeDtypeStruct((1, 128, 128, 1), jnp.float32)
    model = build_refiner(dict(model_items))
    shapes = jax.eval_shape(model.init, jax.random.key(0), x, x)["params"]
    return {path: tuple(v.shape) for path, v in _flatten_tree(shapes)}


def param_shapes(model_config: Any = None) -> dict[tuple[str, ...], tuple[int, ...]]:
    """{parameter path: shape} of the Refiner of a model config (traced abstractly, nothing allocated)."""
    return dict(_param_shapes(tuple(sorted(model_config_dict(model_config).items()))))


def params_report(params: Any, model_config: Any = None) -> str:
    """'' when `params` has exactly the keys and shapes of the model config's Refiner; else one line listing
    every missing, unexpected and wrongly shaped parameter path."""
    if not hasattr(params, "items"):
        raise UserError(f"params: expected a nested dict of arrays, got {type(params).__name__}")
    want = param_shapes(model_config)
    got = {path: tuple(np.shape(v)) for path, v in _flatten_tree(params)}
    missing = sorted("/".join(k) for k in want if k not in got)
    unexpected = sorted("/".join(k) for k in got if k not in want)
    bad = sorted(f"{'/'.join(k)} {got[k]} != {want[k]}" for k in want if k in got and got[k] != want[k])
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: " + ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: " + ", ".join(unexpected[:8])
                     + (" ..." if len(unexpected) > 8 else ""))
    if bad:
        parts.append(f"{len(bad)} wrong shape: " + ", ".join(bad[:8]) + (" ..." if len(bad) > 8 else ""))
    return " | ".join(parts)


def check_params(params: Any, model_config: Any = None, where: str = "params") -> None:
    """Raises one UserError naming every key/shape difference between `params` and the model config's
    Refiner (`where` names the source, e.g. a checkpoint path)."""
    report = params_report(params, model_config)
    if report:
        cfg = model_config_dict(model_config)
        raise UserError(f"{where}: parameters do not fit the refiner {cfg}: {report}")
