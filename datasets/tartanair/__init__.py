"""TFDS builder `tartanair` (see docs/datasets.md)."""
from sddr_jax_datasets.tartanair.tartanair_dataset_builder import Builder

__all__ = ["Builder"]
