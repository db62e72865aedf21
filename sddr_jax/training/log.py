"""Training logs: JSON lines and TensorBoard events, written by process 0 only."""
from __future__ import annotations

import json
import math
import pathlib
from typing import Any, Mapping

import jax
import numpy as np

from sddr_jax.io import write_text_atomic


def _summary_writer_class():
    """tensorboardX's SummaryWriter, imported without PyTorch: its writer module tries `import torch` only to
    accept torch tensors (we log floats), which costs ~3 s on a 2-core machine where torch is installed. A
    process that has already imported torch keeps it; otherwise the import sees torch as absent and the
    `sys.modules` entry is restored after, so torch imports normally later."""
    import sys

    if "tensorboardX" in sys.modules or "torch" in sys.modules:
        from tensorboardX import SummaryWriter

        return SummaryWriter
    sys.modules["torch"] = None  # type: ignore[assignment]  # `import torch` raises ImportError
    try:
        from tensorboardX import SummaryWriter
    finally:
        del sys.modules["torch"]
    return SummaryWriter


class MetricLog:
    """Metrics as JSON lines (`<workdir>/<name>.jsonl`) and TensorBoard events (`<workdir>/tensorboard`).

    Only process 0 writes. Opening for a resumed run drops the lines of steps after `resume_step` (they are
    about to be trained again) and a partial last line left by a kill, rewriting the file atomically.
    """

    def __init__(self, workdir: pathlib.Path, name: str, resume_step: int = 0, tensorboard: bool = True):
        self.active = jax.process_index() == 0
        self.path = workdir / f"{name}.jsonl"
        self._tb = None
        if not self.active:
            return
        if self.path.exists():
            kept = []
            for line in self.path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
                if int(rec.get("step", 0)) <= resume_step:
                    kept.append(line)
            write_text_atomic(self.path, "".join(k + "\n" for k in kept), overwrite=True)
        if tensorboard:
            SummaryWriter = _summary_writer_class()
            self._tb = SummaryWriter(str(workdir / "tensorboard"), purge_step=resume_step + 1 if resume_step else None)

    def write(self, step: int, values: Mapping[str, Any], prefix: str = "") -> None:
        if not self.active:
            return
        rec = {"step": int(step), **{k: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) else v)
                                     for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(rec) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(float(v)):
                    self._tb.add_scalar(f"{prefix}{k}", float(v), step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
