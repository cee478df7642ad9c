"""Spherical k-means: the centroid-count rule, cluster recovery (full, mini-batch), assignment."""

import numpy as np
import pytest

from lateint.index.first_stage import kmeans


def clustered(rng, clusters=8, per_cluster=60, dim=16, noise=0.15):
    """Unit vectors around `clusters` random directions -> (vectors [M, dim], labels [M])."""
    centres = rng.standard_normal((clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(clusters), per_cluster)
    vectors = centres[labels] + noise * rng.standard_normal((labels.size, dim)) / np.sqrt(dim)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    order = rng.permutation(labels.size)
    return vectors[order].astype(np.float32), labels[order]


def purity(assigned, labels):
    """Fraction of vectors whose centroid's majority label is their own; 1.0 = clusters found."""
    correct = 0
    for centroid in np.unique(assigned):
        members = labels[assigned == centroid]
        correct += np.bincount(members).max()
    return correct / labels.size


@pytest.mark.parametrize(
    "count, expected",
    [(1, 1), (5, 5), (100, 32), (200_000, 2048), (2_000_000, 4096), (10**12, 65536)],
)
def test_number_of_centroids_rule(count, expected):
    assert kmeans.number_of_centroids(count) == expected


def test_number_of_centroids_rejects_empty():
    with pytest.raises(ValueError, match="expected >= 1"):
        kmeans.number_of_centroids(0)


def test_kmeans_plus_plus_recovers_clusters(rng):
    vectors, labels = clustered(rng)
    centroids = kmeans.train_centroids(vectors, 8, seed=1)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0, rtol=1e-5)
    assigned, similarity = kmeans.assign(vectors, centroids)
    assert purity(assigned, labels) == 1.0
    assert len(np.unique(assigned)) == 8
    assert similarity.min() > 0.9


def test_random_init_converges(rng):
    # A random init may put two seeds in one cluster (a local optimum), so less than perfect.
    vectors, labels = clustered(rng)
    assigned, _ = kmeans.assign(vectors, kmeans.train_centroids(vectors, 8, init="random"))
    assert purity(assigned, labels) >= 0.7


def test_minibatch_recovers_clusters(rng):
    vectors, labels = clustered(rng, per_cluster=300)
    centroids = kmeans.train_centroids(vectors, 8, full_batch_limit=100, minibatch_steps=60)
    assigned, _ = kmeans.assign(vectors, centroids)
    assert purity(assigned, labels) >= 0.99


def test_training_is_deterministic(rng):
    vectors, _ = clustered(rng)
    first = kmeans.train_centroids(vectors, 6, seed=3)
    np.testing.assert_array_equal(first, kmeans.train_centroids(vectors, 6, seed=3))


def test_assignment_of_a_row_does_not_depend_on_the_other_rows(rng):
    vectors, _ = clustered(rng, clusters=50, per_cluster=100, noise=1.0)  # 5000 rows, 2 blocks
    centroids = vectors[rng.choice(vectors.shape[0], 64, replace=False)]
    ids, similarities = kmeans.assign(vectors, centroids)
    reference = vectors @ centroids.T
    np.testing.assert_array_equal(ids, reference.argmax(axis=1))
    np.testing.assert_allclose(similarities, reference.max(axis=1), rtol=1e-5)
    for subset in (np.arange(4090, 4100), rng.choice(vectors.shape[0], 777, replace=False)):
        part_ids, part_similarities = kmeans.assign(vectors[subset], centroids)
        np.testing.assert_array_equal(part_ids, ids[subset])
        np.testing.assert_array_equal(part_similarities, similarities[subset])


def test_rejects_bad_arguments(rng):
    vectors, _ = clustered(rng, clusters=2, per_cluster=3)
    with pytest.raises(ValueError, match=r"num_centroids expected in \[1, 6\]"):
        kmeans.train_centroids(vectors, 7)
    with pytest.raises(ValueError, match="init expected"):
        kmeans.train_centroids(vectors, 2, init="forgy")
    with pytest.raises(ValueError, match=r"vectors expected \[M, 16\]"):
        kmeans.assign(vectors[:, :8], vectors)


MESH_CHILD = r"""
import json, os, sys
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"
import numpy as np
from lateint.index.first_stage import kmeans

mesh = kmeans.local_mesh()
rng = np.random.default_rng(7)
centres = rng.normal(size=(40, 16))
vectors = centres[rng.integers(0, 40, 30000)] + 0.3 * rng.normal(size=(30000, 16))
vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
out = {"devices": 0 if mesh is None else mesh.size}
for path, options in (("full", {}), ("minibatch", {"full_batch_limit": 1000, "minibatch_steps": 60})):
    one = kmeans.train_centroids(vectors, 40, seed=2, iterations=6, **options)
    split = kmeans.train_centroids(vectors, 40, seed=2, iterations=6, mesh=mesh, **options)
    out[path] = float(np.abs(one - split).max())
ids, similarities = kmeans.assign(vectors[:9001], one)
split_ids, split_similarities = kmeans.assign(vectors[:9001], one, mesh)
out["assign_ids_equal"] = bool(np.array_equal(ids, split_ids))
out["assign_similarity_diff"] = float(np.abs(similarities - split_similarities).max())
print(json.dumps(out))
"""


def test_training_and_assignment_split_over_devices_match_one_device():
    """With 4 simulated devices, blocks and batches split over the 'rows' mesh give one
    device's assignment and centroids up to the rounding of the cross-device sums."""
    import json
    import subprocess
    import sys

    child = subprocess.run(
        [sys.executable, "-c", MESH_CHILD], capture_output=True, text=True, timeout=600
    )
    assert child.returncode == 0, child.stderr[-3000:]
    out = json.loads(child.stdout.strip().splitlines()[-1])
    assert out["devices"] == 4
    assert out["full"] < 1e-5 and out["minibatch"] < 1e-5, out
    assert out["assign_ids_equal"] and out["assign_similarity_diff"] < 1e-6, out


def test_assignment_blocks_shrink_for_large_dictionaries(rng):
    """[B, K] similarities of one block stay within BLOCK_SIMILARITIES; the ids are still the
    first maximum of every row."""
    assert [kmeans.assign_block(k) for k in (1, 2048, 4096, 8192, 65536)] == [
        4096,
        4096,
        2048,
        1024,
        256,
    ]
    vectors = rng.normal(size=(2500, 16)).astype(np.float32)
    centroids = rng.normal(size=(5000, 16)).astype(np.float32)  # blocks of 1024 rows
    ids, similarities = kmeans.assign(vectors, centroids)
    expected = vectors @ centroids.T
    np.testing.assert_array_equal(ids, expected.argmax(axis=1))
    np.testing.assert_allclose(similarities, expected.max(axis=1), rtol=1e-5, atol=1e-5)
