"""TFDS builder `middlebury2021` (see docs/datasets.md)."""
from sddr_jax_datasets.middlebury2021.middlebury2021_dataset_builder import Builder

__all__ = ["Builder"]
