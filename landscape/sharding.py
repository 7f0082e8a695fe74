"""Running one variant over several devices with ``jax.sharding``: data-parallel training and the
probe's step sizes spread across devices, on one host or several.

One ``Mesh`` with a single axis, ``"devices"``, covers the devices a run uses:

* training is data parallel: each batch is split along its first axis across the devices, the
  parameters, optimiser state and BatchNorm averages are replicated. The step is compiled once
  for the global batch, so XLA's SPMD partitioner turns every mean over the batch (the loss, and
  BatchNorm's batch statistics, Santurkar et al. 2018 section 2 / Ioffe & Szegedy's eq. in
  Algorithm 1) into local partial sums and an all-reduce: the numbers are those of the global
  batch, whatever the device count (tested against one device in tests/test_sharding.py);
* the probe spreads its K step sizes across the devices (padded to a multiple of the device
  count with copies of the last step size, the copies dropped afterwards); each device probes
  its share on the whole batch, one after another with the run's probe strategy.

With one device none of this is used: the trainer runs exactly the single-device code.

Several hosts: call ``initialize_distributed()`` in every process before anything else touches
JAX (``landscape probe --distributed`` does); every process then sees every host's devices, builds
the same mesh and the same global batches, and only process 0 writes records and figures. For two
hosts, with host A at 10.0.0.1 and a run directory both hosts see (orbax writes each process's
part of a checkpoint there)::

    # on host A                                      # on host B
    export JAX_COORDINATOR_ADDRESS=10.0.0.1:8476     export JAX_COORDINATOR_ADDRESS=10.0.0.1:8476
    export JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=0      export JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=1
    landscape probe --preset paper --distributed --out /shared/runs/paper   (the same on both)

Two processes on one CPU machine (``JAX_PLATFORMS=cpu``, ``XLA_FLAGS=
--xla_force_host_platform_device_count=2``, coordinator ``localhost:8476``) run the same way; that
is how tests/test_sharding.py checks it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from landscape.probe import ProbeResult, probe
from landscape.train import TrainState, step_batch

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


def shard_train_step(train_step: Callable, mesh: Mesh) -> Callable:
    """Returns the data-parallel ``train_step(state, batch)`` for a replicated state.

    ``batch`` arrives split across the devices (see ``BatchSource``); everything returned (new
    state, loss, accuracy, gradient) is replicated, so the gradient is all-reduced once and the
    host can read any output from process 0.
    """
    return jax.jit(train_step, out_shardings=replicated(mesh))


def shard_eval_step(eval_step: Callable, mesh: Mesh) -> Callable:
    """Returns ``eval_step`` with its summed loss and correct count replicated."""
    return jax.jit(eval_step, out_shardings=replicated(mesh))


def make_sharded_probe_step(
    loss_fn: Callable, mesh: Mesh, strategy: str, map_batch_size: int = 1
) -> Callable:
    """Returns jitted ``probe_step(state, batch, grads, loss0, etas) -> ProbeResult``.

    The same measurement as ``runs.make_probe_step``, with the K step sizes split across the
    mesh: padded to a multiple of the device count (with copies of the last step size), each
    device probing its K / devices step sizes with ``strategy``, on its own full copy of the
    parameters, gradient and batch; the padding is dropped and the result replicated.

    ``shard_map`` states the split outright. ``vmap`` over a sharded eta axis (tried first) let
    XLA's partitioner fold the eta axis into the convolutions' channels and all-gather
    activations between devices (144 all-gathers for a width-1/8 VGG-11); here the only
    communication is the gather of the batch before and of the K results after.
    """
    devices = mesh.devices.size
    repl = replicated(mesh)

    def probe_share(params, batch_stats, batch, grads, loss0, etas_share):
        result = probe(
            loss_fn,
            params,
            batch,
            etas_share,
            model_state=batch_stats,
            grad=grads,
            loss0=loss0,
            strategy=strategy,
            map_batch_size=map_batch_size,
        )
        return result.loss, result.grad_dist, result.step_norm, result.grad_norm

    probe_shares = jax.shard_map(
        probe_share,
        mesh=mesh,
        in_specs=(P(), P(), P(), P(), P(), P(AXIS)),
        out_specs=(P(AXIS), P(AXIS), P(AXIS), P()),
        check_vma=False,  # grad_norm is computed from replicated inputs: the same everywhere
    )

    @jax.jit
    def probe_step(state: TrainState, batch: dict, grads, loss0, etas) -> ProbeResult:
        # Every step size needs the whole batch: BatchNorm normalises with the global batch's
        # statistics, as the optimiser saw them in the training step.
        batch = jax.lax.with_sharding_constraint(step_batch(state, batch), repl)
        count = etas.shape[0]
        padded = jnp.pad(etas, (0, -count % devices), mode="edge")
        loss, grad_dist, step_norm, grad_norm = probe_shares(
            state.params, state.batch_stats, batch, grads, loss0, padded
        )
        result = ProbeResult(loss[:count], grad_dist[:count], step_norm[:count], loss0, grad_norm)
        return jax.lax.with_sharding_constraint(result, repl)

    return probe_step


def sync(name: str) -> None:
    """Waits until every process of a multi-host run reaches this point (no-op on one host)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
