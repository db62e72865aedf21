"""TFDS builder `sddr_synthetic` (see docs/datasets.md)."""
from sddr_jax_datasets.sddr_synthetic.sddr_synthetic_dataset_builder import Builder

__all__ = ["Builder"]
