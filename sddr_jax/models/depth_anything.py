"""Depth Anything V2 (DINOv2 encoder + DPT head) in Flax linen, and `DepthAnythingPredictor`.

A JAX-native base predictor for the SDDR pipelines (docs/method.md §1: pluggable predictors; docs/method.md §5: the predictor is
called at a low and a high resolution, and on windows at an adaptive resolution). The network follows the
original Depth Anything V2 repository (`depth_anything_v2/dpt.py`); the Hugging Face
`DepthAnythingForDepthEstimation` computes the same network (see `pos_embed_mode` for the one difference).

The network outputs *relative inverse depth* (disparity-like: larger = nearer), ReLU'd, at 14 * grid
resolution. `DepthAnythingPredictor` wraps it in the predictor protocol of `docs/architecture.md`.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sddr_jax.errors import UserError
from sddr_jax.models.dinov2 import PATCH_SIZE, POS_EMBED_MODES, DinoV2, cubic_half_pixel_taps
from sddr_jax.models.dpt import DPTHead, resize_bilinear_align_corners

Array = jax.Array

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
REFERENCE_INPUT_SIZE = 518  # the training resolution; the original `infer_image` default
OUTPUTS = ("disparity", "depth")


@dataclasses.dataclass(frozen=True)
class DepthAnythingConfig:
    """One Depth Anything V2 size. `out_indices` are 0-based block indices (original `intermediate_layer_idx`)."""

    name: str
    dim: int
    depth: int
    num_heads: int
    out_indices: tuple[int, ...]
    features: int
    out_channels: tuple[int, int, int, int]
    licence: str
    mlp_ratio: float = 4.0
    pretrain_grid: int = 37  # side of the stored position-embedding grid: 518 / 14
    head_hidden: int = 32  # channels of the last 3x3 conv of the head (HF `head_hidden_size`)


CONFIGS: dict[str, DepthAnythingConfig] = {
    "small": DepthAnythingConfig("small", 384, 12, 6, (2, 5, 8, 11), 64, (48, 96, 192, 384), "Apache-2.0"),
    "base": DepthAnythingConfig("base", 768, 12, 12, (2, 5, 8, 11), 128, (96, 192, 384, 768), "CC-BY-NC-4.0"),
    "large": DepthAnythingConfig("large", 1024, 24, 16, (4, 11, 17, 23), 256, (256, 512, 1024, 1024), "CC-BY-NC-4.0"),
}
# Names accepted by the CLI (`--model`) and `get_config`.
MODEL_NAMES = {f"depth-anything-v2-{k}": k for k in CONFIGS} | {f"vit{k[0]}": k for k in CONFIGS} | {k: k for k in CONFIGS}


def get_config(name: str | DepthAnythingConfig) -> DepthAnythingConfig:
    """A size's config from "small"/"base"/"large", "vits"/"vitb"/"vitl" or "depth-anything-v2-small" etc."""
    if isinstance(name, DepthAnythingConfig):
        return name
    key = MODEL_NAMES.get(str(name).lower())
    if key is None:
        raise UserError(f"model {name!r}: expected one of {sorted(MODEL_NAMES)}")
    return CONFIGS[key]


class DepthAnythingV2(nn.Module):
    """Depth Anything V2: (B, H, W, 3) ImageNet-normalised RGB, H and W multiples of 14 -> (B, H, W, 1).

    Returns relative inverse depth (ReLU'd, float32). `dtype=jnp.bfloat16` runs the matmuls and convolutions
    in bf16 (parameters, LayerNorm statistics and softmax stay float32). `pos_embed_mode` picks the
    position-embedding interpolation: "hf" (Hugging Face, exact size) or "original" (original repository,
    scale factor with the +0.1 offset); they agree at the 518 x 518 training grid.
    """

    config: DepthAnythingConfig = CONFIGS["small"]
    pos_embed_mode: str = "hf"
    dtype: Any = None

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c = self.config
        tokens = DinoV2(
            dim=c.dim, depth=c.depth, num_heads=c.num_heads, mlp_ratio=c.mlp_ratio, out_indices=c.out_indices,
            pretrain_grid=c.pretrain_grid, pos_embed_mode=self.pos_embed_mode, dtype=self.dtype, name="pretrained",
        )(x)
        depth = DPTHead(
            features=c.features, out_channels=c.out_channels, head_features_2=c.head_hidden, dtype=self.dtype,
            name="depth_head",
        )(tokens)
        return depth.astype(jnp.float32)


def init_params(config: str | DepthAnythingConfig, seed: int = 0) -> dict:
    """Random float32 numpy parameters for tests and benchmarks (real weights come from the converter).

    Built on the host from the abstract parameter shapes, so nothing is compiled: kernels ~ N(0, 1/fan_in),
    biases ~ N(0, 0.01^2), cls/position embeddings ~ N(0, 0.02^2), LayerNorm scales and layer scales 1.
    """
    config = get_config(config)
    model = DepthAnythingV2(config)
    x = jax.ShapeDtypeStruct((1, PATCH_SIZE, PATCH_SIZE, 3), jnp.float32)
    shapes = jax.eval_shape(lambda x: model.init(jax.random.PRNGKey(0), x), x)["params"]
    rng = np.random.default_rng(seed)

    def leaf(path, s):
        name = path[-1].key
        shape = tuple(s.shape)
        if name in ("scale", "gamma"):
            return np.ones(shape, np.float32)
        if name == "bias":
            return (0.01 * rng.standard_normal(shape)).astype(np.float32)
        if name in ("cls_token", "pos_embed"):
            return (0.02 * rng.standard_normal(shape)).astype(np.float32)
        fan_in = int(np.prod(shape[:-1]))
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    return jax.tree_util.tree_map_with_path(leaf, shapes)


# ----------------------------------------------------------------------------------------------------
# preprocessing


def net_input_size(size: int) -> int:
    """The network resolution used for a requested square `size`: the smallest multiple of 14 >= size.

    This is the reference's rule for a square target (its `Resize(..., ensure_multiple_of=14,
    resize_method="lower_bound")` rounds to the nearest multiple and takes the next one up when that falls
    below the target), e.g. 518 -> 518, 448 -> 448, 1024 -> 1036, 1920 -> 1932.
    """
    if int(size) != size or size < 1:
        raise UserError(f"size: expected a positive integer, got {size!r}")
    return PATCH_SIZE * math.ceil(int(size) / PATCH_SIZE)


def reference_input_hw(height: int, width: int, input_size: int = REFERENCE_INPUT_SIZE) -> tuple[int, int]:
    """The original `infer_image` resize rule: keep the aspect ratio, both sides >= input_size, multiples of 14.

    Port of `Resize(width=input_size, height=input_size, keep_aspect_ratio=True, ensure_multiple_of=14,
    resize_method="lower_bound")`: scale = max(input_size / h, input_size / w); each side is rounded to the
    nearest multiple of 14 (numpy's round-half-to-even) and taken up to the next multiple if below input_size.
    """
    scale = max(input_size / height, input_size / width)

    def constrain(x: float) -> int:
        y = int(np.round(x / PATCH_SIZE) * PATCH_SIZE)
        if y < input_size:
            y = int(np.ceil(x / PATCH_SIZE) * PATCH_SIZE)
        return y

    return constrain(scale * height), constrain(scale * width)


def resize_cubic(x: Array, out_hw: tuple[int, int]) -> Array:
    """OpenCV `INTER_CUBIC` (= PyTorch bicubic, align_corners=False, no antialias) for NHWC arrays, in JAX.

    Half-pixel centres, a = -0.75, border taps clamped; no clipping of the over/undershoot (as OpenCV on
    float images). The tap tables are static, so this jits and vmaps.
    """
    for axis, out_size in ((1, int(out_hw[0])), (2, int(out_hw[1]))):
        in_size = x.shape[axis]
        if in_size == out_size:
            continue
        idx, w = cubic_half_pixel_taps(in_size, out_size)
        shape = [1] * x.ndim
        shape[axis] = out_size
        acc = None
        for k in range(4):
            term = jnp.take(x, idx[:, k], axis=axis) * jnp.asarray(w[:, k], jnp.float32).reshape(shape)
            acc = term if acc is None else acc + term
        x = acc
    return x


def normalize_image(image: Array) -> Array:
    """RGB in [0, 1] -> ImageNet-normalised ((x - mean) / std), any leading shape, channels last."""
    mean = jnp.asarray(IMAGENET_MEAN, jnp.float32)
    std = jnp.asarray(IMAGENET_STD, jnp.float32)
    return (image - mean) / std


def preprocess_reference(rgb: np.ndarray, input_size: int = REFERENCE_INPUT_SIZE) -> np.ndarray:
    """The original `image2tensor` on the host: (H, W, 3) RGB in [0, 1] -> (1, h', w', 3) float32 network input.

    OpenCV cubic resize to `reference_input_hw` (in float64 as the reference, which divides uint8 by 255.0),
    then ImageNet normalisation. NHWC instead of the reference's NCHW.
    """
    import cv2

    rgb = np.asarray(rgb, np.float64)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise UserError(f"rgb: expected an (H, W, 3) image, got shape {rgb.shape}")
    h, w = reference_input_hw(rgb.shape[0], rgb.shape[1], input_size)
    resized = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_CUBIC)
    out = (resized - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
    return out.astype(np.float32)[None]


# ----------------------------------------------------------------------------------------------------
# the predictor


@functools.partial(jax.jit, static_argnames=("config", "pos_embed_mode", "dtype", "out_hw"))
def _infer_normalized(params, x, config, pos_embed_mode, dtype, out_hw):
    y = DepthAnythingV2(config, pos_embed_mode=pos_embed_mode, dtype=dtype).apply({"params": params}, x)
    return resize_bilinear_align_corners(y, out_hw)


@jax.tree_util.register_pytree_node_class
class DepthAnythingPredictor:
    """Depth Anything V2 as an SDDR predictor: `predictor(image, size) -> (B, size, size, 1)` float32.

    Args:
      params: Flax parameters of `DepthAnythingV2` (from `sddr_jax.convert.depth_anything`).
      config: "small" / "base" / "large" (or any `get_config` name) or a `DepthAnythingConfig`.
      output: "disparity" (default): the network's relative inverse depth (larger = nearer), like MiDaS;
        "depth": the per-image flip max(d) - d (larger = farther, as LeReS), an order-reversing affine map
        (a true 1/d needs the unknown shift of a relative disparity; the SDDR refiner and the scale-shift
        alignments are affine-invariant per map, so the flip loses nothing they use).
      dtype: None / jnp.float32, or jnp.bfloat16 for bf16 matmuls and convolutions.
      pos_embed_mode: "hf" (default, Hugging Face weights) or "original" (original `.pth` weights); the
        converter returns the mode matching the file it read.

    `image` is (B, H, W, 3) RGB in [0, 1]. The call resizes it squarely to n x n with OpenCV-equivalent
    bicubic, n = `net_input_size(size)` (the smallest multiple of 14 >= size), applies ImageNet
    normalisation, runs the network and, when n != size, resizes the (n, n) output to (size, size) with
    bilinear align_corners=True (the reference's rule for resizing its output). `size` must be a static int.

    The predictor is a pytree (its parameters are the leaves; the rest is static), so it can be passed
    through `jax.jit` / `vmap` as an argument or closed over; the call is a pure function.
    """

    def __init__(
        self,
        params: Mapping,
        config: str | DepthAnythingConfig = "small",
        *,
        output: str = "disparity",
        dtype: Any = None,
        pos_embed_mode: str = "hf",
    ):
        if output not in OUTPUTS:
            raise UserError(f"output: expected one of {OUTPUTS}, got {output!r}")
        if pos_embed_mode not in POS_EMBED_MODES:
            raise UserError(f"pos_embed_mode: expected one of {POS_EMBED_MODES}, got {pos_embed_mode!r}")
        if dtype is not None and jnp.dtype(dtype) not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
            raise UserError(f"dtype: expected None, float32 or bfloat16, got {dtype!r}")
        self.params = params
        self.config = get_config(config)
        self.output = output
        self.dtype = None if dtype is None or jnp.dtype(dtype) == jnp.float32 else jnp.bfloat16
        self.pos_embed_mode = pos_embed_mode
        if "pretrained" not in params or "depth_head" not in params:
            raise UserError("params: expected a Depth Anything V2 tree with 'pretrained' and 'depth_head'")
        dim = params["pretrained"]["cls_token"].shape[-1]
        if dim != self.config.dim:
            raise UserError(f"params: embedding width {dim} does not match config {self.config.name!r} ({self.config.dim})")

    # pytree protocol: params are children, the rest is static
    def tree_flatten(self):
        return (self.params,), (self.config, self.output, self.dtype, self.pos_embed_mode)

    @classmethod
    def tree_unflatten(cls, aux, children):
        obj = object.__new__(cls)
        obj.params = children[0]
        obj.config, obj.output, obj.dtype, obj.pos_embed_mode = aux
        return obj

    def _model_fn(self, x: Array, out_hw: tuple[int, int]) -> Array:
        return _infer_normalized(self.params, x, self.config, self.pos_embed_mode, self.dtype, out_hw)

    def _finish(self, d: Array) -> Array:
        if self.output == "depth":
            d = jnp.max(d, axis=(-3, -2, -1), keepdims=True) - d
        return d

    def __call__(self, image: Array, size: int) -> Array:
        if not isinstance(size, (int, np.integer)) or isinstance(size, bool):
            raise UserError(f"size: expected a static Python int, got {type(size).__name__}")
        if image.ndim != 4 or image.shape[-1] != 3:
            raise UserError(f"image: expected (B, H, W, 3) RGB in [0, 1], got shape {image.shape}")
        n = net_input_size(int(size))
        x = normalize_image(resize_cubic(image.astype(jnp.float32), (n, n)))
        return self._finish(self._model_fn(x, (int(size), int(size))))

    def infer_image(self, rgb: np.ndarray, input_size: int = REFERENCE_INPUT_SIZE) -> np.ndarray:
        """The original `infer_image` on one (H, W, 3) RGB image in [0, 1]: keep-aspect resize (host OpenCV,
        `reference_input_hw`), network, bilinear (align_corners=True) back to (H, W). Returns (H, W) float32,
        transformed by `output`. Compiles once per network input shape."""
        x = preprocess_reference(rgb, input_size)
        d = self._model_fn(jnp.asarray(x), (rgb.shape[0], rgb.shape[1]))
        return np.asarray(self._finish(d))[0, ..., 0]

    def __repr__(self) -> str:
        return (f"DepthAnythingPredictor(config={self.config.name!r}, output={self.output!r}, "
                f"dtype={self.dtype}, pos_embed_mode={self.pos_embed_mode!r})")
