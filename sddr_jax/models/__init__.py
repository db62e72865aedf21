"""Flax (linen) modules of the SDDR refiner (spec 3)."""
from sddr_jax.models.cross_attention import CrossAttention, positional_encoding
from sddr_jax.models.decoder import Decoder, Mask, Up
from sddr_jax.models.depth_anything import DepthAnythingPredictor, DepthAnythingV2
from sddr_jax.models.mit import MIT_CONFIGS, MiTConfig, MixVisionTransformer, get_mit_config
from sddr_jax.models.refiner import Refiner, RefinerOutput, check_refiner_inputs
from sddr_jax.models.stem import Down

__all__ = [
    "CrossAttention",
    "Decoder",
    "DepthAnythingPredictor",
    "DepthAnythingV2",
    "Down",
    "MIT_CONFIGS",
    "Mask",
    "MiTConfig",
    "MixVisionTransformer",
    "Refiner",
    "RefinerOutput",
    "Up",
    "check_refiner_inputs",
    "get_mit_config",
    "positional_encoding",
]
