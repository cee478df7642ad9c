"""Metrics to JSONL + TensorBoard event files (tensorboardX: no TensorFlow). Only process 0
writes."""

from __future__ import annotations

import json
import os
import time

import jax


class MetricWriter:
    """write(step, {name: scalar}) appends a JSON line and TensorBoard scalars."""

    def __init__(self, workdir: str):
        self.enabled = jax.process_index() == 0
        if not self.enabled:
            return
        from tensorboardX import SummaryWriter
        self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
        self._tensorboard = SummaryWriter(os.path.join(workdir, "tensorboard"))

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
