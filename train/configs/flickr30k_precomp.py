r"""Flickr30k bottom-up-attention features (36 x 2048 regions), the COCO recipe's model.

`--data` takes SCAN's f30k_precomp folder (train_ims.npy [29000, 36, 2048], train_caps.txt,
dev_* (1,014 images), test_* (1,000)) or TERAN's tree (data/f30k: features_36/bu_att,
annotations/dataset_flickr30k.json, images/sizes.pkl); see docs/coco.md:

  python -m lateint.train.main --config=train/configs/flickr30k_precomp.py --workdir=runs/f30k/model \
      --data=data/f30k_precomp --config.pretrained=/models/bert-base-uncased

29,000 training images are a quarter of COCO's, so the run is shorter (about 130 passes over
the images at batch 128, as the COCO config's 68 passes over 113,287).
"""

from lateint.train.configs import coco_precomp


def get_config():
    config = coco_precomp.get_config()
    config.data.path = "data/f30k_precomp"
    config.num_steps = 30_000
    config.optimizer.warmup_steps = 1_000
    config.checkpoint_every = 2_000
    config.eval_every = 2_500
    return config
