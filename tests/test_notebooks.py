"""The three Colab notebooks run headless with tiny parameters (papermill), as CI runs them.

Cells tagged `skip-execution` (the Colab install cell) are dropped first, as nbmake does; papermill injects
the parameters after the `parameters` cell. The reproduce notebook gets a synthetic checkpoint in the official
format (random weights, every official key) and a tiny demo folder, so its convert and refine parts really
run; its Middlebury part is skipped with its message (no data here).
"""
import pathlib

import numpy as np
import pytest
from PIL import Image

papermill = pytest.importorskip("papermill")
nbformat = pytest.importorskip("nbformat")

ROOT = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "colab"
pytestmark = pytest.mark.slow


def _run(name: str, tmp_path: pathlib.Path, **parameters) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert any("parameters" in t for t in tags), f"{name}: no parameters cell"
    assert any("skip-execution" in t for t in tags), f"{name}: no Colab install cell tagged skip-execution"
    nb.cells = [c for c, t in zip(nb.cells, tags) if "skip-execution" not in t]
    src = tmp_path / f"{name}.in.ipynb"
    nbformat.write(nb, src)
    out = tmp_path / f"{name}.out.ipynb"
    papermill.execute_notebook(str(src), str(out), parameters=parameters, cwd=str(tmp_path),
                               kernel_name="python3", progress_bar=False)
    return nbformat.read(out, as_version=4)


def _stdout(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                   if o.get("output_type") == "stream")


def test_reproduce_official(tmp_path, official_state):
    from sddr_jax.convert.torch_pickle import save_torch_file

    ckpt = tmp_path / "model_dict_1_5600.pt"
    save_torch_file({"net": official_state.official_state_dict(0)}, ckpt)
    demo = tmp_path / "demo"
    rng = np.random.default_rng(0)
    for sub in ("rgb", "LeRes/low_448", "LeRes/high_1920"):
        (demo / sub).mkdir(parents=True)
    for name in ("scene_l", "scene_r"):
        Image.fromarray(rng.integers(0, 255, (40, 64, 3), dtype=np.uint8)).save(demo / "rgb" / f"{name}.png")
        for sub, shape in (("LeRes/low_448", (28, 28)), ("LeRes/high_1920", (40, 64))):
            Image.fromarray(rng.integers(0, 65535, shape, dtype=np.uint16)).save(demo / sub / f"{name}.png")
    nb = _run("reproduce_official", tmp_path, checkpoint=str(ckpt), demo_dir=str(demo), middlebury_dir="",
              work_dir=str(tmp_path / "work"), size=128, max_images=0)
    out = _stdout(nb)
    assert "10,302,483 unique parameters" in out
    assert "refined 2 images" in out
    assert "SKIPPED (no Middlebury2021 data)" in out
    for name in ("scene_l", "scene_r"):
        with Image.open(tmp_path / "work" / "refined" / f"{name}.png") as im:
            assert im.size == (64, 40) and np.asarray(im).dtype == np.uint16


def test_reproduce_official_without_user_data_skips_cleanly(tmp_path):
    nb = _run("reproduce_official", tmp_path, checkpoint="", demo_dir="", middlebury_dir="",
              work_dir=str(tmp_path / "work"))
    out = _stdout(nb)
    assert "SKIPPED (no checkpoint)" in out and "SKIPPED (no demo inputs)" in out


def test_custom_loss(tmp_path):
    nb = _run("custom_loss", tmp_path, config_arg="tiny", workdir=str(tmp_path / "run"), num_steps=3)
    md = "".join(o.get("data", {}).get("text/markdown", "") for c in nb.cells for o in c.get("outputs", []))
    assert "edge-weighted loss" in md and "official loss" in md
    assert (tmp_path / "run" / "edge_weighted" / "result.json").is_file()


def test_train_self_distillation(tmp_path):
    # Runs after test_custom_loss (file order): by then the tiny CLI run of tests/test_train.py, on the other
    # xdist worker, has usually compiled the same tiny programs into the shared compilation cache.
    nb = _run("train_self_distillation", tmp_path, config_arg="tiny", workdir=str(tmp_path / "run"), num_panels=1)
    assert (tmp_path / "run" / "training_curve.png").is_file()
    assert len(list((tmp_path / "run" / "panels").glob("*.png"))) == 1
    md = "".join(o.get("data", {}).get("text/markdown", "") for c in nb.cells for o in c.get("outputs", []))
    assert "refined" in md and "δ1" in md
