"""lateint.serve.searcher over bfloat16 and int8 INDEXes: the joint layers see the decoded stored
activations, and the ranking stays close to the float32 INDEX's."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lateint.index.first_stage import build as first_stage_build
from lateint.index.precompute import precompute
from lateint.index.store import ActivationStore
from lateint.serve.buckets import Buckets
from lateint.serve.searcher import Searcher

QUERIES = [
    "two horses",
    "a cat to the left of a dog",
    "three birds above a frog",
    "one seven below a shoe",
]
IMAGES = 200  # the scenes test split of the session fixtures
BUCKETS = Buckets(
    query_lengths=(16,),
    query_batches=(1, 4),
    candidates=(256,),
    rerank=(16, 256),
    default_n=256,
    default_K=16,
)


@pytest.fixture(scope="module")
def float32_searcher(tiny_workdir, concepts_index):
    return Searcher.load(tiny_workdir, concepts_index, BUCKETS)


@pytest.fixture(scope="module", params=["bfloat16", "int8"])
def lossy(request, tiny_workdir, scenes_dir, tmp_path_factory):
    index_dir = str(tmp_path_factory.mktemp(f"index_{request.param}") / "index")
    precompute(tiny_workdir, scenes_dir, "test", index_dir, storage=request.param, batch_size=64)
    first_stage_build.build_from_index(index_dir, ["concepts"])
    return request.param, Searcher.load(tiny_workdir, index_dir, BUCKETS)


def test_joint_scores_are_those_of_the_decoded_stored_activations(lossy):
    storage, searcher = lossy
    assert searcher.store.storage_dtype == storage
    result = searcher.search(QUERIES[:1], k=IMAGES, n=IMAGES, K=IMAGES, first_stage="exact")[0]
    assert sorted(hit.index for hit in result.hits) == list(range(IMAGES))
    stored, mask = ActivationStore.open(searcher.index_dir).gather(np.arange(IMAGES))
    assert stored.dtype == np.float32  # decoded: bf16 widened, int8 codes times their scale
    token_ids, token_mask = searcher.tokenizer.encode(QUERIES[:1], length=16)

    @nnx.jit  # compiled, as the binaries run it (op by op took several times longer)
    def joint(model, token_ids, token_mask, stored, mask):
        text = model.encode_text(token_ids, token_mask)
        return model.joint_score(
            jnp.repeat(text.activations, IMAGES, 0), jnp.repeat(text.mask, IMAGES, 0), stored, mask
        )

    expected = np.asarray(joint(searcher.model, token_ids, token_mask, stored, mask))  # [N]
    got = np.array([hit.score for hit in sorted(result.hits, key=lambda hit: hit.index)])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_the_staged_ranking_stays_close_to_the_float32_index(lossy, float32_searcher):
    storage, searcher = lossy
    for first_stage in ("concepts", "exact"):
        lossy_results = searcher.search(QUERIES, k=10, K=16, first_stage=first_stage)
        exact_results = float32_searcher.search(QUERIES, k=10, K=16, first_stage=first_stage)
        for lossy_result, exact_result in zip(lossy_results, exact_results):
            exact_scores = {hit.index: hit.score for hit in exact_result.hits}
            shared = [hit for hit in lossy_result.hits if hit.index in exact_scores]
            assert len(shared) >= 8, (storage, first_stage, lossy_result.query)
            # Relative to the scores' own scale: the relation head sums over word pairs, so an
            # absolute bound would depend on the query length. Measured on the tiny model with
            # the relation head: int8 moved a shared hit's joint score by 0.132 in absolute terms.
            difference = max(abs(hit.score - exact_scores[hit.index]) for hit in shared)
            scale = max(abs(score) for score in exact_scores.values())
            assert difference < 0.05 * scale, (storage, first_stage, difference, scale)
