r"""Trains the split encoder; resumes from WORKDIR if it holds a checkpoint.

  python -m train.main --config=train/configs/scenes_minilm.py --workdir=runs/scenes/model \
      [--config.num_steps=1000 ...]
"""

from absl import app, flags
from ml_collections import config_flags

from lateint.data import options as data_options
from train import trainer

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config file.", lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and the model config.")
flags.mark_flags_as_required(["config", "workdir"])
data_options.define_flags()  # --data (default: config.data.path) and the --data_* options


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    data_options.apply_to_config(FLAGS.config)
    trainer.train_and_evaluate(FLAGS.config, FLAGS.workdir)


if __name__ == "__main__":
    app.run(main)
