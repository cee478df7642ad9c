r"""COCO (or Flickr30k) bottom-up-attention features, 36 x 2048 regions, bert-base-sized.

For users with a GPU/TPU. Point `data.path` at a SCAN precomp directory (train_ims.npy,
train_caps.txt, dev_*, test_*) and `pretrained` at a HuggingFace bert-base-uncased directory
(config.json, model.safetensors, vocab.txt):

  python -m train.main --config=train/configs/coco_precomp.py --workdir=runs/coco \
      --config.data.path=/data/coco_precomp --config.pretrained=/models/bert-base-uncased
"""

from train.configs import scenes_minilm


def get_config():
    config = scenes_minilm.get_config()
    config.data.path = "data/coco_precomp"
    config.data.group_batches = False  # COCO has no scene groups
    config.pretrained = "bert-base-uncased"  # a directory; override on the command line
    config.model = dict(num_layers=12, split_layer=10, concept_dim=256, compression_dim=128,
                        share_tower_weights=False, dtype="bfloat16",
                        joint_residual=4.0)  # 0.0: a pure cross-attention score
    config.text_length = 48
    config.batch_size = 128
    config.num_steps = 60_000
    config.optimizer.learning_rate = 5e-5
    config.optimizer.warmup_steps = 2_000
    config.loss.num_hard_negatives = 7
    config.checkpoint_every = 2_000
    config.eval_every = 5_000
    config.eval_images = 1_000
    config.rerank_k = 20
    return config
