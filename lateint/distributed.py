"""Joining JAX's multi-controller runtime (jax.distributed), for the binaries that scale out.

    initialize("10.0.0.1:1234", num_processes=2, process_id=0)   # or all None: auto-detection

Every process calls it before anything else touches JAX. With every argument None,
jax.distributed's cluster auto-detection applies (Slurm, TPU pods, Kubernetes, MPI). On CPU the
collectives across processes (the sharded first stages' all-gathers) run on gloo, which this
selects; on GPU and TPU the platform's own collectives are used.
"""

from __future__ import annotations

import jax


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """jax.distributed.initialize with CPU collectives over gloo; see the module docstring."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )
