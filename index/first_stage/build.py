"""Building, updating and opening the first stages of an INDEX by name.

Build names: 'concepts', 'sq', 'permutation', 'exact'. Search names (open_first_stage): the same
plus 'exact_global' and 'refined', which read the 'exact' stage's vectors (exact.py). Every stage's image ids are
the INDEX's 0..N-1; `add` appends images N.. to every built stage, `delete` tombstones ids for all.
"""

from __future__ import annotations

import logging
import time

from lateint.index.first_stage import concepts, exact, postings, records, surrogate, tombstones

logger = logging.getLogger(__name__)

BUILD_NAMES = ("concepts", "sq", "permutation", "exact")
SEARCH_NAMES = BUILD_NAMES + ("exact_global", "refined")


def _check_names(names, allowed, what: str) -> list[str]:
    names = list(names)
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise ValueError(
            f"{what}: stage names expected a non-empty subset of {list(allowed)}, got {names}"
        )
    return names


def build_stages(index_dir: str, source, names, options: dict | None = None) -> dict:
    """Builds each named stage from `source`; returns {name: committed record}.

    options: {name: keyword arguments of that stage's build}, e.g.
      {'concepts': {'num_centroids': 1024}, 'sq': {'size': 48, 'quantization': 64}}.
    """
    names = _check_names(names, BUILD_NAMES, "build_stages")
    options = options or {}
    built = {}
    for name in names:
        began = time.perf_counter()
        keywords = dict(options.get(name, {}))
        if name == "concepts":
            built[name] = concepts.build(index_dir, source, **keywords)
        elif name == "exact":
            built[name] = exact.build(index_dir, source, **keywords)
        else:
            built[name] = surrogate.build(index_dir, source, name, **keywords)
        logger.info(f"built first stage {name!r} in {time.perf_counter() - began:.1f} s")
    return built


def built_stages(index_dir: str, manifest: dict | None = None) -> list[str]:
    """Names of the stages with a record in INDEX (ready or interrupted); with `manifest`, those
    its generation publishes (records.committed_record)."""
    if manifest is not None and "first_stage" in manifest:
        return [name for name in BUILD_NAMES if name in manifest["first_stage"]]
    return [name for name in BUILD_NAMES if records.stage_exists(index_dir, name)]


def add(index_dir: str, source, start: int) -> dict:
    """Appends images start..start+B-1 (source holds their vectors) to every built stage.

    start must equal each stage's image count. A stage that already holds start+B images (the
    add was interrupted after it) is skipped, so re-running a failed add completes it. Results
    equal a full rebuild on the final set with the same centroids. Returns {name: record}.
    """
    stages = built_stages(index_dir)
    if not stages:
        raise FileNotFoundError(f"add: no first stage is built in {index_dir!r}")
    updated = {}
    for name in stages:
        count = records.read_record(index_dir, name)["num_images"]
        if count == start + source.num_images:
            continue
        if count != start:
            raise ValueError(
                f"add: stage {name!r} in {index_dir!r} holds {count} images, so "
                f"new images must start at id {count}; got start={start}"
            )
        if name == "concepts":
            updated[name] = concepts.add(index_dir, source, start)
        elif name == "exact":
            updated[name] = exact.add(index_dir, source, start)
        else:
            updated[name] = surrogate.add(index_dir, source, start, name)
    return updated


def delete(index_dir: str, image_ids) -> int:
    """Tombstones image_ids [D] int in every stage (now and in stages built later); returns the
    number newly deleted. Loaded stages keep their snapshot: reopen to see deletions."""
    stages = built_stages(index_dir)
    if not stages:
        raise FileNotFoundError(f"delete: no first stage is built in {index_dir!r}")
    count = max(records.read_record(index_dir, name)["num_images"] for name in stages)
    return tombstones.delete(index_dir, image_ids, count)


def compact_stage(index_dir: str, manifest: dict, name: str, alive, recluster_source=None) -> dict:
    """Rewrites stage `name` as `manifest` publishes it without the images where alive [N] bool
    is False, renumbered in order (lateint.index.compact); 'concepts' keeps its dictionary unless
    recluster_source (the compacted images' vectors) is given. Returns the committed record."""
    record = records.committed_record(index_dir, name, manifest)
    if name == "exact":
        return exact.compact(index_dir, record, alive)
    if name == "concepts" and recluster_source is not None:
        return concepts.recluster(index_dir, recluster_source, record)
    return postings.compact_postings(index_dir, name, record, alive)


def open_first_stage(index_dir: str, name: str, manifest: dict | None = None, **options):
    """Loads a built stage for search.

    Returns an object with search(query_side, n) -> (ids [Q, n] int64, scores [Q, n] float32),
    best first, padded with -1 / -inf, and `name`, `num_images`, `nbytes`. manifest: load the
    generation it publishes (serve passes its store's). options: 'concepts' takes nprobe;
    'sq' / 'permutation' take query_size.
    """
    _check_names([name], SEARCH_NAMES, "open_first_stage")
    if name == "concepts":
        return concepts.ConceptStage.load(index_dir, manifest=manifest, **options)
    if name in exact.KINDS:
        return exact.ExactStage.load(index_dir, name, manifest=manifest, **options)
    return surrogate.SurrogateStage.load(index_dir, name, manifest=manifest, **options)


BUILD_CACHE_BYTES = 64 << 20


def build_from_index(index_dir: str, names, options: dict | None = None) -> dict:
    """Builds the named stages from a finished INDEX's stored vectors (lateint.index.store)."""
    from lateint.index import (
        generation,  # the manifest switch; imports this module
        store,  # the store pulls TensorStore; only this entry point needs it
    )

    # Builds stream each row once a pass: a small chunk cache (shard indexes, the block being
    # read) instead of the server's 1 GiB, which a pass over a large INDEX would fill.
    activation_store = store.ActivationStore.open(index_dir, cache_bytes=BUILD_CACHE_BYTES)
    logger.info(
        f"{index_dir}: {activation_store.num_images} images, "
        f"{activation_store.regions} regions of {activation_store.concept_dim} concept "
        f"dims"
    )
    manifest = generation.adopt(index_dir, activation_store.manifest)
    built = build_stages(index_dir, activation_store, names, options)
    # Publish the (re)built stages with the others as the next generation: a server that
    # reloads sees them all at once, and no published folder was removed by the build.
    generation.commit(index_dir, manifest, generation.writer_state(index_dir))
    return built
