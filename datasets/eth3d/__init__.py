"""TFDS builder `eth3d` (see docs/datasets.md)."""
from sddr_jax_datasets.eth3d.eth3d_dataset_builder import Builder

__all__ = ["Builder"]
