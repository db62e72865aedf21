"""TFDS builder `unrealstereo4k` (see docs/datasets.md)."""
from sddr_jax_datasets.unrealstereo4k.unrealstereo4k_dataset_builder import Builder

__all__ = ["Builder"]
