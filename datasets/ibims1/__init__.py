"""TFDS builder `ibims1` (see docs/datasets.md)."""
from sddr_jax_datasets.ibims1.ibims1_dataset_builder import Builder

__all__ = ["Builder"]
