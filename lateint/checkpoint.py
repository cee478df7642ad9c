"""All Orbax code of the project: checkpoints in a workdir, and loading a model from one.

Workdir layout (written by train/, read by index/ and serve/):
  WORKDIR/model_config.json     ModelConfig as JSON (the model can be rebuilt from it alone)
  WORKDIR/config.json           the full training config (for the record)
  WORKDIR/checkpoints/<step>/   Orbax: params (nnx.State), opt_state, meta (step, fingerprint)
"""

from __future__ import annotations

import json
import logging
import os

import jax
import orbax.checkpoint as ocp
from flax import nnx

from lateint import atomic
from lateint.config import ModelConfig
from lateint.fingerprint import model_fingerprint
from lateint.model import SplitEncoder

MODEL_CONFIG_FILE = "model_config.json"
CHECKPOINT_DIR = "checkpoints"


class CheckpointStore:
    """Async, atomic checkpoints of (params, opt_state, meta) under WORKDIR/checkpoints."""

    def __init__(self, workdir: str, max_to_keep: int = 3, async_save: bool = True):
        self.directory = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("params", "opt_state", "meta")
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, params, opt_state, meta: dict) -> None:
        """Starts an async save (Orbax finishes the previous one first). opt_state may be None
        for a params-only checkpoint (an exported model)."""
        items = {"params": ocp.args.StandardSave(params), "meta": ocp.args.JsonSave(meta)}
        if opt_state is not None:
            items["opt_state"] = ocp.args.StandardSave(opt_state)
        self._manager.save(step, args=ocp.args.Composite(**items))

    def restore(self, step: int, abstract_params, abstract_opt_state=None):
        """Restores against abstract targets (shapes/dtypes/shardings). Returns
        (params, opt_state or None, meta)."""
        items = {
            "params": ocp.args.StandardRestore(abstract_params),
            "meta": ocp.args.JsonRestore(),
        }
        if abstract_opt_state is not None:
            items["opt_state"] = ocp.args.StandardRestore(abstract_opt_state)
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        opt_state = restored["opt_state"] if abstract_opt_state is not None else None
        return restored["params"], opt_state, restored["meta"]

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def write_model_config(workdir: str, config: ModelConfig) -> None:
    os.makedirs(workdir, exist_ok=True)
    atomic.write_json(
        os.path.join(workdir, MODEL_CONFIG_FILE), config.to_dict(), indent=2, sort_keys=True
    )


def read_model_config(workdir: str) -> ModelConfig:
    path = os.path.join(workdir, MODEL_CONFIG_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: missing; is {workdir!r} a lateint training workdir?")
    with open(path) as f:
        return ModelConfig.from_dict(json.load(f))


def load_model(workdir: str, step: int | None = None) -> tuple[SplitEncoder, dict]:
    """Rebuilds the model from WORKDIR alone and restores its parameters.

    Returns (model, meta) where meta holds at least 'step' and 'fingerprint'. Raises if the
    workdir has no checkpoint, or if the restored parameters do not hash to the fingerprint
    recorded at save time.
    """
    config = read_model_config(workdir)
    store = CheckpointStore(workdir, async_save=False)
    step = store.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(
            f"{store.directory}: no checkpoint; train first "
            f"(python -m lateint.train.main --workdir={workdir} ...)"
        )
    abstract_model = nnx.eval_shape(lambda: SplitEncoder(config, nnx.Rngs(0)))
    graph, abstract_params = nnx.split(abstract_model)
    # Restore onto this process's first device whatever topology saved it (e.g. an 8-device mesh).
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract_params = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), abstract_params
    )
    params, _, meta = store.restore(step, abstract_params)
    store.close()
    model = nnx.merge(graph, jax.tree.map(jax.numpy.asarray, params))
    fingerprint = model_fingerprint(model)
    if meta.get("fingerprint") not in (None, fingerprint):
        raise ValueError(
            f"{workdir} step {step}: parameters hash to {fingerprint}, but the "
            f"checkpoint recorded {meta['fingerprint']}"
        )
    meta = dict(meta, step=step, fingerprint=fingerprint)
    return model, meta


class _QuietOrbax(logging.Filter):
    """Orbax logs every save step at INFO through absl; keep its warnings only."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or "orbax" not in record.pathname


logging.getLogger("absl").addFilter(_QuietOrbax())


def save_model(workdir: str, model: SplitEncoder, step: int = 0) -> str:
    """Writes a loadable workdir (model config + a params-only checkpoint) for `model`, e.g. a
    freshly imported pretrained model to index with before any training. Returns the
    fingerprint."""
    write_model_config(workdir, model.config)
    fingerprint = model_fingerprint(model)
    store = CheckpointStore(workdir, async_save=False)
    store.save(step, nnx.state(model), None, {"step": step, "fingerprint": fingerprint})
    store.close()
    return fingerprint
