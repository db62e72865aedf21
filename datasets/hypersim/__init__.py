"""TFDS builder `hypersim` (see docs/datasets.md)."""
from sddr_jax_datasets.hypersim.hypersim_dataset_builder import Builder

__all__ = ["Builder"]
