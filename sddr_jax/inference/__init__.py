"""Inference: one-stage refinement (the official demo), two-stage coarse-to-fine refinement, the window grid
and the base-predictor protocol (docs/method.md §5)."""
from sddr_jax.inference.one_stage import DEFAULT_SIZE, RefinerFn, check_size, refine_one_stage, refiner_inference
from sddr_jax.inference.predictors import (
    ModelPredictor,
    PrecomputedPredictor,
    Predictor,
    SimulatedPredictor,
    stack_maps,
)
from sddr_jax.inference.two_stage import GLOBAL_SIZES, official_refiner, refine_two_stage
from sddr_jax.inference.windows import OFFICIAL_SCHEDULE, PAPER_SCHEDULE, Window, feather_mask, window_grid

__all__ = [
    "DEFAULT_SIZE", "GLOBAL_SIZES", "ModelPredictor", "OFFICIAL_SCHEDULE", "PAPER_SCHEDULE", "PrecomputedPredictor",
    "Predictor", "RefinerFn", "SimulatedPredictor", "Window", "check_size", "feather_mask", "official_refiner",
    "refine_one_stage", "refine_two_stage", "refiner_inference", "stack_maps", "window_grid",
]
