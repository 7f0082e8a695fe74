"""Curvature over training: Hessian estimates at a run's checkpoints, on the batch each step was
trained on (docs/curvature.md).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from landscape.checkpoints import Checkpointer
from landscape.curvature import (
    ALL_PARAMETERS,
    MODES,
    GradientLink,
    HessianEstimate,
    make_eval_loss_fn,
    make_hessian_estimator,
    make_link_fn,
    select_paths,
    stack_batches,
)
from landscape.data import load_dataset
from landscape.probe import effective_beta, hessian_vector_product
from landscape.results import HESSIAN_FILE, RecordWriter, read_rows
from landscape.rundir import RunError, check_same_data, load_config, locks_run_dir
from landscape.runs import Trainer, check_variant
from landscape.train import step_batch


def _record_key(row: dict[str, Any]) -> tuple:
    return (row.get("step"), row.get("mode"), row.get("block", ALL_PARAMETERS), row.get("batches"))


def choose_steps(
    saved: Sequence[int], every: int = 1, steps: Iterable[int] | None = None
) -> list[int]:
    """Returns every ``every``-th saved checkpoint step, or the requested ``steps`` among them.

    Raises ``ValueError`` for a requested step without a checkpoint (naming the nearest ones).
    """
    saved = sorted(saved)
    if steps is None:
        return saved[:: max(every, 1)]
    wanted = sorted(set(int(s) for s in steps))
    missing = [s for s in wanted if s not in set(saved)]
    if missing:
        near = sorted(saved, key=lambda s: abs(s - missing[0]))[:4]
        raise ValueError(
            f"no checkpoint at step {missing[0]}; the nearest saved are {sorted(near)} "
            f"({len(saved)} checkpoints from {saved[0] if saved else '-'} to "
            f"{saved[-1] if saved else '-'})"
        )
    return wanted


@locks_run_dir
def sharpness_over_training(
    run_dir: str | Path,
    *,
    every: int = 1,
    steps: Iterable[int] | None = None,
    variants: Sequence[str] | None = None,
    top_k: int = 1,
    num_iters: int = 20,
    trace_probes: int = 10,
    density_probes: int = 0,
    power_iters: int = 0,
    mode: str = "train",
    num_batches: int = 1,
    blocks: Sequence[str | None] = (None,),
    small_eta_factor: float = 1e-3,
    dataset: Any = None,
    on_plan: Callable[[dict[str, int]], None] | None = None,
    on_record: Callable[[str, dict[str, Any]], None] | None = None,
) -> dict[str, Path]:
    """Measures the curvature at the saved checkpoints of a run, appending to hessian.jsonl.

    For each variant and each chosen checkpoint (every ``every``-th saved one, or ``steps``),
    the state is restored and the batch it was trained on rebuilt (as ``runs.reprobe`` does);
    with ``num_batches`` > 1 the batches of the next steps are added and the Hessian averaged
    over them. Per step and per block (``blocks``: patterns on parameter paths, None = all) one
    record is appended to ``RUN_DIR/<variant>/hessian.jsonl`` as soon as it is computed:

    ``step``, ``mode`` ("train": BatchNorm on the batch's statistics, as the optimiser sees the
    loss; "eval": running averages), ``block``, ``batches``; ``top_eigenvalues`` (largest first;
    ``lambda_max`` the first) and ``ritz_values`` from ``num_iters`` Lanczos iterations;
    ``trace`` and ``trace_stderr`` (Hutchinson, ``trace_probes`` Rademacher probes);
    ``power_eigenvalues``/``power_residuals`` when ``power_iters``; ``density_nodes``/
    ``density_weights`` (SLQ) when ``density_probes``; on the step's own batch and all
    parameters: ``loss``, ``grad_norm``, ``hg_ratio`` = ||H g|| / ||g||, ``beta_small`` = the
    effective beta at ``eta_small`` = ``small_eta_factor`` x lr and ``beta`` over the run's
    grid (Santurkar et al., App. A.2.2); ``lr``, ``eos`` = 2 / lr (the edge of stability of
    gradient descent), ``iterations``, ``seconds`` (wall time of the record, compilation
    excluded). A record whose (step, mode, block, batches) is already in the file is skipped.

    Returns the files written, by variant. ``on_plan({variant: records to do})`` is called once
    before any work, ``on_record(variant, row)`` after each record (progress bars).
    """
    if mode not in MODES:
        raise RunError(f"unknown mode {mode!r}; choose train or eval")
    for name, value in (("top_k", top_k), ("num_iters", num_iters), ("num_batches", num_batches)):
        if value < 1:
            raise RunError(f"{name} must be positive, got {value}")
    if min(trace_probes, density_probes, power_iters) < 0 or every < 1:
        raise RunError("probe and iteration counts must be non-negative, every positive")
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    variants = list(variants or config.variants)
    unknown = [v for v in variants if v not in config.variants]
    if unknown:
        raise RunError(f"variant {unknown[0]!r} is not in this run ({', '.join(config.variants)})")
    block_names = [ALL_PARAMETERS if b is None else b for b in blocks] or [ALL_PARAMETERS]

    # Plan first (cheap, no data): a bad step or pattern fails before any work.
    plans: dict[str, list[int]] = {}
    for variant in variants:
        ckpt_dir = run_dir / variant / "checkpoints"
        if not ckpt_dir.exists():
            raise RunError(f"variant {variant!r} has no checkpoints in {run_dir}")
        with Checkpointer(ckpt_dir, config.checkpoint) as checkpointer:
            saved = checkpointer.steps()
        try:
            chosen = choose_steps(saved, every, steps)
        except ValueError as err:
            raise RunError(f"{variant}: {err}") from None
        done = {_record_key(r) for r in read_rows(run_dir / variant / HESSIAN_FILE)}
        plans[variant] = [
            s for s in chosen if any((s, mode, b, num_batches) not in done for b in block_names)
        ]
    if on_plan is not None:
        on_plan({v: len(s) for v, s in plans.items()})
    if not any(plans.values()):
        return {v: run_dir / v / HESSIAN_FILE for v in variants}

    if dataset is None:
        dataset = load_dataset(config.data, progress=False)
    check_same_data(run_dir, dataset)
    lr = float(config.optimizer.learning_rate)
    grid = config.probe.grid(lr)
    eta_small = small_eta_factor * lr
    written = {}
    for variant in variants:
        path = run_dir / variant / HESSIAN_FILE
        written[variant] = path
        if not plans[variant]:
            continue
        check_variant(config, variant, dataset, run_dir)  # still the run's network
        trainer = Trainer(config, variant, dataset)
        loss_fn = (
            trainer.loss_fn if mode == "train" else make_eval_loss_fn(trainer.network, trainer.loss)
        )
        template = trainer.initial_state()
        for b in block_names:
            try:
                select_paths(template.params, b)
            except ValueError as err:
                raise RunError(str(err)) from None
        estimators = {
            b: make_hessian_estimator(
                loss_fn,
                top_k=top_k,
                num_iters=num_iters,
                power_iters=power_iters,
                trace_probes=trace_probes,
                density_probes=density_probes,
                block=None if b == ALL_PARAMETERS else b,
            )
            for b in block_names
        }
        link = make_link_fn(loss_fn, trainer.probe_strategy)
        etas = jnp.asarray([eta_small, *grid], jnp.float32)
        done = {_record_key(r) for r in read_rows(path)}
        root = jax.random.fold_in(jax.random.key(config.seed), 0x4E55)  # apart from training's
        with (
            Checkpointer(run_dir / variant / "checkpoints", config.checkpoint) as checkpointer,
            RecordWriter(path) as writer,
        ):
            for step in plans[variant]:
                state = checkpointer.restore_or_skip(step, template)
                if state is None:
                    continue
                batches = [
                    step_batch(state, trainer.train_source(step + i)) for i in range(num_batches)
                ]
                stacked = stack_batches(batches)
                key = jax.random.fold_in(root, step)
                t0 = time.perf_counter()
                g = jax.device_get(link(state.params, state.batch_stats, batches[0], etas))
                link_s = time.perf_counter() - t0
                common = _link_fields(g, eta_small, grid, lr)
                for b in block_names:
                    if (step, mode, b, num_batches) in done:
                        continue
                    t0 = time.perf_counter()
                    est = jax.device_get(
                        estimators[b](state.params, state.batch_stats, stacked, key)
                    )
                    row = {
                        "step": step,
                        "mode": mode,
                        "block": b,
                        "batches": num_batches,
                        **_estimate_fields(est, num_iters, trace_probes, power_iters),
                        **common,
                        "seconds": time.perf_counter() - t0 + link_s,
                    }
                    writer.write([row])
                    if on_record is not None:
                        on_record(variant, row)
    return written


def _link_fields(
    g: GradientLink, eta_small: float, grid: Sequence[float], lr: float
) -> dict[str, Any]:
    dist, norm = np.asarray(g.grad_dist, np.float64), np.asarray(g.step_norm, np.float64)
    grad_norm = float(g.grad_norm)
    return {
        "loss": float(g.loss),
        "grad_norm": grad_norm,
        "hg_ratio": float(g.hg_norm) / grad_norm if grad_norm > 0 else float("nan"),
        "eta_small": eta_small,
        "beta_small": float(effective_beta(dist[:1], norm[:1])),
        "etas": [float(e) for e in grid],
        "beta": float(effective_beta(dist[1:], norm[1:])),
        "lr": lr,
        "eos": 2.0 / lr,
    }


def _estimate_fields(
    est: HessianEstimate, num_iters: int, trace_probes: int, power_iters: int
) -> dict[str, Any]:
    top = np.asarray(est.top_eigenvalues, np.float64)
    row: dict[str, Any] = {
        "lambda_max": float(top[0]),
        "top_eigenvalues": top.tolist(),
        "ritz_values": np.asarray(est.ritz_values, np.float64).tolist(),
        "iterations": int(np.size(est.ritz_values)),
        "trace": float(est.trace),
        "trace_stderr": float(est.trace_stderr),
        "trace_probes": trace_probes,
    }
    if power_iters:
        row["power_iterations"] = power_iters
        row["power_eigenvalues"] = np.asarray(est.power_eigenvalues, np.float64).tolist()
        row["power_residuals"] = np.asarray(est.power_residuals, np.float64).tolist()
    if np.size(est.density.nodes):
        row["density_nodes"] = np.asarray(est.density.nodes, np.float64).tolist()
        row["density_weights"] = np.asarray(est.density.weights, np.float64).tolist()
    return row


def measure_cost(
    config: Any, dataset: Any, *, variant: str = "batchnorm", num_iters: int = 20, repeats: int = 3
) -> dict[str, float]:
    """Times one top-eigenvalue estimate against one gradient evaluation, side by side.

    On ``config``'s network for ``variant`` at initialisation, on the batch of step 0: the
    candidates (a jitted gradient, one HVP, ``num_iters`` Lanczos iterations with top_k=1) run in
    alternating rounds and the medians are compared, so a shared machine slows them alike.
    Returns seconds (``gradient_s``, ``hvp_s``, ``top_eigenvalue_s``, compile times) and the
    ratios ``hvp_per_gradient`` and ``top_eigenvalue_per_gradient``.
    """
    trainer = Trainer(config, variant, dataset)
    state = trainer.initial_state()
    batch = step_batch(state, trainer.train_source(0))
    stacked = stack_batches([batch])
    key = jax.random.key(0)
    loss_fn = trainer.loss_fn
    grad = jax.jit(jax.grad(lambda p, s, b: loss_fn(p, s, b)[0]))
    hvp = jax.jit(lambda p, s, b, v: hessian_vector_product(loss_fn, p, b, v, model_state=s))
    estimate = make_hessian_estimator(loss_fn, top_k=1, num_iters=num_iters)
    args = (state.params, state.batch_stats)
    candidates = {
        "gradient": lambda: grad(*args, batch),
        "hvp": lambda: hvp(*args, batch, state.params),
        "top_eigenvalue": lambda: estimate(*args, stacked, key).top_eigenvalues,
    }
    compile_s = {}
    for name, fn in candidates.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        compile_s[name] = time.perf_counter() - t0
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(ts) for name, ts in times.items()}
    return {
        "variant": variant,
        "num_iters": num_iters,
        "gradient_s": med["gradient"],
        "hvp_s": med["hvp"],
        "top_eigenvalue_s": med["top_eigenvalue"],
        "hvp_per_gradient": med["hvp"] / med["gradient"],
        "top_eigenvalue_per_gradient": med["top_eigenvalue"] / med["gradient"],
        **{f"first_call_{name}_s": s for name, s in compile_s.items()},
    }
