"""TFDS builder `irs` (see docs/datasets.md)."""
from sddr_jax_datasets.irs.irs_dataset_builder import Builder

__all__ = ["Builder"]
