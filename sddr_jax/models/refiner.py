"""`Refiner`: the whole SDDR refiner network (spec 3), a port of the official PyTorch `FuseNet`.

Forward (spec 3.4): high' = grad(high); the stem and the MiT backbone (shared weights) turn both inputs
into feature lists [x1, x2, x3, b1, b2, b3, b4]; the cross-attention adds residuals to both b4 maps; the
decoder fuses the two lists with soft masks and returns the refined map plus side outputs.
"""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from sddr_jax.models.cross_attention import CrossAttention
from sddr_jax.models.decoder import Decoder
from sddr_jax.models.mit import MixVisionTransformer, get_mit_config
from sddr_jax.models.stem import Down
from sddr_jax.ops import ConvReplicate

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
    train=True enables the backbone's stochastic depth and needs a 'dropout' rng.
    """

    backbone: str = "b0"
    cross_iterations: int = 8
    dtype: Dtype | None = None

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
            x = stem(x)
            feats.append(x)
        feats += mit(feats[1], train=train)
        feats_low = [f[:b] for f in feats]
        feats_high = [f[b:] for f in feats]
        z_low, z_high = CrossAttention(cfg.embed_dims[-1], self.cross_iterations, dtype=dt,
                                       name="cross_attention")(feats_low[-1], feats_high[-1])
        feats_low[-1] = feats_low[-1] + z_low
        feats_high[-1] = feats_high[-1] + z_high
        out = Decoder(channels, dtype=dt, name="decoder")(feats_low, feats_high)
        out = [o.astype(jnp.float32) for o in out]
        return RefinerOutput(*out)
