"""TFDS builder `hrwsi` (see docs/datasets.md)."""
from sddr_jax_datasets.hrwsi.hrwsi_dataset_builder import Builder

__all__ = ["Builder"]
