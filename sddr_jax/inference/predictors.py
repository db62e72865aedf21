"""Base depth predictors behind one protocol: `predict(image, size) -> depth` (docs/method.md §1, §5).

A predictor maps an image batch `(B, H, W, C)` and a static int `size` to `(B, size, size, 1)`: the
prediction for the image squarely resized to size x size. The coarse-to-fine pipelines call it on window
crops at adaptive resolutions, so a predictor must accept any H x W.

Three kinds:

* `PrecomputedPredictor` - low/high maps computed elsewhere (LeReS, MiDaS, ZoeDepth files). The maps travel
  in the image argument as two channels (see `stack_maps`), so window crops of them work like crops of RGB.
* `SimulatedPredictor` - the noise model of the toolkit applied to ground truth (`image` = GT depth
  `(B, H, W, 1)`), jittable, with a fixed PRNG key so repeated calls agree.
* `ModelPredictor` - any JAX model given as `apply_fn(params, x)` with its preprocessing.

The classes are `flax.struct` pytrees: arrays (params, keys) are leaves and are traced when a pipeline jits
over them; functions and settings are static. A plain function `f(image, size)` is a valid predictor too.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol, runtime_checkable

import flax.struct
import jax
import jax.numpy as jnp

from sddr_jax.errors import UserError
from sddr_jax.ops import resize_bilinear, resize_nearest

Array = jax.Array

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@runtime_checkable
class Predictor(Protocol):
    """The predictor protocol: `predict(image (B, H, W, C), size: int) -> (B, size, size, 1)` float32."""

    def __call__(self, image: Array, size: int) -> Array: ...


def _check_image(image: Any, name: str, channels: int | None = None) -> None:
    shape = tuple(getattr(image, "shape", ()))
    if len(shape) != 4 or (channels is not None and shape[-1] != channels):
        want = "(B, H, W, C)" if channels is None else f"(B, H, W, {channels})"
        raise UserError(f"{name}: expected image {want}, got shape {shape}")


def _check_size(size: Any, name: str) -> int:
    if isinstance(size, bool) or int(size) != size or int(size) < 1:
        raise UserError(f"{name}: size must be a positive static int, got {size!r}")
    return int(size)


_RESIZERS = {"bilinear": resize_bilinear, "nearest": resize_nearest}


def stack_maps(low: Array, high: Array, height: int, width: int, method: str = "bilinear") -> Array:
    """Stack precomputed low / high maps into the (B, H, W, 2) 'image' of `PrecomputedPredictor`.

    Each map `(B, h, w, 1)` (any size) is resized to height x width (R_bilinear_torch by default, or
    'nearest'); channel 0 holds the low map, channel 1 the high map.
    """
    if method not in _RESIZERS:
        raise UserError(f"stack_maps: method must be one of {sorted(_RESIZERS)}, got {method!r}")
    for name, m in (("low", low), ("high", high)):
        _check_image(m, f"stack_maps {name}", 1)
    if low.shape[0] != high.shape[0]:
        raise UserError(f"stack_maps: low and high batch sizes differ: {low.shape[0]} vs {high.shape[0]}")
    resize = _RESIZERS[method]
    hw = (int(height), int(width))
    maps = [resize(jnp.asarray(m, jnp.float32), hw) for m in (low, high)]
    return jnp.concatenate(maps, axis=-1)


@flax.struct.dataclass
class PrecomputedPredictor:
    """Serves precomputed maps: `image` = `stack_maps(low, high, H, W)` (B, H, W, 2).

    `predict(image, size)` returns the low channel for size <= `low_resolution` (the resolution the low map
    was predicted at, 448 for the official LeReS demo), else the high channel, resized to size x size with
    R_bilinear_torch. On a window crop this is the crop of the stored map - an approximation of running the
    predictor on the window (the stored maps were predicted on the whole image).
    """

    low_resolution: int = flax.struct.field(pytree_node=False, default=448)

    def __call__(self, image: Array, size: int) -> Array:
        _check_image(image, "PrecomputedPredictor", 2)
        size = _check_size(size, "PrecomputedPredictor")
        channel = 0 if size <= self.low_resolution else 1
        return resize_bilinear(image[..., channel : channel + 1].astype(jnp.float32), (size, size))


@flax.struct.dataclass
class SimulatedPredictor:
    """The simulated predictor of the toolkit (docs/method.md §7): `image` = ground-truth depth (B, H, W, 1),
    or (B, H, W, 4) = depth followed by the RGB image in [0, 1] (needed by the `texture` option).

    Calls `sddr_jax.noise.simulated_predict(gt, size, key, rgb=..., **options)` with the fixed `key` (a leaf,
    so a new key does not recompile) and the static `options` (keyword arguments of simulated_predict as a
    tuple of (name, value) pairs; use `SimulatedPredictor.create(key, **options)`). `with_key(k)` is the
    same predictor with another key: the label pass gives every window of an example its own key, folded
    from the key that made that example's low/high maps.
    """

    key: Array
    options: tuple = flax.struct.field(pytree_node=False, default=())

    @classmethod
    def create(cls, key: Array, **options: Any) -> "SimulatedPredictor":
        return cls(key=key, options=tuple(sorted(options.items())))

    def with_key(self, key: Array) -> "SimulatedPredictor":
        return self.replace(key=key)

    def __call__(self, image: Array, size: int) -> Array:
        from sddr_jax import noise

        _check_image(image, "SimulatedPredictor (ground-truth depth [+ RGB])")
        if image.shape[-1] not in (1, 4):
            raise UserError(f"SimulatedPredictor: expected (B, H, W, 1) depth or (B, H, W, 4) depth + RGB, got "
                            f"shape {tuple(image.shape)}")
        size = _check_size(size, "SimulatedPredictor")
        rgb = image[..., 1:] if image.shape[-1] == 4 else None
        out = noise.simulated_predict(image[..., :1], size, self.key, rgb=rgb, **dict(self.options))
        return jnp.asarray(out, jnp.float32).reshape(image.shape[0], size, size, 1)


def _to_nhwc1(y: Array, batch: int, name: str) -> Array:
    if y.ndim == 3:
        y = y[..., None]
    if y.ndim != 4 or y.shape[0] != batch or y.shape[-1] != 1:
        raise UserError(
            f"{name}: apply_fn must return (B, h, w) or (B, h, w, 1) depth, got shape {tuple(y.shape)}"
        )
    return y


@flax.struct.dataclass
class ModelPredictor:
    """Any JAX depth model: `apply_fn(params, x) -> depth` with x the preprocessed (B, size, size, C) image.

    Preprocessing: resize to size x size (`resize`: 'bilinear' = R_bilinear_torch, or 'nearest'), then
    (x - mean) / std per channel (`mean=None` skips it; ImageNet statistics by default), then the optional
    static `preprocess(x)`. The output (B, h, w) or (B, h, w, 1) is resized to size x size when the model
    returns another size, and `postprocess(y)` (e.g. disparity -> depth) is applied last.
    """

    params: Any
    apply_fn: Callable[[Any, Array], Array] = flax.struct.field(pytree_node=False)
    mean: tuple[float, ...] | None = flax.struct.field(pytree_node=False, default=IMAGENET_MEAN)
    std: tuple[float, ...] | None = flax.struct.field(pytree_node=False, default=IMAGENET_STD)
    resize: str = flax.struct.field(pytree_node=False, default="bilinear")
    preprocess: Callable[[Array], Array] | None = flax.struct.field(pytree_node=False, default=None)
    postprocess: Callable[[Array], Array] | None = flax.struct.field(pytree_node=False, default=None)

    def __call__(self, image: Array, size: int) -> Array:
        _check_image(image, "ModelPredictor")
        size = _check_size(size, "ModelPredictor")
        if self.resize not in _RESIZERS:
            raise UserError(f"ModelPredictor: resize must be one of {sorted(_RESIZERS)}, got {self.resize!r}")
        x = _RESIZERS[self.resize](jnp.asarray(image, jnp.float32), (size, size))
        if self.mean is not None:
            if len(self.mean) != x.shape[-1] or self.std is None or len(self.std) != x.shape[-1]:
                raise UserError(
                    f"ModelPredictor: mean/std need one value per channel ({x.shape[-1]}), "
                    f"got {self.mean} / {self.std}"
                )
            x = (x - jnp.asarray(self.mean, x.dtype)) / jnp.asarray(self.std, x.dtype)
        if self.preprocess is not None:
            x = self.preprocess(x)
        y = jnp.asarray(self.apply_fn(self.params, x), jnp.float32)
        y = _to_nhwc1(y, image.shape[0], "ModelPredictor")
        if y.shape[1:3] != (size, size):
            y = resize_bilinear(y, (size, size))
        if self.postprocess is not None:
            y = self.postprocess(y)
        return y


# ----------------------------------------------------------------------------------------------------
# the predictor registry: names for the CLI (`sddr-jax refine --predictor NAME`) and for `make_predictor`

# factory(weights, **options) -> predictor; options: output ("depth" | "disparity") and dtype.
PredictorFactory = Callable[..., Any]
_REGISTRY: dict[str, PredictorFactory] = {}


def register_predictor(name: str, factory: PredictorFactory, *, overwrite: bool = False) -> None:
    """Register `factory(weights, **options) -> predictor` under `name` (for `make_predictor` and the CLI).

    `weights` is the path the user gave (or None); `options` are the keyword arguments `output` ("depth":
    larger = farther, the official LeReS convention the refiner was trained on; "disparity") and `dtype`
    (None or jnp.bfloat16), which a factory may ignore. The predictor must follow the predictor protocol.
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise UserError(f"register_predictor: name must be a non-empty string without ':', got {name!r}")
    if not callable(factory):
        raise UserError(f"register_predictor {name!r}: factory must be callable, got {type(factory).__name__}")
    if name in _REGISTRY and not overwrite:
        raise UserError(f"register_predictor: {name!r} is already registered (pass overwrite=True to replace it)")
    _REGISTRY[name] = factory


def predictor_names() -> list[str]:
    """The registered predictor names."""
    return sorted(_REGISTRY)


def _import_factory(spec: str) -> PredictorFactory:
    import importlib

    module, _, attr = spec.partition(":")
    try:
        obj = importlib.import_module(module)
    except ImportError as e:
        raise UserError(f"predictor {spec!r}: cannot import module {module!r} ({e})") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"predictor {spec!r}: module {module!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"predictor {spec!r}: {attr!r} is not callable")
    return obj


def make_predictor(name: str, weights: str | None = None, **options: Any) -> Any:
    """The predictor registered as `name` (`predictor_names()`), or built by `"package.module:factory"`,
    called as factory(weights, **options)."""
    if ":" in str(name):
        factory = _import_factory(str(name))
    elif name in _REGISTRY:
        factory = _REGISTRY[name]
    else:
        raise UserError(f"predictor {name!r}: expected one of {predictor_names()} or 'package.module:factory'")
    predictor = factory(weights, **options)
    if not callable(predictor):
        raise UserError(f"predictor {name!r}: its factory returned {type(predictor).__name__}, not a predictor "
                        "predict(image, size)")
    return predictor


def _depth_anything_factory(size: str | None) -> PredictorFactory:
    name = "depth-anything-v2" + (f"-{size}" if size else "")

    def factory(weights: str | None = None, *, output: str = "depth", dtype: Any = None) -> Any:
        if not weights:
            raise UserError(f"predictor {name!r}: needs its weights (a model.safetensors or .pth file, "
                            "--predictor-weights)")
        from sddr_jax.convert.depth_anything import load_depth_anything
        from sddr_jax.models.depth_anything import get_config

        converted = load_depth_anything(weights)
        if size is not None:
            wanted = get_config(size)
            if (converted.config.dim, converted.config.depth) != (wanted.dim, wanted.depth):
                raise UserError(f"predictor weights {weights}: hold a {converted.config.name!r} model, not {name!r}")
        return converted.predictor(output=output, dtype=dtype)

    return factory


# Depth Anything V2 (JAX port): the sized names check the weights; "depth-anything-v2" takes any size.
for _size in (None, "small", "base", "large"):
    register_predictor("depth-anything-v2" + (f"-{_size}" if _size else ""), _depth_anything_factory(_size))
del _size


__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Predictor",
    "stack_maps",
    "PrecomputedPredictor",
    "SimulatedPredictor",
    "ModelPredictor",
    "PredictorFactory",
    "register_predictor",
    "predictor_names",
    "make_predictor",
]
