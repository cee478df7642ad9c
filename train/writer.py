"""Metrics to JSONL + TensorBoard event files (tensorboardX: no TensorFlow). Only process 0
writes."""

from __future__ import annotations

import json
import os
import time

import jax

from lateint import atomic

METRICS_FILE = "metrics.jsonl"


def truncate_metrics(path: str, last_step: int) -> int:
    """Keeps the lines of `path` with step <= last_step (a resumed run re-runs the steps after
    its checkpoint, and would repeat them); drops a torn last line. Atomic. Returns the number
    of lines dropped."""
    if not os.path.exists(path):
        return 0
    kept, dropped = [], 0
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                record = json.loads(line)
                keep = line.endswith("\n") and int(record["step"]) <= last_step
            except (ValueError, KeyError, TypeError):
                keep = False
            if keep:
                kept.append(line)
            else:
                dropped += 1
    if dropped:
        atomic.write_text(path, "".join(kept))
    return dropped


class MetricWriter:
    """write(step, {name: scalar}) appends a JSON line and TensorBoard scalars.

    resume_step: the checkpoint step a resumed run starts from; lines (and TensorBoard events)
    of later steps, written before the run was stopped, are dropped first.
    """

    def __init__(self, workdir: str, resume_step: int = 0):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter

        path = os.path.join(workdir, METRICS_FILE)
        truncate_metrics(path, resume_step)
        self._jsonl = open(path, "a")
        self._tensorboard = SummaryWriter(
            os.path.join(workdir, "tensorboard"),
            purge_step=resume_step + 1 if resume_step else None,
        )

    def write(self, step: int, scalars: dict) -> None:
        if not self.enabled:
            return
        values = {name: float(value) for name, value in scalars.items()}
        self._jsonl.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")
        self._jsonl.flush()
        for name, value in values.items():
            self._tensorboard.add_scalar(name, value, step)

    def close(self) -> None:
        if self.enabled:
            self._jsonl.close()
            self._tensorboard.close()
