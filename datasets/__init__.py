"""TFDS builders of sddr-jax, importable as `sddr_jax_datasets.<name>` (see pyproject.toml)."""
