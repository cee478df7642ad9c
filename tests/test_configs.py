"""The experiment configs load and train: the main job's (scenes_relations.py) at its own model
sizes, the MiniLM-initialised scenes_minilm.py and the COCO recipe (coco_precomp.py, on a small
corpus in the precomp layout, with MiniLM standing in for bert-base) at reduced depth. Two
steps each: what breaks here is the config, its recipe switches and the model they build."""

import json
import os

import numpy as np
import pytest
from flax import nnx

from lateint import pretrained
from lateint.checkpoint import load_model, read_model_config
from lateint.data.corpus import RegionCorpus
from lateint.data.precomp import write_precomp
from lateint.model import SplitEncoder
from lateint.train import trainer
from lateint.train.configs import coco_precomp, scenes_minilm, scenes_relations

WORDS = ["cat", "dog", "horse", "bird", "red", "small", "left", "above", "two", "a", "the"]


def _train(config, workdir, **overrides):
    """Two steps of `config` (overrides applied) into WORKDIR; returns the training lines of
    metrics.jsonl and the final dev results."""
    config.num_steps, config.checkpoint_every, config.eval_every = 2, 2, 2
    config.log_every = 1
    for key, value in overrides.items():
        config[key] = value
    results = trainer.train_and_evaluate(config, workdir)
    with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as handle:
        lines = [json.loads(line) for line in handle]
    trained = [line for line in lines if "loss" in line]
    assert [line["step"] for line in trained] == [1, 2]
    assert all(np.isfinite(line["loss"]) for line in trained)
    assert set(results) == {"global", "maxsim", "rerank"}
    _, meta = load_model(workdir)
    assert meta["step"] == 2
    return trained, results


def _word_table(model) -> np.ndarray:
    return np.asarray(model.text_embeddings.word.embedding[...], np.float32)  # [V, H]


def test_the_main_jobs_config_trains_at_its_own_sizes(scenes_dir, tmp_path):
    config = scenes_relations.get_config()
    config.data.path = scenes_dir
    workdir = str(tmp_path / "relations")
    trained, _ = _train(config, workdir, batch_size=8, eval_images=24, rerank_k=4)
    model_config = read_model_config(workdir)
    for key, value in scenes_relations.get_config().model.items():
        assert getattr(model_config, key) == value, key
    assert "text_negative_accuracy" in trained[-1]  # caption semantics: relational rewrites
    # Word embeddings: a PCA of MiniLM's, frozen (config.freeze_word_embeddings) while the rest
    # trains.
    model, _ = load_model(workdir)
    fresh = SplitEncoder(model_config, nnx.Rngs(0))
    pretrained.import_word_embeddings(fresh, pretrained.default_minilm_directory())
    np.testing.assert_allclose(_word_table(model), _word_table(fresh), atol=1e-6)
    assert not np.allclose(
        np.asarray(model.region_embeddings.feature.kernel[...]),
        np.asarray(fresh.region_embeddings.feature.kernel[...]),
    )


def _minilm_words() -> np.ndarray:
    return pretrained.read_bert_tensors(pretrained.default_minilm_directory())[
        "embeddings.word_embeddings.weight"
    ]  # [V, 384]


def test_scenes_minilm_starts_from_minilm(scenes_dir, tmp_path):
    config = scenes_minilm.get_config()
    config.data.path = scenes_dir
    config.model.update(num_layers=2, split_layer=1, concept_dim=32)  # of MiniLM's 6 layers
    workdir = str(tmp_path / "minilm")
    _train(config, workdir, batch_size=8, eval_images=24, rerank_k=4)
    model_config = read_model_config(workdir)
    assert (model_config.hidden_size, model_config.num_heads, model_config.mlp_dim) == (
        384,
        12,
        1536,
    )  # sizes from the MiniLM checkpoint
    model, _ = load_model(workdir)
    # Two warm-up steps move MiniLM's weights by ~learning_rate; a random init is far away.
    np.testing.assert_allclose(_word_table(model), _minilm_words(), atol=1e-3)


def _precomp_corpus(images: int, seed: int) -> RegionCorpus:
    """`images` images of 36 regions x 64 features, 5 captions each, in the precomp layout."""
    rng = np.random.default_rng(seed)
    corners = np.sort(rng.uniform(size=(images, 36, 2, 2)), axis=2)
    x1, x2, y1, y2 = corners[..., 0, 0], corners[..., 1, 0], corners[..., 0, 1], corners[..., 1, 1]
    boxes = np.stack([x1, y1, x2, y2, (x2 - x1) * (y2 - y1)], -1).astype(np.float32)
    captions = [
        " ".join(rng.choice(WORDS, size=int(rng.integers(3, 9)))) for _ in range(5 * images)
    ]
    return RegionCorpus(
        regions=rng.normal(size=(images, 36, 64)).astype(np.float32),
        boxes=boxes,
        region_counts=rng.integers(10, 37, images).astype(np.int32),
        captions=captions,
        caption_image=np.arange(5 * images) // 5,
        image_ids=[str(i) for i in range(images)],
    )


@pytest.fixture(scope="module")
def precomp_dir(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("coco_precomp"))
    write_precomp(directory, "train", _precomp_corpus(24, seed=1))
    write_precomp(directory, "dev", _precomp_corpus(12, seed=2))
    return directory


def test_the_coco_recipe_builds_its_model_on_precomp_data(precomp_dir, tmp_path):
    config = coco_precomp.get_config()
    config.data.path = precomp_dir
    config.pretrained = pretrained.default_minilm_directory()  # for bert-base-uncased
    reduced = dict(coco_precomp.get_config().model, num_layers=2, split_layer=1)  # of 12 / 10
    config.model = reduced
    workdir = str(tmp_path / "coco")
    _train(config, workdir, batch_size=8, eval_images=12, rerank_k=4)
    model_config = read_model_config(workdir)
    for key in ("concept_dim", "compression_dim", "dtype", "joint_residual"):
        assert getattr(model_config, key) == reduced[key], key
    assert (model_config.region_feature_dim, model_config.max_regions) == (64, 36)
    assert model_config.stored_dim == reduced["compression_dim"]  # H' < H: compressed store
    model, _ = load_model(workdir)
    np.testing.assert_allclose(_word_table(model), _minilm_words(), atol=1e-3)
