"""The peers bench/first_stage.py runs beside lateint's stages, on the same vectors.

Each builder takes the corpus (SyntheticImages: concepts [N, R, C], region_mask [N, R],
global_vectors [N, C]) and yields (stage, settings, search, sizes) where search(query_side, n)
-> ids [q, n] int64 (padded with -1) and sizes = {index_bytes, memory_bytes}. Build time and
peak memory are measured by the caller around the generator's first step.

- faiss_ivfpq_tokens: ColBERTv1's candidate generation. Every real region vector in one faiss
  IndexIVFPQ; each real query word retrieves its k' nearest regions; candidates are the union of
  their images, ranked by the sum over words of the best retrieved (PQ-approximate) similarity.
- faiss_hnsw_global / faiss_ivfflat_global: the global vectors in an HNSW graph / IVF lists.
- muvera: fixed-dimensional encodings (bench/muvera_fde.py), exact inner-product search.
faiss-cpu is a benchmark-only dependency (the `bench` extra).
"""

from __future__ import annotations

import numpy as np

from bench.muvera_fde import FdeEncoder, cross_check
from lateint.index.first_stage import kmeans
from lateint.index.first_stage.query import top_per_query

PQ_BYTES_PER_SUBVECTOR = 1  # 8-bit codes
PQ_DIMS_PER_SUBVECTOR = 4
TRAINING_VECTORS = 1 << 17


def _faiss_bytes(index) -> int:
    import faiss

    return int(faiss.serialize_index(index).nbytes)


def faiss_ivfpq_tokens(data, nprobes, depths):
    import faiss

    regions = np.ascontiguousarray(data.concepts[data.region_mask])  # [M, C]
    owner = np.nonzero(data.region_mask)[0].astype(np.int64)  # [M] image of each region
    dim = regions.shape[1]
    nlist = kmeans.number_of_centroids(regions.shape[0])
    subvectors = max(1, dim // PQ_DIMS_PER_SUBVECTOR)
    index = faiss.IndexIVFPQ(
        faiss.IndexFlatIP(dim), dim, nlist, subvectors, 8, faiss.METRIC_INNER_PRODUCT
    )
    sample = regions[np.random.default_rng(0).permutation(regions.shape[0])[:TRAINING_VECTORS]]
    index.train(sample)
    index.add(regions)
    sizes = {"index_bytes": _faiss_bytes(index), "memory_bytes": _faiss_bytes(index) + owner.nbytes}
    for nprobe in nprobes:
        for depth in depths:

            def search(query_side, n, nprobe=nprobe, depth=depth):
                index.nprobe = nprobe
                mask = np.asarray(query_side.mask)
                query_of_word, _ = np.nonzero(mask)
                words = np.ascontiguousarray(query_side.concepts[mask], np.float32)  # [W, C]
                similarity, hits = index.search(words, depth)  # [W, k'] each
                return _union_sum_of_best(query_of_word, owner, similarity, hits, mask.shape[0], n)

            yield (
                "faiss_ivfpq_tokens",
                {"nlist": nlist, "pq_subvectors": subvectors, "nprobe": nprobe, "k_prime": depth},
                search,
                sizes,
            )


def _union_sum_of_best(query_of_word, owner, similarity, hits, num_queries: int, n: int):
    """query_of_word [W]; similarity / hits [W, k'] region hits (-1: none) -> top n images per
    query by the sum over words of the word's best hit in the image."""
    word = np.repeat(np.arange(hits.shape[0]), hits.shape[1])
    hits, similarity = hits.reshape(-1), similarity.reshape(-1).astype(np.float32)
    found = hits >= 0
    word, images, similarity = word[found], owner[hits[found]], similarity[found]
    # Best hit per (word, image), then the sum per (query, image).
    num_images = int(owner.max()) + 1 if owner.size else 1
    keys = word.astype(np.int64) * num_images + images
    order = np.lexsort((-similarity, keys))
    keys, similarity = keys[order], similarity[order]
    first = np.concatenate([[True], keys[1:] != keys[:-1]]) if keys.size else keys.astype(bool)
    word, images, best = keys[first] // num_images, keys[first] % num_images, similarity[first]
    pair = query_of_word[word].astype(np.int64) * num_images + images
    order = np.argsort(pair, kind="stable")
    pair, best = pair[order], best[order]
    starts = np.flatnonzero(np.concatenate([[True], pair[1:] != pair[:-1]])) if pair.size else pair
    totals = np.add.reduceat(best, starts) if pair.size else best
    unique = pair[starts] if pair.size else pair
    ids, _ = top_per_query(unique // num_images, unique % num_images, totals, num_queries, n)
    return ids


def faiss_global(data, kind: str, settings):
    """kind 'hnsw' (settings: efSearch values) or 'ivfflat' (settings: nprobe values)."""
    import faiss

    vectors = np.ascontiguousarray(data.global_vectors, np.float32)
    dim = vectors.shape[1]
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = 80
        parameters = {"M": 32, "efConstruction": 80}
    else:
        nlist = kmeans.number_of_centroids(vectors.shape[0])
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
        parameters = {"nlist": nlist}
    index.add(vectors)
    sizes = {"index_bytes": _faiss_bytes(index), "memory_bytes": _faiss_bytes(index)}
    for value in settings:

        def search(query_side, n, value=value):
            if kind == "hnsw":
                index.hnsw.efSearch = max(value, n)
            else:
                index.nprobe = value
            vectors = np.ascontiguousarray(query_side.global_vector, np.float32)
            return index.search(vectors, n)[1].astype(np.int64)

        key = "efSearch" if kind == "hnsw" else "nprobe"
        yield f"faiss_{kind}_global", dict(parameters, **{key: value}), search, sizes


def muvera(data, configuration, queries_for_check):
    """configuration: (repetitions, simhash_bits, projection or None)."""
    for repetitions, bits, projection in [configuration]:
        encoder = FdeEncoder(data.concepts.shape[2], repetitions, bits, projection)
        encodings = encoder.documents(data.concepts, data.region_mask)  # [N, D]
        rows = min(64, data.concepts.shape[0])
        check = cross_check(
            encoder,
            data.concepts[:rows],
            data.region_mask[:rows],
            np.asarray(queries_for_check.concepts[:16]),
            np.asarray(queries_for_check.mask[:16]),
        )
        sizes = {"index_bytes": encodings.nbytes, "memory_bytes": encodings.nbytes}

        def search(query_side, n, encoder=encoder, encodings=encodings):
            scores = encoder.queries(query_side.concepts, query_side.mask) @ encodings.T
            count = min(n, scores.shape[1])
            top = np.argpartition(-scores, count - 1, axis=1)[:, :count]
            order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
            ids = np.full((scores.shape[0], n), -1, np.int64)
            ids[:, :count] = np.take_along_axis(top, order, axis=1)
            return ids

        settings = {
            "repetitions": repetitions,
            "simhash_bits": bits,
            "projection": projection,
            "fde_dim": encoder.output_dim,
            "muvera_python_max_abs_diff": check,
        }
        yield "muvera", settings, search, sizes
