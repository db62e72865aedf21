"""Pictures: colour mapping values, invalid pixels, atomic and non-overwriting writes."""
import json

import matplotlib
import numpy as np
import pytest
from PIL import Image

from sddr_jax import viz


def test_colorize_maps_range_to_colormap_ends():
    ramp = np.linspace(2.0, 7.0, 11, dtype=np.float32).reshape(1, 11)
    rgb = viz.colorize(ramp, "viridis")
    cm = matplotlib.colormaps["viridis"]
    expect = (cm(np.linspace(0, 1, 11))[..., :3] * 255 + 0.5).astype(np.uint8)
    np.testing.assert_array_equal(rgb[0], expect)


def test_colorize_invalid_and_nan_are_black_and_constant_is_finite():
    d = np.array([[1.0, np.nan], [3.0, 4.0]])
    rgb = viz.colorize(d, valid=np.array([[True, True], [False, True]]))
    assert (rgb[0, 1] == 0).all() and (rgb[1, 0] == 0).all()
    assert rgb[1, 1].sum() > 0
    const = viz.colorize(np.full((3, 3), 5.0), "viridis")
    assert (const == const[0, 0]).all()


def test_save_panels_writes_png_and_refuses_overwrite(tmp_path):
    rng = np.random.default_rng(0)
    panels = {"rgb": rng.uniform(size=(16, 24, 3)), "low": rng.uniform(size=(16, 24, 1)),
              "error low": rng.uniform(size=(16, 24))}
    out = viz.save_panels(tmp_path / "p.png", panels, shared_range=("low",))
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > im.size[1]
    with pytest.raises(FileExistsError, match="already exists"):
        viz.save_panels(out, panels)
    viz.save_panels(out, panels, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["p.png"]  # no temporary file left behind


def test_save_panels_rejects_bad_shapes(tmp_path):
    with pytest.raises(ValueError, match="panel 'x'"):
        viz.save_panels(tmp_path / "p.png", {"x": np.zeros((2, 3, 4, 5))})


def test_training_curves_ignore_torn_last_line(tmp_path):
    log = tmp_path / "log.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0 / (s + 1), "phase": "gt" if s < 3 else "sd"}) for s in range(6)]
    log.write_text("\n".join(lines) + '\n{"step": 6, "lo')
    recs = viz.read_jsonl(log)
    assert [r["step"] for r in recs] == list(range(6))
    out = viz.plot_training_curves(recs, tmp_path / "curve.png")
    assert out.stat().st_size > 1000
