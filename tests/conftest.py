"""Shared pytest fixtures: tiny model configs and random region inputs."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lateint.config import ModelConfig  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def tiny_config(**overrides) -> ModelConfig:
    values = dict(vocab_size=120, hidden_size=32, num_heads=4, mlp_dim=64, num_layers=3,
                  split_layer=1, region_feature_dim=24, max_text_length=16, max_regions=6,
                  concept_dim=16, max_position_embeddings=32)
    values.update(overrides)
    return ModelConfig(**values)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def random_pairs(config: ModelConfig, rng, pairs=3, text_length=9, regions=5):
    """Random (token_ids, token_mask, regions, boxes, region_mask) with ragged padding."""
    token_ids = rng.integers(3, config.vocab_size, size=(pairs, text_length)).astype(np.int32)
    token_ids[:, 0] = 1
    token_lengths = rng.integers(3, text_length + 1, size=pairs)
    token_mask = np.arange(text_length)[None] < token_lengths[:, None]
    token_ids = np.where(token_mask, token_ids, 0).astype(np.int32)
    features = rng.normal(size=(pairs, regions, config.region_feature_dim)).astype(np.float32)
    corners = np.sort(rng.uniform(size=(pairs, regions, 2, 2)), axis=2)
    x1, x2, y1, y2 = corners[..., 0, 0], corners[..., 1, 0], corners[..., 0, 1], corners[..., 1, 1]
    boxes = np.stack([x1, y1, x2, y2, (x2 - x1) * (y2 - y1)], -1).astype(np.float32)
    region_counts = rng.integers(1, regions + 1, size=pairs)
    region_mask = np.arange(regions)[None] < region_counts[:, None]
    return token_ids, token_mask, features, boxes, region_mask


@pytest.fixture(scope="session")
def scenes_dir(tmp_path_factory):
    """A small scenes corpus (train 64, dev 24, test 200) shared by the pipeline tests."""
    from lateint.data import region_encoder, scenes
    out = str(tmp_path_factory.mktemp("scenes_small"))
    scenes.generate(out, num_train=64, num_dev=24, num_test=200, seed=5, images=True,
                    encoder_config=region_encoder.EncoderConfig(steps=40, batch_size=64))
    return out


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory, scenes_dir):
    """A workdir holding a tiny trained model (random init, a few steps)."""
    from train import trainer
    from train.configs import tiny
    workdir = str(tmp_path_factory.mktemp("tiny_model"))
    config = tiny.get_config()
    config.data.path = scenes_dir
    config.num_steps = 6
    config.eval_every = 100
    trainer.train_and_evaluate(config, workdir)
    return workdir


@pytest.fixture(scope="session")
def concepts_index(tiny_workdir, scenes_dir, tmp_path_factory):
    """The tiny model's float32 INDEX of the test split with the 'concepts' first stage. Tests
    that change an INDEX copy it first."""
    from index.first_stage import build as first_stage_build
    from index.precompute import precompute
    index_dir = str(tmp_path_factory.mktemp("concepts_index") / "index")
    precompute(tiny_workdir, scenes_dir, "test", index_dir, storage="float32", batch_size=64)
    first_stage_build.build_from_index(index_dir, ["concepts"])
    return index_dir
