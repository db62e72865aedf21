"""Evaluation: depth and edge metrics (metrics.py) and the one evaluation loop (evaluate.py) that training,
`sddr-jax evaluate` and the demo share (docs/method.md §9)."""
