"""Multi-host start-up: `jax.distributed.initialize` from flags or the environment.

One process needs nothing. For several, give the coordinator's `host:port`, the process count and
this process's id, either as arguments (train.py's --coordinator-address, --num-processes,
--process-id) or in the environment variables below. Cluster launchers that JAX detects on its own
(SLURM, Open MPI, Kubernetes, Cloud TPU) need neither: set YOCO_DISTRIBUTED=1 there.
"""

from __future__ import annotations

import os

import jax

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
ENV_AUTO = "YOCO_DISTRIBUTED"


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    cpu_collectives: str = "gloo",
) -> bool:
    """Joins the other processes of a multi-host run; returns whether it did.

    Arguments win over the environment. A single process (no coordinator, count 1) is a no-op.
    On CPU the cross-process collectives use `cpu_collectives` (gloo ships with jaxlib).
    """
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR)
    num_processes = num_processes or _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    automatic = os.environ.get(ENV_AUTO, "") not in ("", "0")

    if not automatic and (num_processes or 1) == 1 and not coordinator_address:
        return False
    if not automatic and (
        coordinator_address is None or num_processes is None or process_id is None
    ):
        raise ValueError(
            "a multi-host run needs the coordinator address, the process count and this "
            f"process's id: pass --coordinator-address, --num-processes and --process-id (or set "
            f"{ENV_COORDINATOR}, {ENV_NUM_PROCESSES} and {ENV_PROCESS_ID}); got "
            f"{coordinator_address=}, {num_processes=}, {process_id=}"
        )
    # Only the CPU backend reads this; it must be set before any backend starts.
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
    jax.distributed.initialize(
        coordinator_address=coordinator_address,
        num_processes=num_processes,
        process_id=process_id,
    )
    return True


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else None
