"""lateint.serve.compiled / lateint.serve.stages with background compiles: what is compiled before a Searcher
answers holds every request; padded runs equal the exact buckets; requests never compile.

A Searcher whose background compile is stopped at once answers from the first shapes alone
(the worst case: nothing compiled after the ready set), and is compared with a Searcher that
compiled every bucket first.
"""

import jax
import numpy as np
import pytest

from lateint.index.first_stage import QuerySide
from lateint.serve import compile_plan
from lateint.serve import stages as stages_lib
from lateint.serve.buckets import Buckets
from lateint.serve.searcher import Searcher

BUCKETS = Buckets(
    query_lengths=(16, 32),
    query_batches=(1, 4),
    candidates=(64, 256),
    rerank=(16, 32),
    default_n=64,
    default_K=16,
)
QUERIES = [
    "two horses",
    "a cat to the left of a dog",
    "three birds above a frog",
    "one seven below a shoe",
    "a shoe",
    "two frogs and a horse right of a seven",
]


@pytest.fixture(scope="module")
def complete(tiny_workdir, concepts_index):
    return Searcher.load(tiny_workdir, concepts_index, BUCKETS)


@pytest.fixture(scope="module")
def first_only(tiny_workdir, concepts_index):
    searcher = Searcher.load(tiny_workdir, concepts_index, BUCKETS, background_compile=True)
    searcher.close()  # stops the background compile after the shape in progress, if any
    return searcher


class CompileEvents:
    """Counts XLA compiles while active (and proves it can see one)."""

    def __enter__(self):
        self.events = []
        self.listener = lambda event, *args, **kwargs: (
            self.events.append(event)
            if event == "/jax/core/compile/backend_compile_duration"
            else None
        )
        jax.monitoring.register_event_duration_secs_listener(self.listener)
        jax.jit(lambda x: x * 5 - 2)(np.ones(7))
        assert self.events, "no compile event seen: the check would prove nothing"
        self.events.clear()
        return self

    def __exit__(self, *exception):
        jax.monitoring.unregister_event_duration_listener(self.listener)


def _assert_same_ranking(got, expected):
    """Equal scores (to 1e-5) rank by rank; the images equal too, except where two of them tie
    to within that tolerance (padding may round the last bit differently)."""
    scores = np.array([hit.score for hit in got])
    np.testing.assert_allclose(scores, [hit.score for hit in expected], atol=1e-5)
    for position, (mine, theirs) in enumerate(zip(got, expected)):
        if mine.index != theirs.index:
            assert np.sum(np.abs(scores - mine.score) <= 2e-5) > 1, (position, mine, theirs)


def test_first_shapes_hold_every_request_shape():
    first = compile_plan.first_shapes(BUCKETS)
    assert set(first) == {
        ("text", (1, 32)),
        ("maxsim", (1, 32, 256)),
        ("joint", (1, 32, 32)),
        ("joint", (1, 16, 16)),
    }
    later = compile_plan.later_shapes(BUCKETS)
    assert sorted(first + later) == sorted(compile_plan.every_shape(BUCKETS))
    assert len(first + later) == 2 * 2 * (1 + 2 + 2)
    # Batch 4 becomes usable as soon as its three largest shapes are in: they come first.
    assert later.index(("joint", (4, 32, 32))) < later.index(("text", (4, 16)))
    assert later[:2] == [("text", (1, 16)), ("maxsim", (1, 16, 64))]  # a default request's
    assert stages_lib.first_shapes(BUCKETS) == [(1, 32, 256)]
    assert stages_lib.later_shapes(BUCKETS)[0] == (1, 16, 64)
    assert sorted(
        stages_lib.first_shapes(BUCKETS) + stages_lib.later_shapes(BUCKETS)
    ) == stages_lib.every_shape(BUCKETS)


def test_a_searcher_answers_from_the_first_shapes_without_compiling(first_only, complete):
    progress = first_only.compiled.progress()
    assert progress["total"] == 20 and not progress["background"]
    assert 1 in progress["usable_batches"] and progress["compiled"] >= 4
    with CompileEvents() as compiles:
        for count in (1, 2, 3, 4, 6):
            for stage in ("concepts", "exact", "exact_global"):
                for n, K in ((64, 16), (17, 16), (256, 32), (200, 20)):
                    padded = first_only.search(QUERIES[:count], k=5, n=n, K=K, first_stage=stage)
                    exact = complete.search(QUERIES[:count], k=5, n=n, K=K, first_stage=stage)
                    for got, expected in zip(padded, exact):
                        assert got.candidates == expected.candidates
                        _assert_same_ranking(got.hits, expected.hits)
    assert compiles.events == []


def test_padded_calls_equal_their_own_buckets(first_only, complete):
    rng = np.random.default_rng(0)
    token_ids = rng.integers(1000, 2000, (3, 9)).astype(np.int32)  # [B, T]
    token_mask = np.arange(9)[None] < np.array([[9], [5], [3]])  # [B, T]
    exact = complete.compiled.text_tower(token_ids, token_mask)  # on (4, 16): 1 padding row
    regions, concept_dim = complete.store.regions, complete.store.concept_dim
    concepts = rng.normal(size=(3, 40, regions, concept_dim)).astype(np.float32)  # [B, n, R, C]
    region_mask = rng.random((3, 40, regions)) < 0.7  # [B, n, R]
    stored = rng.normal(size=(3, 12, regions, complete.store.hidden)).astype(np.float32)
    maxsim = complete.compiled.maxsim(exact.concepts, exact.mask, concepts, region_mask)
    joint = complete.compiled.joint(exact.activations, exact.mask, stored, region_mask[:, :12])
    assert maxsim.shape == (3, 40) and joint.shape == (3, 12)
    for row in range(3):  # batch 1, padded to compiled shapes (T 32, n 256 at the worst)
        one = slice(row, row + 1)
        tower = first_only.compiled.text_tower(token_ids[one], token_mask[one])
        for got, expected in zip(tower, exact):
            assert got.shape[1:] == expected.shape[1:]
            np.testing.assert_allclose(got[0], expected[row], atol=1e-5)
        np.testing.assert_allclose(
            first_only.compiled.maxsim(tower.concepts, tower.mask, concepts[one], region_mask[one])[
                0
            ],
            maxsim[row],
            atol=1e-5,
        )
        np.testing.assert_allclose(
            first_only.compiled.joint(
                tower.activations, tower.mask, stored[one], region_mask[one, :12]
            )[0],
            joint[row],
            atol=1e-5,
        )
    with pytest.raises(ValueError, match="larger than every compiled bucket"):
        first_only.compiled.text_tower(np.zeros((5, 16), np.int32), np.ones((5, 16), bool))


def test_a_warmed_stage_runs_more_queries_than_it_was_warmed_for_in_pieces(first_only, complete):
    exact = first_only.stages["exact"]
    assert isinstance(exact, stages_lib.WarmedStage) and (1, 32, 256) in exact.warmed
    prepared = [first_only.prepare(query, k=3) for query in QUERIES[:3]]
    token_ids = np.zeros((3, 16), np.int32)
    token_mask = np.zeros((3, 16), bool)
    for row, query in enumerate(prepared):
        token_ids[row, : len(query.token_ids)] = query.token_ids
        token_mask[row, : len(query.token_ids)] = True
    tower = complete.compiled.text_tower(token_ids, token_mask)
    side = QuerySide(tower.concepts, tower.mask, tower.global_vector)
    warmed = set(exact.warmed)
    exact.warmed = {(1, 32, 256)}  # as right after start-up: one query per search
    try:
        with CompileEvents() as compiles:
            ids, scores = exact.search(side, 50)
        assert compiles.events == []
    finally:
        exact.warmed = warmed
    expected_ids, expected_scores = complete.stages["exact"].search(side, 50)
    assert ids.shape == scores.shape == (3, 50)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-5)
    swapped = ids != expected_ids  # only where two images tie to within the tolerance
    assert np.all(np.abs(scores - expected_scores)[swapped] <= 1e-5)


def test_the_background_compile_completes(tiny_workdir, concepts_index):
    searcher = Searcher.load(tiny_workdir, concepts_index, BUCKETS, background_compile=True)
    assert searcher.compiled.wait(timeout=600)
    progress = searcher.compiled.progress()
    assert progress == {"compiled": 20, "total": 20, "background": False, "usable_batches": [1, 4]}
    assert searcher.compiled.background_error is None
    exact = searcher.stages["exact"]
    assert isinstance(exact, stages_lib.WarmedStage)
    assert exact.warmed == set(stages_lib.every_shape(BUCKETS))
    with CompileEvents() as compiles:
        searcher.search(QUERIES[:4], k=3, first_stage="exact")
    assert compiles.events == []


def test_a_text_only_model_compiles_and_runs_the_tower_alone(tiny_workdir, complete):
    """What a follower of serve.multihost compiles: the text tower's shapes only; its outputs
    are the full model's, and the functions it does not run refuse by name."""
    from lateint.checkpoint import load_model
    from lateint.serve.compiled import CompiledModel

    model, _ = load_model(tiny_workdir)
    store = complete.store
    text_only = CompiledModel(model, BUCKETS, store.regions, store.hidden, functions=("text",))
    text_shapes = [shape for shape in compile_plan.every_shape(BUCKETS) if shape[0] == "text"]
    assert text_only.total == len(text_shapes) < complete.compiled.total
    text_only.compile_all()
    assert text_only.executables == len(text_shapes)
    assert text_only.usable_batches == BUCKETS.query_batches
    token_ids = np.full((2, 7), 1500, np.int32)
    token_mask = np.arange(7)[None] < np.array([[7], [4]])
    for got, expected in zip(
        text_only.text_tower(token_ids, token_mask),
        complete.compiled.text_tower(token_ids, token_mask),
    ):
        np.testing.assert_allclose(got, expected, atol=1e-6)
    stored = np.zeros((2, 4, store.regions, store.hidden), np.float32)
    tower = text_only.text_tower(token_ids, token_mask)
    with pytest.raises(ValueError, match=r"not compiled in this process \(functions \('text',\)\)"):
        text_only.joint(tower.activations, tower.mask, stored, np.ones(stored.shape[:3], bool))
    with pytest.raises(ValueError, match="functions expected a non-empty subset"):
        CompiledModel(model, BUCKETS, store.regions, store.hidden, functions=("tower",))
