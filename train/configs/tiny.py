r"""Tiny config for tests: a random-init 2-layer model that trains in seconds, with every part
of the default recipe (scenes_relations.py) switched on at toy sizes.

  python -m lateint.train.main --config=train/configs/tiny.py --workdir=/tmp/tiny \
      --config.data.path=DATA
"""

from lateint.train.configs import scenes_relations


def get_config():
    config = scenes_relations.get_config()
    config.model.update(  # the default recipe's model, at toy sizes
        hidden_size=32, mlp_dim=64, num_layers=2, split_layer=1, concept_dim=16
    )
    config.text_length = 32
    config.batch_size = 8
    config.num_steps = 12
    config.optimizer.warmup_steps = 2
    config.optimizer.learning_rate = 1e-3
    config.loss.num_hard_negatives = 2
    config.log_every = 2
    config.checkpoint_every = 4
    config.eval_every = 6
    config.eval_images = 16
    config.rerank_k = 4
    return config
