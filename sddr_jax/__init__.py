"""sddr-jax: Self-Distilled Depth Refinement (SDDR, NeurIPS 2024) in JAX/Flax.

    import sddr_jax
    params, model_config = sddr_jax.load_refiner("model_dict_1_5600.pt")
    refined = sddr_jax.refine_one_stage(params, low, high, size=1024, model_config=model_config)

The top-level names are imported on first use, so `import sddr_jax` (and the CLI) start without JAX.
"""
import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "refine_one_stage": "sddr_jax.inference.one_stage",
    "refine_two_stage": "sddr_jax.inference.two_stage",
    "load_refiner": "sddr_jax.checkpoints",
    "build_refiner": "sddr_jax.models.refiner",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'sddr_jax' has no attribute {name!r}")
