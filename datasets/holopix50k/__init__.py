"""TFDS builder `holopix50k` (see docs/datasets.md)."""
from sddr_jax_datasets.holopix50k.holopix50k_dataset_builder import Builder

__all__ = ["Builder"]
