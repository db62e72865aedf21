"""Checkpoint converters: the official refiner `.pt` (official.py), Depth Anything V2 (depth_anything.py), and
the torch-free `.pt` reader/writer they share (torch_pickle.py).

`from sddr_jax import convert; convert.load_params(path)` etc. are the official refiner's converter.
"""
from sddr_jax.convert.official import *  # noqa: F401,F403 - the refiner converter is the package's API
from sddr_jax.convert.official import TRANSFORMS, __all__ as _official_all, key_report  # noqa: F401

__all__ = list(_official_all) + ["TRANSFORMS", "key_report"]
