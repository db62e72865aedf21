"""TFDS builder `diode` (see docs/datasets.md)."""
from sddr_jax_datasets.diode.diode_dataset_builder import Builder

__all__ = ["Builder"]
