"""W precompute workers writing one INDEX: who they are, which shards each owns, who finalizes.

The pattern of jax's array_serialization and t5x's infer.py, with no coordinator to depend on:

- every worker opens the INDEX or, if it has no manifest yet, creates it with
  `ActivationStore.create(..., shared=True)`: ids, arrays and manifest are each created unless
  another worker already did (the manifest last, by an atomic no-clobber link), so workers may
  start in any order and the first manifest wins; the others check it is theirs;
- worker i of W owns the shards s with s % W == i (whole shards only: one writer per shard file,
  as zarr3 shards need) and journals them in its own file, `INDEX/journal/worker-i-of-W.json`;
  no file is rewritten by two processes;
- after its last unit, a worker reads every journal; if they cover [0, N) it finalizes (region
  count, then `complete: true` written last). Two workers finishing together both finalize the
  same content, so finalizing is idempotent. Until then the INDEX reads as unfinished.

A killed worker restarts alone: it skips its journaled shards. `jax.distributed` is optional:
with it, W and i default to `jax.process_count()` and `jax.process_index()`, but the workers
exchange nothing through it; each encodes on its own process's devices.
"""

from __future__ import annotations

import jax
from absl import logging

from lateint.index import manifest as manifest_lib


def resolve(num_workers: int | None, worker_index: int | None) -> tuple[int, int]:
    """(W, i): the given values, else jax.distributed's process count and index when it is
    initialized, else (1, 0). Raises ValueError unless 0 <= i < W."""
    distributed = jax.distributed.is_initialized()
    if num_workers is None:
        num_workers = jax.process_count() if distributed else 1
    if worker_index is None:
        worker_index = jax.process_index() if distributed else 0
    if num_workers < 1 or not 0 <= worker_index < num_workers:
        raise ValueError(
            f"--worker_index must be in [0, --num_workers), got worker_index {worker_index} "
            f"of num_workers {num_workers}"
        )
    return int(num_workers), int(worker_index)


def owned_units(units, shard_rows: int, num_workers: int, worker_index: int):
    """The shard-aligned [start, stop) units of `units` whose shard worker `worker_index` owns."""
    return [
        (start, stop)
        for start, stop in units
        if (start // shard_rows) % num_workers == worker_index
    ]


def finalize_if_covered(store, num_workers: int, worker_index: int) -> dict:
    """Finalizes the INDEX when every journal together covers [0, N); else logs which ranges
    other workers still owe. Returns the manifest on disk (complete or not)."""
    index_dir = store.index_dir
    current = manifest_lib.read_manifest(index_dir, require_complete=False)
    if current["complete"]:
        return current
    missing = manifest_lib.missing_ranges(index_dir, store.num_images)
    if not missing:
        return store.finalize()
    owners = sorted({(start // store.shard_rows) % num_workers for start, _ in missing})
    logging.info(
        "worker %d of %d: its shards are done; %d images in %d ranges are still owed "
        "(first %s; by workers %s of this run): the worker that journals the last one "
        "finalizes %s",
        worker_index,
        num_workers,
        sum(stop - start for start, stop in missing),
        len(missing),
        missing[0],
        owners,
        index_dir,
    )
    return current
