"""`configs/paper.py` end to end on the paper's training mixture (docs/datasets.md, docs/method.md §10).

Each of the eight training sets is built from a fake manual directory written from its documented layout (the
writers of the builder tests), the held-out set is a fake Middlebury 2021, and `sddr-jax train --config
configs/paper.py:tiny` trains on the mixture (S = 128, one cross-attention block, 2 L_gt steps then 2
self-distillation steps). The checkpoint is evaluated on fake Middlebury 2014, ETH3D and Booster with their
protocols. A copy of the run resumed from its step-2 checkpoint (model, optimizer, teacher and the mixture's
iterator state) ends bit-identical to it.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from test_datasets import fake_middlebury, fake_mvs_synth, fake_tartanair, fake_unrealstereo4k
from test_datasets_booster import fake_booster
from test_datasets_natural import fake_holopix, fake_vdw, fake_wsvd
from test_datasets_newer import fake_eth3d, fake_middlebury2014
from test_datasets_training import fake_ibims_mat, fake_irs

from sddr_jax.data import registry
from sddr_jax_configs.paper import PAPER_MIXTURE

REPO = Path(__file__).resolve().parents[1]

# name -> (fake writer, builder kwargs): every training set of the paper's mixture.
FAKES = {
    "holopix50k": (fake_holopix, {}), "ibims1": (fake_ibims_mat, {}), "wsvd": (fake_wsvd, {"frame_stride": 2}),
    "vdw": (fake_vdw, {"frame_stride": 2}), "tartanair": (fake_tartanair, {}), "irs": (fake_irs, {}),
    "unrealstereo4k": (fake_unrealstereo4k, {}), "mvs_synth": (fake_mvs_synth, {}),
}


def _cmd(workdir, data_dir):
    return [sys.executable, "-m", "sddr_jax", "train", "--config", str(REPO / "configs/paper.py") + ":tiny",
            "--workdir", str(workdir), f"--config.data.data_dir={data_dir}", "--config.data.image_size=128",
            "--config.model.cross_iterations=1", "--config.train.checkpoint_every=2",
            "--config.train.progress_bar=False", "--config.train.tensorboard=False"]


@pytest.mark.slow
def test_paper_recipe_trains_on_the_mixture_and_resumes(tmp_path):
    assert sorted(FAKES) == sorted(name for name, _, _ in PAPER_MIXTURE)
    data_dir = tmp_path / "data"
    for name, (fake, kwargs) in FAKES.items():
        manual = tmp_path / "manual" / name  # each writer makes its folders
        fake(manual)
        registry.build(name, data_dir, manual, **kwargs)
    manual = tmp_path / "manual" / "middlebury2021"
    manual.mkdir(parents=True)
    fake_middlebury(manual, legacy=False)
    registry.build("middlebury2021", data_dir, manual, "float")

    # The recipe's batch of 2 over 2 devices; the suite's persistent compilation cache and LLVM level
    # (tests/conftest.py).
    env = dict(os.environ, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(REPO),
               XLA_FLAGS="--xla_force_host_platform_device_count=2 --xla_backend_optimization_level=0")
    a = tmp_path / "a"
    r = subprocess.run(_cmd(a, data_dir), env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    log = [json.loads(line) for line in (a / "train.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in log] == [1, 2, 3, 4]
    assert [rec["phase"] for rec in log] == [1, 1, 2, 2]
    assert all(np.isfinite(rec["loss"]) for rec in log) and log[2]["l_local"] > 0
    result = json.loads((a / "result.json").read_text())
    assert 0 < result["eval"]["refined"]["delta1"] <= 1  # the held-out fake Middlebury 2021

    # The newer zero-shot benchmarks build from their fake layouts and evaluate the trained checkpoint with
    # their own protocols (docs/method.md §9.3a).
    from sddr_jax import cli

    for name, fake, split in (("middlebury2014", fake_middlebury2014, "test"), ("eth3d", fake_eth3d, "test"),
                              ("booster", fake_booster, "train")):
        manual = tmp_path / "manual" / name
        fake(manual)
        registry.build(name, data_dir, manual)
        report = tmp_path / f"eval_{name}"
        assert cli.main(["evaluate", "--checkpoint", str(a), "--dataset", name, "--data_dir", str(data_dir),
                         "--split", split, "--size", "128", "--limit", "2", "--no-edge-metrics", "--simulate",
                         "--output", str(report)]) == 0
        run = json.loads(report.with_name(report.name + ".json").read_text())
        assert run["settings"]["protocol"] == name
        assert 0 < run["summary"]["refined"]["delta1"] <= 1 and run["summary"]["refined"]["abs_rel"] > 0

    # Resume a copy from its step-2 checkpoint: the same steps 3-4, bit for bit.
    b = tmp_path / "b"
    shutil.copytree(a, b)
    shutil.rmtree(b / "checkpoints" / "4")
    (b / "result.json").unlink()
    r = subprocess.run(_cmd(b, data_dir), env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    log_b = [json.loads(line) for line in (b / "train.jsonl").read_text().splitlines()]
    assert [rec["loss"] for rec in log_b] == [rec["loss"] for rec in log]
    from sddr_jax.checkpoints import load_training_checkpoint

    (pa, _, sa), (pb, _, sb) = load_training_checkpoint(a), load_training_checkpoint(b)
    assert sa == sb == 4
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        np.testing.assert_array_equal(x, y)
