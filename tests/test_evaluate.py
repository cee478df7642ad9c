"""lateint.evaluation.harness / lateint.evaluation.main / lateint.evaluation.distractors end to end on the tiny scenes data, and
the metric helpers they added to lateint.retrieval_metrics, on hand-computed cases."""

import json
import os

import numpy as np
import pytest

from lateint import retrieval_metrics

# ---- lateint.retrieval_metrics additions ------------------------------------------------------------------


def test_top_k_summary_hand_computed():
    t2i = np.array([0, 3, 7, 40])  # with 8 known: 40 only means "not in the top 8"
    i2t = np.array([0, 1])
    summary = retrieval_metrics.top_k_summary(t2i, i2t, t2i_known=8)
    assert (summary["t2i_r1"], summary["t2i_r5"]) == (25.0, 50.0)
    assert summary["t2i_r10"] is None and summary["t2i_medr"] is None
    assert summary["t2i_meanr"] is None and summary["rsum"] is None
    assert (summary["i2t_r1"], summary["i2t_r5"], summary["i2t_medr"]) == (50.0, 100.0, 1.0)
    summary = retrieval_metrics.top_k_summary(t2i, i2t, t2i_known=10)
    assert summary["t2i_r10"] == 75.0
    assert summary["rsum"] == 25.0 + 50.0 + 75.0 + 50.0 + 100.0 + 100.0
    assert retrieval_metrics.top_k_summary(t2i, i2t) == retrieval_metrics.recall_summary(t2i, i2t)
    with pytest.raises(ValueError, match="t2i_known"):
        retrieval_metrics.top_k_summary(t2i, i2t, t2i_known=0)


def test_image_subset_ranks_ties_and_several_positives():
    caption_image = np.array([0, 0, 1, 1, 2])
    scores = np.array(
        [
            [0.5, 0.9, 0.9, 0.1, 0.9],  # image 2: caption 4 tied with 1 and 2
            [0.2, 0.8, 0.8, 0.3, 0.1],
        ]
    )  # image 0: best positive 0.8, tied with 2
    ranks = retrieval_metrics.ranks_image_subset_to_text(scores, np.array([2, 0]), caption_image)
    np.testing.assert_array_equal(ranks, [2, 1])
    full = np.random.default_rng(0).normal(size=(3, 5))
    np.testing.assert_array_equal(
        retrieval_metrics.ranks_image_subset_to_text(
            full[[2, 0, 1]], np.array([2, 0, 1]), caption_image
        ),
        retrieval_metrics.ranks_image_to_text(full, caption_image)[[2, 0, 1]],
    )
    with pytest.raises(ValueError, match="distinct images"):
        retrieval_metrics.ranks_image_subset_to_text(scores, np.array([0, 0]), caption_image)


# ---- the harness on tiny data -------------------------------------------------------------------


@pytest.fixture(scope="module")
def index_dir(tiny_workdir, scenes_dir, tmp_path_factory):
    from lateint.index.first_stage import build as first_stage_build
    from lateint.index.precompute import precompute

    index_dir = str(tmp_path_factory.mktemp("evaluate") / "index")
    precompute(tiny_workdir, scenes_dir, "test", index_dir, storage="float32", batch_size=64)
    first_stage_build.build_from_index(
        index_dir, ["concepts", "exact"], {"concepts": {"num_centroids": 16}}
    )
    return index_dir


def _settings(**overrides):
    from lateint.evaluation.protocols import Settings

    values = dict(
        n=200,
        K=200,
        first_stages=("concepts", "sq", "exact"),
        max_queries=50,
        max_exhaustive_queries=50,
        max_exhaustive_pairs=20_000,
        latency_queries=2,
        recall_queries=20,
        sample_queries=2,
        batch_size=128,
    )
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="module")
def evaluated(tiny_workdir, scenes_dir, index_dir):
    from lateint.evaluation.harness import Evaluation

    evaluation = Evaluation(tiny_workdir, scenes_dir, "test", _settings())
    records, samples = evaluation.evaluate_index(index_dir)
    return evaluation, records, samples


def test_staged_with_n_and_K_equal_to_N_ranks_like_the_exhaustive_joint_model(evaluated):
    evaluation, records, _ = evaluated
    exhaustive = evaluation.ranks["joint_exhaustive"]
    assert exhaustive.shape == (50,) and exhaustive.max() < 200  # all 50 queries
    np.testing.assert_array_equal(evaluation.ranks["staged:exact"], exhaustive)
    by_label = {(r["scorer"], r.get("first_stage")): r for r in records}
    staged, joint = by_label["staged", "exact"], by_label["joint_exhaustive", None]
    for key in ("t2i_r1", "t2i_r5", "t2i_r10"):
        assert staged["recall"]["full"][key] == joint["recall"]["full"][key]
        assert staged["exhaustive_subset"][key] == joint["exhaustive_subset"][key]
    assert staged["first_stage_recall"]["value"] == 1.0  # exact n = N holds every image
    # the MaxSim ranks are not the joint ranks: the test can tell the scorers apart
    assert not np.array_equal(evaluation.ranks["maxsim"], exhaustive)


@pytest.fixture(scope="module")
def joint_only(tiny_workdir, scenes_dir, tmp_path_factory):
    """(Evaluation, INDEX) of an untrained model of the tiny model's shape whose score is the
    joint head alone (joint_residual 0): its joint ranking is not MaxSim's, which the tiny
    trained model's (4 x MaxSim + head) still is on i2t."""
    import dataclasses

    from flax import nnx

    from lateint.checkpoint import read_model_config, save_model
    from lateint.evaluation.harness import Evaluation
    from lateint.index.precompute import precompute
    from lateint.model import SplitEncoder

    folder = tmp_path_factory.mktemp("joint_only")
    config = dataclasses.replace(read_model_config(tiny_workdir), joint_residual=0.0)
    save_model(str(folder / "model"), SplitEncoder(config, nnx.Rngs(3)))
    index = str(folder / "index")
    precompute(str(folder / "model"), scenes_dir, "test", index, storage="float32", batch_size=64)
    settings = _settings(max_exhaustive_pairs=10_000)  # 10 images x 1,000 captions
    return Evaluation(str(folder / "model"), scenes_dir, "test", settings), index


def test_staged_i2t_reranking_every_caption_equals_the_exhaustive_joint_i2t(joint_only):
    """The staged i2t (each image's MaxSim top-K captions reranked by the joint layers) with K
    = every caption is the exhaustive joint i2t, on the images the exhaustive row ranks."""
    import copy
    import dataclasses

    from lateint.evaluation import scorers
    from lateint.index.store import ActivationStore

    evaluation, index_dir = joint_only
    store = ActivationStore.open(index_dir)
    context = dict(
        store=store,
        concepts=store.read_concepts(0, store.num_images),
        region_mask=store.read_region_mask(0, store.num_images),
    )
    images, exhaustive = scorers.exhaustive_i2t(evaluation, store)  # [S], [S]
    assert images.size == 10  # max_exhaustive_pairs 10,000 // 1,000 captions
    captions, caption_image = evaluation.corpus.num_captions, evaluation.corpus.caption_image
    maxsim_i2t = scorers.split_maxsim(evaluation, context).T  # [N0, M]
    # The staged rerank of those S images with K = every caption (what scorers.staged_i2t
    # does for all N0 images; their rows equal the full run's, as each image is reranked alone).
    reranked = evaluation.joint.rerank_images_to_texts(
        store, maxsim_i2t[images], captions, images=images
    )  # [S, M]
    staged = retrieval_metrics.ranks_image_subset_to_text(reranked, images, caption_image)
    # Equal up to float noise: the two paths batch the pairs differently, and an untrained head
    # gives near-tied scores, so a rank may move past captions scored within 1e-5 of the best
    # positive (these exhaustive joint scores are what scorers.exhaustive_i2t ranks).
    stored, image_mask = store.gather(images)  # [S, R, H'], [S, R]
    for row, image in enumerate(images):
        scores = evaluation.joint.pairs(
            np.arange(captions),
            np.broadcast_to(stored[row], (captions,) + stored.shape[1:]),
            np.broadcast_to(image_mask[row], (captions, image_mask.shape[1])),
        )  # [M]
        positive = scores[caption_image == image].max()
        near = int(np.sum(np.abs(scores - positive) <= 1e-5)) - 1
        assert abs(int(staged[row]) - int(exhaustive[row])) <= near, (image, near)
    assert np.mean(staged == exhaustive) >= 0.5
    with pytest.raises(ValueError, match="3 ids for 10 rows"):
        evaluation.joint.rerank_images_to_texts(store, maxsim_i2t[images], 16, images=images[:3])
    # MaxSim's own i2t differs there, so the equality above tells the scorers apart; and with
    # K = 16 of 1,000 captions the staged i2t (every image) is another ranking again, whose rows
    # are the subset rerank's at K = 16.
    maxsim = retrieval_metrics.ranks_image_to_text(maxsim_i2t, caption_image)  # [N0]
    assert not np.array_equal(maxsim[images], exhaustive)
    few = copy.copy(evaluation)
    few.settings = dataclasses.replace(evaluation.settings, K=16)
    few.i2t_cache = {}
    staged_few = scorers.staged_i2t(few, context)  # [N0]
    assert not np.array_equal(staged_few[images], exhaustive)
    np.testing.assert_array_equal(
        staged_few[images],
        retrieval_metrics.ranks_image_subset_to_text(
            evaluation.joint.rerank_images_to_texts(store, maxsim_i2t[images], 16, images=images),
            images,
            caption_image,
        ),
    )


def test_records_hold_every_scorer_with_nulls_where_undefined(evaluated):
    _, records, samples = evaluated
    labels = [(r["scorer"], r.get("first_stage")) for r in records]
    assert labels == [
        ("joint_exhaustive", None),
        ("global", None),
        ("maxsim", None),
        ("staged", "concepts"),
        ("staged", "exact"),
    ]
    for record in records:
        full = record["recall"]["full"]
        assert set(full) == set(retrieval_metrics.SUMMARY_KEYS)
        assert record["recall"]["1k5fold"] is None and record["recall"]["5k"] is None
        assert any("1k5fold" in note for note in record["notes"])  # 200 test images
        assert record["num_images"] == 200 and record["distractors"] == 0
        assert record["skipped_first_stages"] == {
            "sq": "not built in this INDEX (python -m lateint.index.build)"
        }
        # Medians of latency_queries=2 rows are means, so they add up like the rows: 'total' is
        # the sum of the stages timed, or (staged: the whole batch) at least that.
        latency = record["latency_ms"]
        parts = [value for key, value in latency.items() if key != "total" and value is not None]
        assert len(parts) >= 2 and min(parts) > 0
        if record["scorer"] == "staged":
            assert latency["total"] >= sum(parts) * (1 - 1e-9), latency
        else:
            assert latency["total"] == pytest.approx(sum(parts), rel=1e-9), latency
        assert record["bytes_per_image"]["total"] == sum(
            value for key, value in record["bytes_per_image"].items() if key != "total"
        )
    staged = records[3]
    assert staged["recall"]["full"]["t2i_medr"] is None and staged["recall"]["full"]["rsum"]
    assert all(staged["latency_ms"][key] is not None for key in staged["latency_ms"])
    assert records[1]["latency_ms"]["stage2"] is None  # global has no MaxSim stage
    assert records[0]["recall"]["full"]["t2i_medr"] is not None
    # float32 storage of the tiny model: R = 8 regions, H' = 32, C = 16
    assert records[0]["bytes_per_image"]["activations"] == 8 * 32 * 4 + 8
    assert records[1]["bytes_per_image"] == {"global": 16 * 4, "total": 16 * 4}
    assert len(samples) == 2 and all(len(sample["top5"]) == 5 for sample in samples)


def test_relational_metrics_recomputed_from_scores_and_layouts(evaluated, scenes_dir):
    """Oracle R@K and partner accuracy in the records equal a direct recomputation from the
    scores and the layouts; the joint score's partner accuracy is shared by staged and
    exhaustive rows (it is one scorer)."""
    from lateint.data import scenes, semantics

    evaluation, records, _ = evaluated
    corpus = evaluation.corpus
    layouts = scenes.read_records(scenes_dir, "test", corpus.image_ids)
    truth = semantics.SceneTruth.from_records(layouts).truth_matrix(corpus.captions)
    by_label = {(r["scorer"], r.get("first_stage")): r for r in records}
    global_record = by_label["global", None]
    from lateint.index.store import ActivationStore

    store = ActivationStore.open(global_record["index"])
    image_global = store.read_global(0, store.num_images)
    scores = evaluation.text.global_vector[evaluation.queries] @ image_global.T  # [Q, N]
    top = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    hits = np.take_along_axis(truth[evaluation.queries], top, axis=1)
    for level in (1, 5, 10):
        assert global_record["oracle"][f"oracle_r{level}"] == pytest.approx(
            100 * hits[:, :level].any(axis=1).mean()
        )
    # partner accuracy by brute force over the group partners
    wins, pairs = 0.0, 0
    all_scores = evaluation.text.global_vector @ image_global.T  # [M, N]
    for caption, image in enumerate(corpus.caption_image):
        for other in range(corpus.num_images):
            if (
                other != image
                and layouts[other]["group"] == layouts[image]["group"]
                and not truth[caption, other]
            ):
                pairs += 1
                wins += (all_scores[caption, image] > all_scores[caption, other]) + 0.5 * (
                    all_scores[caption, image] == all_scores[caption, other]
                )
    assert pairs > 100 and global_record["partner"]["partner_pairs"] == pairs
    assert global_record["partner"]["partner_accuracy"] == pytest.approx(100 * wins / pairs)
    joint = by_label["joint_exhaustive", None]["partner"]
    assert by_label["staged", "exact"]["partner"] == joint
    # the joint row is the joint layers' score of each pair, recomputed here
    captions, own, partner = evaluation.relational.pairs
    pair_scores = [
        evaluation.joint.pairs(captions, *store.gather(images)) for images in (own, partner)
    ]
    wins = (pair_scores[0] > pair_scores[1]) + 0.5 * (pair_scores[0] == pair_scores[1])
    assert joint["partner_accuracy"] == pytest.approx(100 * wins.mean())
    assert (
        by_label["staged", "exact"]["oracle"]["oracle_r10"]
        >= by_label["staged", "exact"]["recall"]["full"]["t2i_r10"]
    )


def test_report_writes_json_markdown_and_plot(evaluated, tmp_path):
    from lateint.evaluation import report

    _, records, samples = evaluated
    report.write_json(str(tmp_path / "results.json"), {"records": records})
    loaded = json.loads((tmp_path / "results.json").read_text())["records"]
    assert [record["scorer"] for record in loaded] == [record["scorer"] for record in records]
    text = report.markdown(loaded)
    assert "| staged:concepts | 200 |" in text and "| joint_exhaustive | 200 |" in text
    assert "| 200 | exact | 50 |" in text  # the speedup table row of the exact first stage
    relations = report.relational_table(loaded)
    staged = [r for r in loaded if r.get("first_stage") == "exact"][0]
    assert f"| staged:exact | 200 | 50 | {staged['recall']['full']['t2i_r1']:.1f} |" in relations
    assert f"{staged['partner']['partner_accuracy']:.1f}" in relations and relations in text
    report.plot(loaded, str(tmp_path / "plot.png"))
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "1." in report.samples_text(samples)


def test_index_of_another_split_is_refused(evaluated, tiny_workdir, scenes_dir, tmp_path):
    from lateint.index.precompute import precompute

    evaluation = evaluated[0]
    other = str(tmp_path / "dev_index")
    precompute(tiny_workdir, scenes_dir, "dev", other, storage="float32", batch_size=64)
    with pytest.raises(ValueError, match=r"ids.txt: .*24 images, fewer than the 200"):
        evaluation.evaluate_index(other)


def test_distractor_scaling_run_writes_every_N_and_resumes(
    tiny_workdir, scenes_dir, index_dir, tmp_path
):
    from lateint.evaluation import distractors
    from lateint.evaluation import main as evaluation_main

    with pytest.raises(ValueError, match="equals the seed"):
        distractors.ensure_pool(str(tmp_path), 10, seed=5, data=scenes_dir)
    out = str(tmp_path / "eval")
    settings = _settings(
        K=16,
        n=64,
        first_stages=("concepts", "exact"),
        max_queries=20,
        max_exhaustive_queries=20,
        max_exhaustive_pairs=4000,
        sample_queries=1,
    )
    records, _ = evaluation_main.run(
        tiny_workdir,
        index_dir,
        scenes_dir,
        "test",
        settings,
        out,
        sizes=[200, 230],
        distractor_seed=6,
    )
    assert sorted({record["num_images"] for record in records}) == [200, 230]
    scaled = [record for record in records if record["num_images"] == 230]
    assert {record["distractors"] for record in scaled} == {30}
    assert [(r["scorer"], r.get("first_stage")) for r in scaled][-2:] == [
        ("staged", "concepts"),
        ("staged", "exact"),
    ]  # first stages built on the new index
    from lateint.index.store import ActivationStore

    store = ActivationStore.open(os.path.join(out, "scaling", "n230", "index"))
    assert store.image_ids[:200] == ActivationStore.open(index_dir).image_ids
    assert all(image_id.startswith("s6-") for image_id in store.image_ids[200:])
    for name in ("results.json", "results.md", "rsum_latency.png", "n200.json", "n230.json"):
        assert os.path.getsize(os.path.join(out, name)) > 0
    stamp = os.path.getmtime(os.path.join(out, "n230.json"))
    again, _ = evaluation_main.run(
        tiny_workdir, index_dir, scenes_dir, "test", settings, out, sizes=[230], distractor_seed=6
    )
    assert os.path.getmtime(os.path.join(out, "n230.json")) == stamp  # reused, not recomputed
    assert len(again) == len(scaled)


def test_cached_results_are_keyed_by_the_index_state(index_dir, tmp_path):
    """lateint.evaluation.main reuses OUT/n{N}.json only for the same INDEX: another path, a rebuilt
    first stage or another manifest (e.g. another storage mode) changes the key."""
    import shutil

    from lateint.evaluation import main as evaluation_main

    copy = str(tmp_path / "index")
    shutil.copytree(index_dir, copy)
    base = evaluation_main.index_digest(copy)
    assert (
        evaluation_main.index_digest(copy) == base
        and evaluation_main.index_digest(index_dir) == base
    )
    stage_records = [
        os.path.join(root, name)
        for root, _, names in os.walk(copy)
        for name in names
        if name.endswith(".json") and root != copy
    ]
    assert stage_records  # the first stages' own records are part of the key
    with open(stage_records[0], "a", encoding="utf-8") as handle:
        handle.write(" ")
    rebuilt = evaluation_main.index_digest(copy)
    assert rebuilt != base
    manifest = os.path.join(copy, "manifest.json")
    record = json.loads(open(manifest, encoding="utf-8").read())
    record["storage"]["activations_dtype"] = "int8"
    with open(manifest, "w", encoding="utf-8") as handle:
        json.dump(record, handle)
    assert evaluation_main.index_digest(copy) not in (base, rebuilt)


def test_a_rerun_into_the_same_out_reevaluates_another_index_and_a_rebuilt_stage(
    tiny_workdir, scenes_dir, index_dir, tmp_path
):
    """OUT/n{N}.json is reused for the same INDEX only: an int8 INDEX of the same images, a
    copy at another path, and a first stage rebuilt in place with other parameters are each
    evaluated again into the same --out (their numbers, not the cached ones, come back)."""
    import shutil

    from lateint.evaluation import main as evaluation_main
    from lateint.index import codecs
    from lateint.index.first_stage import build as first_stage_build
    from lateint.index.precompute import precompute

    settings = _settings(
        K=16,
        n=64,
        first_stages=("concepts",),
        max_queries=20,
        max_exhaustive_queries=20,
        max_exhaustive_pairs=4000,
        latency_queries=1,
        recall_queries=20,
        sample_queries=1,
    )
    out, cached = str(tmp_path / "eval"), str(tmp_path / "eval" / "n200.json")

    def evaluate_into_out(index):
        records, _ = evaluation_main.run(tiny_workdir, index, scenes_dir, "test", settings, out)
        return {(record["scorer"], record.get("first_stage")): record for record in records}

    first = evaluate_into_out(index_dir)
    stamp = os.path.getmtime(cached)
    assert evaluate_into_out(index_dir) == first and os.path.getmtime(cached) == stamp  # reused

    copy = str(tmp_path / "copy")
    shutil.copytree(index_dir, copy)
    assert {record["index"] for record in evaluate_into_out(copy).values()} == {copy}

    int8 = str(tmp_path / "int8")
    precompute(tiny_workdir, scenes_dir, "test", int8, storage="int8", batch_size=64)
    first_stage_build.build_from_index(int8, ["concepts"], {"concepts": {"num_centroids": 16}})
    quantized = evaluate_into_out(int8)
    assert {record["storage"] for record in quantized.values()} == {"int8"}
    # R = 8 regions of H' = 32: int8 codes + a float32 scale per region, + the region mask
    assert (
        quantized["joint_exhaustive", None]["bytes_per_image"]["activations"]
        == 8 * codecs.bytes_per_region("int8", 32) + 8
    )
    assert first["joint_exhaustive", None]["bytes_per_image"]["activations"] == 8 * 32 * 4 + 8

    # Rebuilt in place (same path, 4 centroids instead of 16): its size per image changes.
    staged_bytes = quantized["staged", "concepts"]["bytes_per_image"]["first_stage"]
    first_stage_build.build_from_index(int8, ["concepts"], {"concepts": {"num_centroids": 4}})
    rebuilt = evaluate_into_out(int8)["staged", "concepts"]
    from lateint.index.first_stage import open_first_stage
    from lateint.index.store import ActivationStore

    stage = open_first_stage(int8, "concepts", ActivationStore.open(int8).manifest)
    assert rebuilt["bytes_per_image"]["first_stage"] == stage.nbytes / 200 != staged_bytes
