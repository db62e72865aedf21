"""TFDS builder `mvs_synth` (see docs/datasets.md)."""
from sddr_jax_datasets.mvs_synth.mvs_synth_dataset_builder import Builder

__all__ = ["Builder"]
