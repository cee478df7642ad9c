"""Shared pytest fixtures: tiny model configs and random region inputs."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import fixture_cache  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from lateint.config import ModelConfig  # noqa: E402

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


def tiny_config(**overrides) -> ModelConfig:
    values = dict(
        vocab_size=120,
        hidden_size=32,
        num_heads=4,
        mlp_dim=64,
        num_layers=3,
        split_layer=1,
        region_feature_dim=24,
        max_text_length=16,
        max_regions=6,
        concept_dim=16,
        max_position_embeddings=32,
    )
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


def _separate_and_fused(model, token_ids, token_mask, regions, boxes, region_mask):
    text = model.encode_text(token_ids, token_mask)
    image = model.encode_image(regions, boxes, region_mask)
    separate = model.joint_score(
        text.activations, text.mask, model.compress(image.activations), image.mask
    )
    return separate, model.fused_score(token_ids, token_mask, regions, boxes, region_mask)


def separate_and_fused_scores(model, inputs):
    """([P], [P]) joint scores of random_pairs inputs, once through the towers then the joint
    stage over the stored (compressed) image activations, once through fused_score; compiled
    as one function (as the binaries run the model; op by op took several times longer)."""
    from flax import nnx

    separate, fused = nnx.jit(_separate_and_fused)(model, *inputs)
    return np.asarray(separate), np.asarray(fused)


# The corpus, model and INDEX below are built once per set of inputs and shared by every
# pytest-xdist worker and later runs (tests/fixture_cache.py); they are read-only: a test that
# changes one copies it first.
SCENES = dict(num_train=64, num_dev=24, num_test=200, seed=5, images=True)
SCENES_ENCODER = dict(steps=40, batch_size=64)
TINY_TRAINING = dict(num_steps=6, eval_every=100)
CONCEPTS_INDEX = dict(split="test", storage="float32", batch_size=64, first_stages=["concepts"])


# The files that take longest (seconds of one full run, 2026-12-06), started first: pytest-xdist
# hands out whole files (--dist loadfile) in collection order (scripts/test.sh passes
# --no-loadscope-reorder, which would otherwise put the files with most tests first), and a
# long file started last leaves the other worker idle until it ends.
SLOW_FILES_FIRST = (
    "test_train.py",  # 166
    "test_evaluate.py",  # 100
    "test_configs.py",  # 86
    "test_server.py",  # 68
    "test_serve_multihost.py",  # 67
    "test_metrics_scan.py",  # 64
    "test_searcher.py",  # 57
    "test_model.py",  # 53
    "test_data_binaries.py",  # 51
    "test_main_job.py",  # 49
    "test_searcher_sharded.py",  # 46
    "test_relation_head.py",  # 44
    "test_precompute.py",  # 36
    "test_precompute_workers.py",  # 33
    "test_evaluate_storage.py",  # 32
)


def pytest_collection_modifyitems(config, items):
    """Moves SLOW_FILES_FIRST to the front in that order; the others keep theirs after them,
    and the tests of one file keep their order."""
    del config
    rank = {name: position for position, name in enumerate(SLOW_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(os.path.basename(str(item.path)), len(rank)))


@pytest.fixture(scope="session", autouse=True)
def _compile_once_per_process(tmp_path_factory):
    """JAX's persistent compilation cache, in a folder of this pytest process only: the many
    Searchers and evaluations of the same tiny model and buckets compile each shape once, and
    a test that counts compiles still sees the first one. LATEINT_TEST_XLA_CACHE=0: none."""
    if os.environ.get("LATEINT_TEST_XLA_CACHE", "1") == "0":
        yield
        return
    import jax

    from lateint.serve import compiled

    compiled.enable_persistent_cache(str(tmp_path_factory.mktemp("xla")))
    # Only what took 0.1 s or more to compile (a Searcher's buckets, a training step): writing each
    # eager op's executable too made the tests that call the model op by op 35% slower.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)
    yield
    jax.config.update("jax_compilation_cache_dir", None)


@pytest.fixture(scope="session", autouse=True)
def _shared_fixtures_stay_unchanged():
    """Fails the session when a test wrote into a cached fixture instead of copying it."""
    yield
    modified = fixture_cache.modified_entries()
    assert not modified, f"tests changed these shared fixtures instead of copying them: {modified}"


@pytest.fixture(scope="session")
def scenes_dir():
    """A small scenes corpus (train 64, dev 24, test 200) shared by the pipeline tests."""

    def build(out):
        from lateint.data import region_encoder, scenes

        scenes.generate(
            out, **SCENES, encoder_config=region_encoder.EncoderConfig(**SCENES_ENCODER)
        )

    return fixture_cache.cached_directory(
        "scenes_small", {**SCENES, "encoder": SCENES_ENCODER}, ("lateint",), build
    )


@pytest.fixture(scope="session")
def tiny_workdir(scenes_dir):
    """A workdir holding a tiny trained model (random init, a few steps)."""

    def build(workdir):
        from lateint.train import trainer
        from lateint.train.configs import tiny

        config = tiny.get_config()
        config.data.path = scenes_dir
        config.update(TINY_TRAINING)
        trainer.train_and_evaluate(config, workdir)

    inputs = {**TINY_TRAINING, "data": os.path.basename(scenes_dir)}  # the corpus's own key
    return fixture_cache.cached_directory("tiny_model", inputs, ("lateint", "train"), build)


@pytest.fixture(scope="session")
def concepts_index(tiny_workdir, scenes_dir):
    """The tiny model's float32 INDEX of the test split with the 'concepts' first stage. Tests
    that change an INDEX copy it first."""

    def build(folder):
        from lateint.index.first_stage import build as first_stage_build
        from lateint.index.precompute import precompute

        index_dir = os.path.join(folder, "index")
        precompute(
            tiny_workdir,
            scenes_dir,
            CONCEPTS_INDEX["split"],
            index_dir,
            storage=CONCEPTS_INDEX["storage"],
            batch_size=CONCEPTS_INDEX["batch_size"],
        )
        first_stage_build.build_from_index(index_dir, CONCEPTS_INDEX["first_stages"])

    inputs = {
        **CONCEPTS_INDEX,
        "model": os.path.basename(tiny_workdir),
        "data": os.path.basename(scenes_dir),
    }
    entry = fixture_cache.cached_directory(
        "concepts_index", inputs, ("lateint", "train", "index"), build
    )
    return os.path.join(entry, "index")
