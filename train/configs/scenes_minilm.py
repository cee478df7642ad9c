r"""Default experiment: the scenes benchmark with a MiniLM-initialised split encoder.

Sized to train a useful model on a 2-core CPU in about ten minutes: the first 4 MiniLM layers,
split after layer 3 (towers of 3 layers, 1 joint layer that reranks).

  python -m lateint.data.scenes --out=runs/scenes/data
  python -m train.main --config=train/configs/scenes_minilm.py --workdir=runs/scenes/model
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.seed = 0
    # group_batches: batches of whole scene groups (same objects, other arrangements), so the
    # hard negatives mined in the batch are the ones only relations separate.
    config.data = ml_collections.ConfigDict(dict(
        path="runs/scenes/data", train_split="train", dev_split="dev", group_batches=True))
    # "minilm": the packaged all-MiniLM-L6-v2; "" : random init; else a HF BERT directory.
    config.pretrained = "minilm"
    # Sizes not given here come from the pretrained checkpoint and the data.
    config.model = ml_collections.ConfigDict(dict(
        num_layers=4, split_layer=3, concept_dim=128, compression_dim=0,
        share_tower_weights=False, dtype="float32"))
    config.text_length = 32          # training captions are padded/truncated to this
    config.batch_size = 64
    config.num_steps = 700
    config.optimizer = ml_collections.ConfigDict(dict(
        learning_rate=2e-4, warmup_steps=60, weight_decay=0.01, grad_clip_norm=1.0))
    config.loss = ml_collections.ConfigDict(dict(
        kind="infonce",              # "infonce" | "hinge" (VSE++ max violation)
        global_temperature=0.05, maxsim_temperature=0.25, margin=0.2,
        global_weight=1.0, maxsim_weight=1.0, joint_weight=1.0,
        num_hard_negatives=3, joint_temperature=1.0))
    config.log_every = 10
    config.checkpoint_every = 100
    config.keep_checkpoints = 3
    config.eval_every = 350
    config.eval_images = 500          # dev images used by the periodic recall
    config.rerank_k = 10              # MaxSim top-K reranked by the joint layers
    return config
