r"""Trains the split encoder; resumes from WORKDIR if it holds a checkpoint.

  python -m lateint.train.main --config=train/configs/scenes_relations.py --workdir=runs/scenes/model \
      [--config.num_steps=1000 ...]

A run that fails before its first checkpoint removes the workdir it created (a later run, or
lateint.serve.main, would otherwise find an empty or half-written one); a workdir that existed before,
or holds a checkpoint, is left as it is.
"""

import os
import shutil

from absl import app, flags, logging
from ml_collections import config_flags

from lateint.checkpoint import CheckpointStore
from lateint.data import options as data_options
from lateint.train import trainer

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the model config.")
flags.mark_flags_as_required(["config", "workdir"])
data_options.define_flags()  # --data (default: config.data.path) and the --data_* options


def train_or_clean_up(config, workdir: str) -> dict:
    """trainer.train_and_evaluate; on failure, removes `workdir` if this run created it and
    wrote no checkpoint into it."""
    created = not os.path.exists(workdir)
    try:
        return trainer.train_and_evaluate(config, workdir)
    except BaseException:
        if created and os.path.isdir(workdir) and not _has_checkpoint(workdir):
            logging.error("training failed before its first checkpoint: removing %s", workdir)
            shutil.rmtree(workdir, ignore_errors=True)
        raise


def _has_checkpoint(workdir: str) -> bool:
    try:
        store = CheckpointStore(workdir, async_save=False)
    except Exception:  # unreadable: keep the directory for a look
        return True
    try:
        return store.latest_step() is not None
    finally:
        store.close()


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    data_options.apply_to_config(FLAGS.config)
    train_or_clean_up(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
