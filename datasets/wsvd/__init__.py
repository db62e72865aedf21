"""TFDS builder `wsvd` (see docs/datasets.md)."""
from sddr_jax_datasets.wsvd.wsvd_dataset_builder import Builder

__all__ = ["Builder"]
