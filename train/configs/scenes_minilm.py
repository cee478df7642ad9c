r"""Default experiment: the scenes benchmark with a MiniLM-initialised split encoder.

Sized for a 2-core CPU: the first 4 MiniLM layers split after layer 2 (towers of 2 layers, 2
joint layers that rerank). One joint layer was measured too shallow to bind words to regions and
their relations: its rerank lost to MaxSim at dev R@1 (10.3 vs 15.2 at step 350).

  python -m lateint.data.scenes --out=runs/scenes/data
  python -m lateint.train.main --config=train/configs/scenes_minilm.py --workdir=runs/scenes/model
"""

import ml_collections


def get_config():
    config = ml_collections.ConfigDict()
    config.seed = 0
    # group_batches: batches of whole scene groups (same objects, other arrangements), so the
    # hard negatives mined in the batch are the ones only relations separate.
    config.data = ml_collections.ConfigDict(
        dict(path="runs/scenes/data", train_split="train", dev_split="dev", group_batches=True)
    )
    # "minilm": the packaged all-MiniLM-L6-v2; "" : random init; else a HF BERT directory.
    config.pretrained = "minilm"
    # Sizes not given here come from the pretrained checkpoint and the data.
    config.model = ml_collections.ConfigDict(
        dict(
            num_layers=4,
            split_layer=2,
            concept_dim=128,
            compression_dim=0,
            share_tower_weights=False,
            dtype="float32",
            # The joint score = head(joint layers) + 4 x MaxSim (1 / loss.maxsim_temperature, so
            # the residual's logits are on the MaxSim loss's scale at joint_temperature 1).
            joint_residual=4.0,
        )
    )
    config.text_length = 32  # training captions are padded/truncated to this
    config.batch_size = 64
    config.num_steps = 400
    config.optimizer = ml_collections.ConfigDict(
        dict(learning_rate=2e-4, warmup_steps=40, weight_decay=0.01, grad_clip_norm=1.0)
    )
    config.loss = ml_collections.ConfigDict(
        dict(
            kind="infonce",  # "infonce" | "hinge" (VSE++ max violation)
            global_temperature=0.05,
            maxsim_temperature=0.25,
            margin=0.2,
            global_weight=1.0,
            maxsim_weight=1.0,
            joint_weight=1.0,
            num_hard_negatives=3,
            joint_temperature=1.0,
        )
    )
    config.log_every = 10
    config.checkpoint_every = 100
    config.keep_checkpoints = 3
    config.eval_every = 400  # the final evaluation only: each costs ~2 CPU minutes
    config.eval_images = 500  # dev images used by the periodic recall
    config.rerank_k = 10  # MaxSim top-K reranked by the joint layers
    return config
