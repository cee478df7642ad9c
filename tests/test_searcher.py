"""lateint.serve.searcher: the staged pipeline equals the exhaustive joint ranking; bounds; no compiles.

One Searcher over a float32 INDEX of the scenes test split (200 images) with the 'concepts'
first stage built and 'exact' not built (so 'exact' runs over the activation store itself).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lateint import pretrained, scoring
from lateint.checkpoint import load_model
from lateint.compiles import CompileCounter
from lateint.data.corpus import load_corpus
from lateint.index.first_stage import QuerySide
from lateint.index.first_stage import build as first_stage_build
from lateint.index.precompute import precompute
from lateint.index.store import ActivationStore
from lateint.serve.buckets import Buckets
from lateint.serve.searcher import STAGE_TIMINGS, Searcher
from lateint.tokenizer import WordPieceTokenizer

QUERIES = [
    "two horses",
    "a cat to the left of a dog",
    "three birds above a frog",
    "one seven below a shoe",
]
BUCKETS = Buckets(
    query_lengths=(16,),
    query_batches=(1, 4),
    candidates=(256,),
    rerank=(16, 256),
    default_n=256,
    default_K=16,
)


@pytest.fixture(scope="module")
def index_dir(tiny_workdir, scenes_dir, tmp_path_factory):
    index_dir = str(tmp_path_factory.mktemp("searcher_index"))
    precompute(tiny_workdir, scenes_dir, "test", index_dir, storage="float32", batch_size=64)
    first_stage_build.build_from_index(index_dir, ["concepts"])
    return index_dir


@pytest.fixture(scope="module")
def searcher(tiny_workdir, index_dir):
    return Searcher.load(tiny_workdir, index_dir, BUCKETS)


@pytest.fixture(scope="module")
def exhaustive(tiny_workdir, scenes_dir, searcher):
    """Joint scores [Q, N] of every (query, image) from one fused forward (model.fused_score)."""
    model, _ = load_model(tiny_workdir)
    corpus = load_corpus(scenes_dir, "test")
    graph, state = nnx.split(model)
    fused = jax.jit(lambda state, *arrays: nnx.merge(graph, state).fused_score(*arrays))
    token_ids, token_mask = searcher.tokenizer.encode(QUERIES, length=16)  # [Q, T]
    images = corpus.regions.shape[0]
    rows = []
    for query in range(len(QUERIES)):

        def repeat(array, query=query):
            return jnp.asarray(np.repeat(array[query : query + 1], images, axis=0))

        rows.append(
            np.asarray(
                fused(
                    state,
                    repeat(token_ids),
                    repeat(token_mask),
                    jnp.asarray(corpus.regions),
                    jnp.asarray(corpus.boxes),
                    jnp.asarray(corpus.region_mask),
                )
            )
        )
    return np.stack(rows), corpus.image_ids


def test_exact_pipeline_equals_the_exhaustive_joint_ranking(searcher, exhaustive):
    scores, image_ids = exhaustive
    images = len(image_ids)
    results = searcher.search(QUERIES, k=10, n=images, K=images, first_stage="exact")
    for query, result in enumerate(results):
        expected = np.argsort(-scores[query], kind="stable")[:10]
        assert [hit.index for hit in result.hits] == expected.tolist()
        assert [hit.id for hit in result.hits] == [image_ids[row] for row in expected]
        np.testing.assert_allclose(
            [hit.score for hit in result.hits], scores[query, expected], atol=1e-5
        )
        assert [hit.rank for hit in result.hits] == list(range(1, 11))
        assert result.candidates == images
    # Every image's joint score, not only the top 10: k = K = N returns all of them.
    everything = searcher.search(QUERIES[:1], k=images, n=images, K=images, first_stage="exact")[0]
    assert sorted(hit.index for hit in everything.hits) == list(range(images))
    got = np.array([hit.score for hit in sorted(everything.hits, key=lambda hit: hit.index)])
    np.testing.assert_allclose(got, scores[0], atol=1e-5)


def test_reranked_candidates_are_the_exact_maxsim_top_K(searcher, index_dir):
    store = ActivationStore.open(index_dir)
    concepts = store.read_concepts(0, store.num_images)
    region_mask = store.read_region_mask(0, store.num_images)
    result = searcher.search(QUERIES[:1], k=16, n=256, K=16, first_stage="exact")[0]
    token_ids, token_mask = searcher.tokenizer.encode(QUERIES[:1], length=16)
    tower = searcher.compiled.text_tower(token_ids, token_mask)
    maxsim = np.asarray(scoring.maxsim(tower.concepts, tower.mask, concepts, region_mask))[0]
    top = set(np.argsort(-maxsim, kind="stable")[:16].tolist())
    assert {hit.index for hit in result.hits} == top
    for hit in result.hits:
        assert hit.maxsim == pytest.approx(maxsim[hit.index], abs=1e-5)


def test_a_batch_answers_like_single_queries(searcher):
    together = searcher.search(
        QUERIES,
        k=5,
        first_stage=["concepts", "exact", "concepts", "exact_global"],
        K=[16, 32, 8, 16],
        n=[64, 256, 100, 16],
    )
    for position, result in enumerate(together):
        alone = searcher.search(
            [QUERIES[position]],
            k=5,
            first_stage=result.settings.first_stage,
            K=result.settings.K,
            n=result.settings.n,
        )[0]
        assert [hit.id for hit in result.hits] == [hit.id for hit in alone.hits]
        np.testing.assert_allclose(
            [hit.score for hit in result.hits], [hit.score for hit in alone.hits], atol=1e-5
        )
        assert result.batch_size == 4 and alone.batch_size == 1
        assert set(result.timings_ms) == set(STAGE_TIMINGS)
    assert together[1].settings.K == 32 and len(together[2].hits) == 5
    # Chunks of the batch buckets (1, 4): 11 = 4 + 4 + 3 (padded to 4: one padding row).
    many = searcher.search(QUERIES * 2 + QUERIES[:3], k=3)
    assert [result.batch_size for result in many] == [4] * 8 + [3] * 3
    # 6 = 4 + 1 + 1 (2 padded to 4 would be half padding).
    assert [result.batch_size for result in searcher.search(QUERIES + QUERIES[:2], k=3)] == [
        4
    ] * 4 + [1] * 2
    assert [hit.id for hit in many[5].hits] == [hit.id for hit in many[1].hits]
    assert [hit.id for hit in many[10].hits] == [hit.id for hit in many[2].hits]


def test_concepts_first_stage_and_defaults(searcher):
    assert searcher.first_stage_names == ("concepts", "exact", "exact_global", "refined")
    assert searcher.default_first_stage == "refined"
    default = searcher.search(QUERIES[:1], k=3)[0]
    assert default.settings.to_dict() == {"k": 3, "n": 256, "K": 16, "first_stage": "refined"}
    result = searcher.search(QUERIES[:1], k=3, first_stage="concepts")[0]
    assert result.settings.to_dict() == {"k": 3, "n": 256, "K": 16, "first_stage": "concepts"}
    # candidates: what the concepts stage itself returns for this query within n = 256
    token_ids, token_mask = searcher.tokenizer.encode(QUERIES[:1], length=16)
    tower = searcher.compiled.text_tower(token_ids, token_mask)
    ids, _ = searcher.stages["concepts"].search(
        QuerySide(tower.concepts[:1], tower.mask[:1], tower.global_vector[:1]), 256
    )
    returned = ids[0][(ids[0] >= 0) & (ids[0] < searcher.num_images)]
    assert 3 <= result.candidates == returned.size < searcher.num_images
    assert {hit.index for hit in result.hits} <= set(returned.tolist())
    scores = [hit.score for hit in result.hits]
    assert scores == sorted(scores, reverse=True)
    # 'total' covers tokenizing and the whole batch, so at least the stages timed inside it
    timings = result.timings_ms
    assert set(timings) == set(STAGE_TIMINGS) and min(timings.values()) > 0
    assert timings["total"] >= sum(value for key, value in timings.items() if key != "total")
    # A missing K is raised to cover k; a missing n to cover K.
    assert searcher.settings(k=100).K == 100
    assert searcher.settings(k=5, K=200).n == 256


@pytest.mark.parametrize(
    "arguments, message",
    [
        (dict(k=0), "k: expected 1..256"),
        (dict(k=300), "k: expected 1..256"),
        (dict(k=20, K=10), "k: expected at most K=10"),
        (dict(k=5, K=100, n=50), "K: expected at most n=50"),
        (dict(k=5, n=257), "n: expected 1..256"),
        (dict(k=5, K=0), "K: expected 1..256"),
        (dict(k=5, first_stage="sq"), "first_stage: expected one of"),
        (dict(k="5"), "k: expected an int"),
        (dict(k=True), "k: expected an int"),
    ],
)
def test_settings_outside_the_bounds_are_refused(searcher, arguments, message):
    with pytest.raises(ValueError, match=message):
        searcher.search(["two horses"], **arguments)


@pytest.mark.parametrize(
    "query, message",
    [
        ("", "empty or whitespace-only"),
        ("  \t", "empty or whitespace-only"),
        (7, "expected a str"),
        ("a\ud800b", "lone surrogate"),
    ],
)
def test_bad_queries_are_refused(searcher, query, message):
    with pytest.raises(ValueError, match=message):
        searcher.search([query], k=3)


def test_over_long_queries_are_cut_to_the_largest_bucket(searcher):
    prepared = searcher.prepare("horse " * 100, k=3)
    assert len(prepared.token_ids) == 16
    assert len(searcher.run([prepared])[0].hits) == 3


def test_shapes_outside_the_buckets_raise(searcher):
    # (2, 16) runs padded on the (4, 16) bucket; nothing holds 5 queries or 17 tokens.
    assert searcher.compiled.text_tower(
        np.zeros((2, 16), np.int32), np.ones((2, 16), bool)
    ).mask.shape == (2, 16)
    for shape in ((5, 16), (1, 17)):
        with pytest.raises(ValueError, match="larger than every compiled bucket"):
            searcher.compiled.text_tower(np.zeros(shape, np.int32), np.ones(shape, bool))


def test_requests_never_compile(searcher):
    with CompileCounter() as compiles:
        jax.jit(lambda x: x * 3 + 1)(np.ones(5))  # the counter does see a compile
    assert compiles.count >= 1, "no compile event seen: the check below would prove nothing"
    with CompileCounter() as compiles:
        for count in (1, 2, 3, 4):
            for stage in searcher.first_stage_names:
                searcher.search(
                    QUERIES[:count],
                    k=4,
                    first_stage=stage,
                    K=[16, 200][count % 2],
                    n=[17, 256][count % 2],
                )
    assert compiles.count == 0


def test_a_foreign_index_is_refused_naming_both_fingerprints(tiny_workdir, index_dir):
    model, meta = load_model(tiny_workdir)
    store = ActivationStore.open(index_dir)
    tokenizer = WordPieceTokenizer.from_directory(
        pretrained.default_minilm_directory(), BUCKETS.query_lengths
    )
    with pytest.raises(ValueError) as error:
        Searcher(model, dict(meta, fingerprint="0123456789abcdef"), store, tokenizer, BUCKETS)
    assert "0123456789abcdef" in str(error.value)
    assert store.manifest["model_fingerprint"] in str(error.value)


def test_unbuilt_first_stages_are_refused(tiny_workdir, index_dir):
    with pytest.raises(ValueError, match=r"expected a non-empty subset of \['concepts', 'exact'"):
        Searcher.load(tiny_workdir, index_dir, BUCKETS, first_stages=["sq"])
