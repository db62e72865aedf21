"""TFDS builder `vdw` (see docs/datasets.md)."""
from sddr_jax_datasets.vdw.vdw_dataset_builder import Builder

__all__ = ["Builder"]
