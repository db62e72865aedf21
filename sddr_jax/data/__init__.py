"""Data: the dataset registry (TFDS builders of datasets/), the grain input pipeline, and the synthetic
scene generator (docs/method.md §10)."""
