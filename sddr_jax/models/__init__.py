"""Flax (linen) modules of the SDDR refiner (docs/method.md §3)."""
from sddr_jax.models.cross_attention import CrossAttention, positional_encoding
from sddr_jax.models.decoder import Decoder, Mask, Up
from sddr_jax.models.depth_anything import DepthAnythingPredictor, DepthAnythingV2
from sddr_jax.models.mit import MIT_CONFIGS, MiTConfig, MixVisionTransformer, get_mit_config
from sddr_jax.models.refiner import (
    DEFAULT_MODEL_CONFIG,
    Refiner,
    RefinerOutput,
    build_refiner,
    check_params,
    check_refiner_inputs,
    model_config_dict,
    param_shapes,
    params_report,
)
from sddr_jax.models.stem import Down

__all__ = [
    "CrossAttention",
    "DEFAULT_MODEL_CONFIG",
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
    "build_refiner",
    "check_params",
    "check_refiner_inputs",
    "get_mit_config",
    "model_config_dict",
    "param_shapes",
    "params_report",
    "positional_encoding",
]
