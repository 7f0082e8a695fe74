"""Devices, meshes and placement: the one-axis ``Mesh`` a run spreads over, and multi-host setup.

One ``Mesh`` with a single axis, ``"devices"``, covers the devices a run uses. The trainer's batch
source places the data with ``place``/``replicated``/``split_batch``; ``landscape.sharding`` builds
the data-parallel steps on the same mesh. With one device none of this is used.

Several hosts: call ``initialize_distributed()`` in every process before anything else touches
JAX (``landscape probe --distributed`` does); every process then sees every host's devices, builds
the same mesh and the same global batches, and only process 0 writes records and figures
(docs/devices.md shows the commands).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "devices"

# Environment variables read by ``initialize_distributed``. JAX itself reads the coordinator's;
# the other two follow its naming. SLURM, Open MPI and TPU pods are detected by JAX without them.
COORDINATOR_ENV = "JAX_COORDINATOR_ADDRESS"
NUM_PROCESSES_ENV = "JAX_NUM_PROCESSES"
PROCESS_ID_ENV = "JAX_PROCESS_ID"


def initialize_distributed() -> tuple[int, int]:
    """Joins a multi-host run through ``jax.distributed.initialize``; returns (process, count).

    Reads ``$JAX_COORDINATOR_ADDRESS`` (host:port of process 0), ``$JAX_NUM_PROCESSES`` and
    ``$JAX_PROCESS_ID``; where they are unset, JAX's cluster auto-detection (SLURM, Open MPI,
    TPU pods) fills them in. Must run before any other JAX call in the process.
    """
    num = os.environ.get(NUM_PROCESSES_ENV)
    pid = os.environ.get(PROCESS_ID_ENV)
    jax.distributed.initialize(
        coordinator_address=os.environ.get(COORDINATOR_ENV),
        num_processes=int(num) if num else None,
        process_id=int(pid) if pid else None,
    )
    return jax.process_index(), jax.process_count()


def is_primary() -> bool:
    """Returns True in the process that writes records, figures and reports (process 0)."""
    return jax.process_index() == 0


def resolve_device_count(requested: int | str | None, batch_size: int) -> int:
    """Returns how many devices a run uses.

    ``None`` or ``"all"``: all visible devices, or the largest count below it that divides the
    batch size (the batch is split evenly). A number: exactly that many, which must divide the
    batch size and not exceed the visible devices (ValueError otherwise, with the reason). A
    multi-host run must use every device of every host.
    """
    visible = jax.device_count()
    if requested is None or requested == "all":
        count = max(n for n in range(1, visible + 1) if batch_size % n == 0)
    else:
        count = int(requested)
        if not 1 <= count <= visible:
            raise ValueError(
                f"--devices {count}: choose 1 to {visible} (the visible devices) or all"
            )
        if batch_size % count:
            raise ValueError(
                f"--devices {count} does not divide the batch size {batch_size}: the batch is "
                "split evenly across devices"
            )
    if jax.process_count() > 1 and count != visible:
        raise ValueError(
            f"a multi-host run uses all {visible} devices of all hosts: the batch size "
            f"{batch_size} must be a multiple of {visible}, and --devices all"
        )
    return count


def make_mesh(count: int) -> Mesh | None:
    """Returns a one-axis mesh over the first ``count`` devices, or None for one device."""
    if count <= 1:
        return None
    return Mesh(np.asarray(jax.devices()[:count]), (AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    """Returns the sharding that keeps a full copy on every device of ``mesh``."""
    return NamedSharding(mesh, P())


def split_batch(mesh: Mesh) -> NamedSharding:
    """Returns the sharding that splits the leading (batch) axis across the mesh's devices."""
    return NamedSharding(mesh, P(AXIS))


def place(tree: Any, sharding: NamedSharding) -> Any:
    """Returns ``tree`` as global arrays laid out by ``sharding``.

    Every process passes the same host values (the batch at step t is a function of (seed, t));
    each one supplies the pieces its own devices hold, so this works on one host or several.
    """

    def one(x):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

    return jax.tree.map(one, tree)


def sync(name: str) -> None:
    """Waits until every process of a multi-host run reaches this point (no-op on one host)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
