"""TFDS builder `booster` (see docs/datasets.md)."""
from sddr_jax_datasets.booster.booster_dataset_builder import Builder

__all__ = ["Builder"]
