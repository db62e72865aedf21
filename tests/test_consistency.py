"""Patch consistency error (sddr_jax/eval/consistency.py): closed-form cases and bad input."""
import numpy as np
import pytest

from sddr_jax.errors import UserError
from sddr_jax.eval.consistency import patch_consistency_error, patchwise_consistency_error
from sddr_jax.inference import Window

H, W = 8, 12
SCENE = np.arange(H * W, dtype=np.float64).reshape(H, W) / 10.0 + 1.0  # positive, non-constant
LEFT, RIGHT = Window(0, 8, 0, 8), Window(0, 8, 4, 12)  # overlap: rows 0..7, columns 4..7 (32 pixels)


def crop(a, w):
    return a[w.y0:w.y1, w.x0:w.x1]


def test_identical_overlaps_give_zero():
    assert patch_consistency_error([(LEFT, crop(SCENE, LEFT)), (RIGHT, crop(SCENE, RIGHT))], (H, W)) == 0.0


def test_constant_offset():
    ce = patch_consistency_error([(LEFT, crop(SCENE, LEFT)), (RIGHT, crop(SCENE, RIGHT) + 0.75)], (H, W))
    assert ce == pytest.approx(0.75)
    # A shift is absorbed by the scale-and-shift alignment.
    assert patch_consistency_error([(LEFT, crop(SCENE, LEFT)), (RIGHT, crop(SCENE, RIGHT) + 0.75)], (H, W),
                                   align="scale_shift") == pytest.approx(0.0, abs=1e-9)


def test_known_scale():
    k = 1.5
    ce = patch_consistency_error([(LEFT, crop(SCENE, LEFT)), (RIGHT, k * crop(SCENE, RIGHT))], (H, W))
    overlap = SCENE[:, 4:8]
    assert ce == pytest.approx((k - 1) * overlap.mean())  # mean |P - kP| = (k-1) mean P for P > 0
    assert patch_consistency_error([(LEFT, crop(SCENE, LEFT)), (RIGHT, k * crop(SCENE, RIGHT))], (H, W),
                                   align="scale") == pytest.approx(0.0, abs=1e-9)


def test_global_shift_invariance_and_scale_equivariance():
    rng = np.random.default_rng(0)
    patches = [(LEFT, crop(SCENE, LEFT) + rng.normal(0, 0.1, LEFT.shape)),
               (RIGHT, crop(SCENE, RIGHT) + rng.normal(0, 0.1, RIGHT.shape))]
    ce = patch_consistency_error(patches, (H, W))
    assert ce > 0
    shifted = [(w, p + 3.0) for w, p in patches]
    scaled = [(w, 2.0 * p) for w, p in patches]
    assert patch_consistency_error(shifted, (H, W)) == pytest.approx(ce)
    assert patch_consistency_error(scaled, (H, W)) == pytest.approx(2.0 * ce)


def test_pair_and_pixel_reductions():
    # Three patches: A-B overlap 32 px with offset 1; B-C overlap 8 px (rows 6..7, columns 4..7) with offset 2;
    # A-C overlap 16 px (rows 6..7, columns 0..7) with offset 3.
    a, b, c = Window(0, 8, 0, 8), Window(0, 8, 4, 12), Window(6, 8, 0, 8)
    patches = [(a, crop(SCENE, a)), (b, crop(SCENE, b) + 1.0), (c, crop(SCENE, c) + 3.0)]
    # B-C overlap is rows 6..7 x columns 4..7: 8 pixels, |(x+1) - (x+3)| = 2.
    assert patch_consistency_error(patches, (H, W), reduction="pair") == pytest.approx((1 + 3 + 2) / 3)
    assert patch_consistency_error(patches, (H, W), reduction="pixel") == pytest.approx(
        (32 * 1 + 16 * 3 + 8 * 2) / (32 + 16 + 8))


def test_valid_mask_restricts_the_overlap():
    right = crop(SCENE, RIGHT).copy()
    right[:, 0] += 10.0  # column 4 of the image disagrees by 10, the other overlap columns agree
    patches = [(LEFT, crop(SCENE, LEFT)), (RIGHT, right)]
    assert patch_consistency_error(patches, (H, W)) == pytest.approx(10.0 / 4)
    valid = np.ones((H, W), bool)
    valid[:, 4] = False
    assert patch_consistency_error(patches, (H, W), valid=valid) == pytest.approx(0.0)


def test_patchwise_helper_with_a_predictor():
    image = np.zeros((H, W, 3), np.uint8)
    calls = []

    def predict(crop_rgb):
        calls.append(crop_rgb.shape)
        return np.full(crop_rgb.shape[:2], float(len(calls)))  # each patch a different constant: 1, 2

    assert patchwise_consistency_error(predict, image, [LEFT, RIGHT]) == pytest.approx(1.0)
    assert calls == [(8, 8, 3), (8, 8, 3)]


@pytest.mark.parametrize("patches, shape, kwargs, match", [
    ([(LEFT, crop(SCENE, LEFT))], (H, W), {}, "patches: need at least two"),
    ([(LEFT, crop(SCENE, LEFT)), (Window(0, 8, 8, 12), crop(SCENE, Window(0, 8, 8, 12)))], (H, W), {},
     "patches: no two of the 2 windows overlap"),
    ([(LEFT, crop(SCENE, LEFT)), (Window(0, 9, 4, 12), np.zeros((9, 8)))], (H, W), {},
     r"patches\[1\] window: .* outside the 8x12"),
    ([(LEFT, crop(SCENE, LEFT)), (RIGHT, np.zeros((8, 7)))], (H, W), {}, r"patches\[1\] prediction: expected shape"),
    ([(LEFT, crop(SCENE, LEFT)), (Window(0, 8, 6, 4), np.zeros((8, 2)))], (H, W), {}, r"patches\[1\] window: empty"),
    ([(LEFT, crop(SCENE, LEFT)), ("abc", np.zeros((8, 8)))], (H, W), {}, r"patches\[1\] window: expected"),
    ([(LEFT, crop(SCENE, LEFT)), (RIGHT, np.full((8, 8), np.nan))], (H, W), {}, "non-finite"),
    ([(LEFT, crop(SCENE, LEFT)), (RIGHT, crop(SCENE, RIGHT))], (H, W), {"align": "affine"}, "align:"),
    ([(LEFT, crop(SCENE, LEFT)), (RIGHT, crop(SCENE, RIGHT))], (H, W), {"reduction": "sum"}, "reduction:"),
    ([(LEFT, crop(SCENE, LEFT)), (RIGHT, crop(SCENE, RIGHT))], (H, W), {"valid": np.ones((2, 2), bool)}, "valid:"),
    ([(LEFT, crop(SCENE, LEFT)), (RIGHT, crop(SCENE, RIGHT))], (H, W), {"valid": np.zeros((H, W), bool)},
     "valid: no valid pixel"),
    ([(LEFT, crop(SCENE, LEFT)), (RIGHT, crop(SCENE, RIGHT))], (0, W), {}, "image_shape:"),
])
def test_bad_input_names_the_argument(patches, shape, kwargs, match):
    with pytest.raises(UserError, match=match):
        patch_consistency_error(patches, shape, **kwargs)


def test_helper_bad_input():
    with pytest.raises(UserError, match="predict:"):
        patchwise_consistency_error(None, np.zeros((H, W)), [LEFT, RIGHT])
    with pytest.raises(UserError, match="image:"):
        patchwise_consistency_error(lambda c: c, np.zeros((H,)), [LEFT, RIGHT])
    with pytest.raises(UserError, match=r"windows\[1\]: .* outside"):
        patchwise_consistency_error(lambda c: c, np.zeros((H, W)), [LEFT, Window(0, 8, 4, 13)])
