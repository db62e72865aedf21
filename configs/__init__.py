"""Experiment configs (`get_config(arg)` files), installed as `sddr_jax_configs` (see setup.py)."""
