"""Running one variant over several devices with ``jax.sharding``: data-parallel training and the
probe's step sizes spread across devices, on one host or several.

One ``Mesh`` with a single axis, ``"devices"``, covers the devices a run uses:

* training is data parallel: each batch is split along its first axis across the devices, the
  parameters, optimiser state and BatchNorm averages are replicated. The step is compiled once
  for the global batch, so XLA's SPMD partitioner turns every mean over the batch (the loss, and
  BatchNorm's batch statistics, docs/definitions.md#batchnorms-closed-form) into local partial
  sums and an all-reduce: the numbers are those of the global batch, whatever the device count
  (tested against one device);
* the probe spreads its K step sizes across the devices (padded to a multiple of the device
  count with copies of the last step size, the copies dropped afterwards); each device probes
  its share on the whole batch, one after another with the run's probe strategy.

With one device none of this is used: the trainer runs exactly the single-device code. The mesh
itself, data placement and multi-host setup live in ``landscape.mesh``.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from landscape.mesh import AXIS, replicated
from landscape.probe import ProbeResult, probe
from landscape.train import TrainState, step_batch


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
