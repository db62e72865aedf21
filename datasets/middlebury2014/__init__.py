"""TFDS builder `middlebury2014` (see docs/datasets.md)."""
from sddr_jax_datasets.middlebury2014.middlebury2014_dataset_builder import Builder

__all__ = ["Builder"]
