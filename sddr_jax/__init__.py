"""sddr-jax: Self-Distilled Depth Refinement (SDDR, NeurIPS 2024) in JAX/Flax."""

__version__ = "0.1.0"
