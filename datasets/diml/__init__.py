"""TFDS builder `diml` (see docs/datasets.md)."""
from sddr_jax_datasets.diml.diml_dataset_builder import Builder

__all__ = ["Builder"]
