"""TFDS builder `multiscopic` (see docs/datasets.md)."""
from sddr_jax_datasets.multiscopic.multiscopic_dataset_builder import Builder

__all__ = ["Builder"]
