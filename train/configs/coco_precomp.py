r"""COCO bottom-up-attention features (36 x 2048 regions), a bert-base-sized split encoder.

For users with a GPU/TPU (docs/coco.md: downloads, every step, memory, time). `--data` takes
SCAN's coco_precomp folder (train_ims.npy [113287, 36, 2048], train_caps.txt, dev_*, testall_*)
or TERAN's tree (data/coco: features_36/bu_att, annotations/coco_*_ids.npy); `pretrained` a
HuggingFace bert-base-uncased directory (config.json, model.safetensors, vocab.txt):

  python -m lateint.train.main --config=train/configs/coco_precomp.py --workdir=runs/coco/model \
      --data=data/coco_precomp --config.pretrained=/models/bert-base-uncased

The data follow the standard protocol (lateint.data.options): train = Karpathy train + restval
(113,287 images), 5 captions per image, validation on the first 1,000 dev images.
"""

from lateint.train.configs import scenes_minilm


def get_config():
    config = scenes_minilm.get_config()
    config.data.path = "data/coco_precomp"
    config.data.train_split = "train"
    config.data.dev_split = "dev"
    config.data.captions_per_image = 5  # the standard protocol (0: every caption)
    config.data.dev_images = 1000  # SCAN / TERAN validate on the first 1,000 dev images
    config.data.group_batches = False  # COCO has no scene groups
    config.pretrained = "bert-base-uncased"  # a directory; override on the command line
    config.model = dict(
        num_layers=12,
        split_layer=10,
        concept_dim=256,
        compression_dim=128,
        share_tower_weights=False,
        dtype="bfloat16",
        joint_residual=4.0,
    )  # 0.0: a pure cross-attention score
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
