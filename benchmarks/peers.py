"""Our curvature and surface estimates against the tools users would pick instead.

    pip install -e ".[peers]"        # torch (CPU) and the three tools; see docs/performance.md
    python benchmarks/peers.py                       # the table in docs/performance.md
    python benchmarks/peers.py --grid 11,21          # with the 21 x 21 surface
    python benchmarks/peers.py --jax-only            # our rows only (no torch: the GPU check)

On one network, one set of weights and one batch in both frameworks (the quick preset's VGG-11
at width 1/4, trained for ``--train-steps`` steps from the same initialisation so the weights
are not the initial ones; batch 128; real CIFAR-10 when $LANDSCAPE_CIFAR_JPEG names the JPEG
archive, synthetic data of the same shape otherwise), in three settings: the BatchNorm network
in train mode (batch statistics, the loss the optimiser descends), the same network in eval
mode (running averages), and the network without BatchNorm. For each it measures, side by side
in one process:

* lambda_max to ``--tol`` relative: a long Lanczos run of ours is the reference; each tool's
  own method then runs with the iteration count it needs to get there from its own start vector
  (found once, beforehand, from one long run of the same method), and its answer's error against
  the reference is recorded, so the stated accuracy is checked, not assumed;
* the trace by Hutchinson with ``--probes`` Rademacher probes in every tool, with standard errors
  (the estimates must agree within them);
* ``--grid`` filter-normalised loss surfaces (11 x 11 by default; our ``landscape.surfaces``
  against loss-landscapes' ``random_plane``);
* one Hessian-vector product and one gradient in each framework, so every time is also given
  in gradient evaluations of its own framework.

Every candidate runs once first (for ours that call compiles: "first answer, compile
included"), then in ``--rounds`` alternating rounds; medians are reported, and compile time as
first call minus median. The peers' default calls and what they do to the model are recorded
once as "pitfalls" (docs/estimators.md). One JSON line per invocation is appended to
``--out`` (default benchmarks/results/peers.jsonl) with the versions and the load average. A
peer that is missing or fails on the installed torch is a row that says so.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from landscape.app import runtime
from landscape.bench import machine
from landscape.config import norm_for_variant, preset
from landscape.curvature import (
    hessian_operator,
    hutchinson,
    lanczos,
    make_eval_loss_fn,
    make_hessian_estimator,
    stack_batches,
)
from landscape.data import load_dataset
from landscape.probe import hessian_vector_product
from landscape.runs import Trainer
from landscape.surfaces import (
    default_chunk,
    evaluate_grid,
    make_grid_fn,
    make_metric_fn,
    random_directions,
)

RESULTS = Path(__file__).resolve().parent / "results" / "peers.jsonl"
CIFAR_JPEG_ENV = "LANDSCAPE_CIFAR_JPEG"
# setting -> (variant, BatchNorm mode). Without BatchNorm the mode changes nothing.
SETTINGS = {
    "bn-train": ("batchnorm", "train"),
    "bn-eval": ("batchnorm", "eval"),
    "standard": ("standard", "train"),
}
OURS = "ours"


@dataclasses.dataclass
class Candidate:
    """One timed computation: a tool's method for a task in a setting."""

    tool: str
    task: str  # gradient, hvp, lambda_max, trace, surface_11 ...
    setting: str
    method: str
    run: Callable[[], dict]
    iterations: int | None = None
    note: str = ""
    first_s: float = math.nan
    times: list[float] = dataclasses.field(default_factory=list)
    result: dict = dataclasses.field(default_factory=dict)
    error: str | None = None

    @property
    def key(self) -> str:
        return f"{self.setting}/{self.task}/{self.tool}/{self.method}"


def _timed(fn: Callable[[], dict]) -> tuple[float, dict]:
    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - start, out


def _plain(result: dict) -> dict:
    """Returns a candidate's output with device scalars as Python floats (ints and text kept)."""
    return {k: v if isinstance(v, int | str | float) else float(v) for k, v in result.items()}


def needed_iterations(sequence: np.ndarray, reference: float, tol: float) -> int | None:
    """Returns the first iteration count m (1-based) from which every estimate of ``sequence``
    stays within ``tol`` relative of ``reference``; None if the last one is not within it."""
    error = np.abs(np.asarray(sequence, np.float64) - reference) / abs(reference)
    outside = np.nonzero(error > tol)[0]
    if len(outside) == 0:
        return 1
    last = int(outside[-1]) + 1
    return last + 1 if last < len(sequence) else None


def errors_at(sequence: np.ndarray, reference: float) -> dict[str, float]:
    """Returns the relative error of ``sequence`` after 2, 5, 10, 15, 20, 30 ... iterations
    (those it has), keyed by the count: how accuracy grows with a fixed iteration budget."""
    counts = [m for m in (2, 5, 10, 15, 20, 30, 40, 60, 100) if m <= len(sequence)]
    return {str(m): abs(float(sequence[m - 1]) - reference) / abs(reference) for m in counts}


# --- our side --------------------------------------------------------------------------------------


class Ours:
    """Our estimates for one setting, built from ``landscape``'s public functions."""

    def __init__(self, trainer: Trainer, state: Any, batch: dict, mode: str, key: jax.Array):
        self.params, self.batch_stats = state.params, state.batch_stats
        self.batch = batch
        self.batches = stack_batches([batch])
        self.mode = mode
        self.key = key
        self.loss_fn = (
            trainer.loss_fn if mode == "train" else make_eval_loss_fn(trainer.network, trainer.loss)
        )
        self.network = trainer.network
        self.loss_name = trainer.loss
        self.dim = int(ravel_pytree(self.params)[0].size)

    def gradient_fn(self) -> Callable[[], dict]:
        loss_fn = self.loss_fn
        grad = jax.jit(jax.grad(lambda p, s, b: loss_fn(p, s, b)[0]))

        def run() -> dict:
            g = grad(self.params, self.batch_stats, self.batch)
            return {"value": jnp.sqrt(sum(jnp.vdot(x, x) for x in jax.tree.leaves(g)))}

        return run

    def hvp_fn(self) -> Callable[[], dict]:
        loss_fn = self.loss_fn
        hvp = jax.jit(lambda p, s, b, v: hessian_vector_product(loss_fn, p, b, v, model_state=s))
        leaves, treedef = jax.tree.flatten(self.params)
        keys = jax.random.split(jax.random.key(0), len(leaves))
        vector = jax.tree.unflatten(
            treedef,
            [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)],
        )

        def run() -> dict:
            hv = hvp(self.params, self.batch_stats, self.batch, vector)
            return {"value": jnp.sqrt(sum(jnp.vdot(x, x) for x in jax.tree.leaves(hv)))}

        return run

    def lanczos_sequence(self, iters: int) -> np.ndarray:
        """Returns the largest Ritz value after 1..iters iterations of the Lanczos run that
        ``make_hessian_estimator(num_iters=m)(..., key)`` makes, from one run of ``iters``."""
        loss_fn = self.loss_fn

        @jax.jit
        def run(params, batch_stats, batches, key):
            op = hessian_operator(loss_fn, params, batches, model_state=batch_stats)
            # The estimator's own start vector and restart key for this key.
            k_lanczos, k_restart = jax.random.split(key, 5)[:2]
            start = jax.random.normal(k_lanczos, (op.dim,), op.dtype)
            return lanczos(op.matvec, start, iters, k_restart)

        tri = run(self.params, self.batch_stats, self.batches, self.key)
        alphas, betas = np.asarray(tri.alphas, np.float64), np.asarray(tri.betas, np.float64)
        out = []
        for m in range(1, iters + 1):
            t = np.diag(alphas[:m]) + np.diag(betas[: m - 1], 1) + np.diag(betas[: m - 1], -1)
            out.append(np.linalg.eigvalsh(t)[-1])
        return np.asarray(out)

    def lambda_max_fn(self, iters: int) -> Callable[[], dict]:
        estimate = make_hessian_estimator(self.loss_fn, top_k=1, num_iters=iters)

        def run() -> dict:
            out = estimate(self.params, self.batch_stats, self.batches, self.key)
            return {"value": out.top_eigenvalues[0]}

        return run

    def trace_fn(self, probes: int) -> Callable[[], dict]:
        loss_fn = self.loss_fn

        @jax.jit
        def trace(params, batch_stats, batches, key):
            op = hessian_operator(loss_fn, params, batches, model_state=batch_stats)
            return hutchinson(op.matvec, key, op.dim, probes, op.dtype)

        def run() -> dict:
            out = trace(self.params, self.batch_stats, self.batches, self.key)
            return {"value": out.trace, "stderr": out.stderr}

        return run

    def surface_fn(self, side: int) -> Callable[[], dict]:
        metric_fn = make_metric_fn(self.network, self.mode, accuracy=False, loss=self.loss_name)
        grid_fn = make_grid_fn(metric_fn)
        origin = {"params": self.params, "batch_stats": self.batch_stats}
        zero_stats = jax.tree.map(jnp.zeros_like, self.batch_stats)
        directions = tuple(
            {"params": d, "batch_stats": zero_stats}
            for d in random_directions(jax.random.key(0), self.params, 2)
        )
        axis = np.linspace(-1.0, 1.0, side)
        coords = np.stack(np.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
        coords = coords.astype(np.float32)
        chunk = default_chunk()

        def run() -> dict:
            values = evaluate_grid(grid_fn, origin, directions, coords, self.batches, chunk=chunk)[
                :, 0
            ].reshape(side, side)
            middle = side // 2
            finite = values[np.isfinite(values)]
            return {
                "value": float(values[middle, middle]),
                "min": float(finite.min()) if finite.size else math.nan,
                "max": float(finite.max()) if finite.size else math.nan,
                "non_finite": int(values.size - finite.size),
            }

        return run


# --- building the comparison ---------------------------------------------------------------------


def trained_state(trainer: Trainer, steps: int) -> tuple[Any, dict]:
    """Returns the state after ``steps`` training steps from the seed's initialisation, and the
    batch of the next step (the batch every estimate here uses)."""
    state = trainer.initial_state()
    for step in range(steps):
        state, _ = trainer.train_step(state, trainer.train_source(step))
    return state, trainer.train_source(steps)


def build(args, say: Callable[[str], None]) -> tuple[list[Candidate], list[dict], dict, dict]:
    """Returns the candidates to time, the pitfall records, the references and the settings."""
    config = preset(args.network).replace(data=args.data)
    dataset = load_dataset(args.data, progress=False)
    key = jax.random.key(args.seed)
    peers, versions = ({}, {})
    tools = None
    if not args.jax_only:
        # Imported only here: --jax-only must run where torch is not installed (the GPU check).
        import peer_tools as tools

        tools.torch.set_num_threads(args.threads)
        peers, versions = tools.load_peers()
    candidates: list[Candidate] = []
    pitfalls: list[dict] = []
    references: dict[str, Any] = {}
    sides = [int(s) for s in args.grid.split(",")]
    for setting in args.settings.split(","):
        variant, mode = SETTINGS[setting]
        say(f"{setting}: training {args.train_steps} steps")
        trainer = Trainer(config, variant, dataset)
        state, batch = trained_state(trainer, args.train_steps)
        ours = Ours(trainer, state, batch, mode, key)

        say(f"{setting}: reference lambda_max ({args.reference_iters} Lanczos iterations)")
        sequence = ours.lanczos_sequence(args.reference_iters)
        reference = float(sequence[-1])
        m_ours = needed_iterations(sequence, reference, args.tol) or args.reference_iters
        references[setting] = {
            "lambda_max": reference,
            "reference_iters": args.reference_iters,
            "ours_lanczos_iters": m_ours,
            "ours_lanczos_error_at": errors_at(sequence, reference),
            "parameters": ours.dim,
        }
        add = candidates.append
        add(Candidate(OURS, "gradient", setting, "jax.grad", ours.gradient_fn()))
        add(Candidate(OURS, "hvp", setting, "forward-over-reverse", ours.hvp_fn()))
        add(Candidate(OURS, "lambda_max", setting, "lanczos", ours.lambda_max_fn(m_ours), m_ours))
        add(
            Candidate(OURS, "trace", setting, "hutchinson", ours.trace_fn(args.probes), args.probes)
        )
        for side in sides:
            add(
                Candidate(
                    OURS,
                    f"surface_{side}",
                    setting,
                    "filter-normalised grid",
                    ours.surface_fn(side),
                    side * side,
                )
            )
        if args.jax_only:
            continue

        twin_args = (
            config.model.arch,
            config.model.width,
            norm_for_variant(variant),
            jax.device_get(state.params),
            jax.device_get(state.batch_stats),
            jax.device_get(batch),
            mode,
        )
        twin = tools.TorchTwin(*twin_args)
        initial = trainer.initial_state()
        init_twin = tools.TorchTwin(
            *twin_args[:3],
            jax.device_get(initial.params),
            jax.device_get(initial.batch_stats),
            *twin_args[5:],
        )
        add(Candidate("torch", "gradient", setting, "autograd", tools.gradient_fn(twin)))
        _add_eigenthings(
            tools, peers, twin, setting, reference, args, add, pitfalls, references, say
        )
        _add_pyhessian(tools, peers, twin, setting, reference, args, add, pitfalls, references, say)
        _add_loss_landscapes(tools, peers, twin, init_twin, setting, sides, add, pitfalls, say)
    run_settings = {
        "network": args.network,
        "model": dataclasses.asdict(config.model),
        "batch_size": config.batch_size,
        "train_steps": args.train_steps,
        "data": dataset.name,
        "tol": args.tol,
        "probes": args.probes,
        "grid": sides,
        "rounds": args.rounds,
        "seed": args.seed,
        "settings": {s: SETTINGS[s] for s in args.settings.split(",")},
        "versions": versions,
    }
    return candidates, pitfalls, references, run_settings


def _missing(tool: str, setting: str, why: str) -> Candidate:
    def run() -> dict:
        raise RuntimeError(why)

    return Candidate(tool, "all", setting, "-", run, error=why)


def _add_eigenthings(tools, peers, twin, setting, reference, args, add, pitfalls, refs, say):
    name = "hessian-eigenthings"
    he = peers.get(name)
    if he is None:
        add(_missing(name, setting, "not installed or not importable"))
        return
    try:
        say(f"{setting}: {name}: iterations to {args.tol:g}")
        lanczos_seq = tools.eigenthings_lanczos_sequence(he, twin, args.reference_iters, args.seed)
        power_seq = tools.eigenthings_power_sequence(he, twin, args.power_iters, args.seed)
        m_lanczos = needed_iterations(lanczos_seq, reference, args.tol)
        m_power = needed_iterations(power_seq, reference, args.tol)
        refs[setting][f"{name} lanczos_iters"] = m_lanczos
        refs[setting][f"{name} power_iters"] = m_power
        refs[setting][f"{name} lanczos_final"] = float(lanczos_seq[-1])
        refs[setting][f"{name} lanczos_error_at"] = errors_at(lanczos_seq, reference)
        refs[setting][f"{name} power_error_at"] = errors_at(power_seq, reference)
        add(
            Candidate(
                name, "hvp", setting, "HessianOperator.matvec", tools.eigenthings_hvp_fn(he, twin)
            )
        )
        m = m_lanczos or args.reference_iters
        add(
            Candidate(
                name,
                "lambda_max",
                setting,
                "lanczos",
                tools.eigenthings_lanczos_fn(he, twin, m, args.seed),
                m,
                "" if m_lanczos else "did not reach the tolerance",
            )
        )
        m = m_power or args.power_iters
        add(
            Candidate(
                name,
                "lambda_max",
                setting,
                "power iteration",
                tools.eigenthings_power_fn(he, twin, m, args.seed),
                m,
                "" if m_power else f"not within the tolerance after {m}",
            )
        )
        add(
            Candidate(
                name,
                "trace",
                setting,
                "hutchinson",
                tools.eigenthings_trace_fn(he, twin, args.probes, args.seed),
                args.probes,
            )
        )
        say(f"{setting}: {name}: defaults")
        pitfalls.append(
            {
                "tool": name,
                "setting": setting,
                "call": "lanczos(op, k=1)",
                **_safe(lambda: tools.eigenthings_defaults(he, twin, args.seed)),
            }
        )
    except Exception as err:  # a peer broken on this torch is a row, not a crash
        add(_missing(name, setting, tools.first_line(err)))


def _add_pyhessian(tools, peers, twin, setting, reference, args, add, pitfalls, refs, say):
    name = "pyhessian"
    ph = peers.get(name)
    if ph is None:
        add(_missing(name, setting, "not installed or not importable"))
        return
    # PyHessian forces eval mode; in the train-mode setting it runs under KeepTrainMode.
    keep_train = twin.mode == "train"
    method_note = "kept in train mode by a wrapper" if keep_train and setting != "standard" else ""
    try:
        say(f"{setting}: {name}: iterations to {args.tol:g}")
        seq = tools.pyhessian_power_sequence(ph, twin, args.power_iters, args.seed, keep_train)
        m = needed_iterations(seq, reference, args.tol)
        refs[setting][f"{name} power_iters"] = m
        refs[setting][f"{name} power_error_at"] = errors_at(seq, reference)
        iters = m or args.power_iters
        add(
            Candidate(
                name,
                "hvp",
                setting,
                "stored graph",
                tools.pyhessian_hvp_fn(ph, twin, keep_train),
                note=method_note,
            )
        )
        add(
            Candidate(
                name,
                "lambda_max",
                setting,
                "power iteration",
                tools.pyhessian_lambda_fn(ph, twin, iters, args.seed, keep_train),
                iters,
                method_note if m else f"not within the tolerance after {iters}",
            )
        )
        add(
            Candidate(
                name,
                "trace",
                setting,
                "hutchinson",
                tools.pyhessian_trace_fn(ph, twin, args.probes, args.seed, keep_train),
                args.probes,
                method_note,
            )
        )
        if setting != "bn-train":
            return  # its defaults force eval mode: the bn-train setting shows what that does
        say(f"{setting}: {name}: defaults")
        pitfalls.append(
            {
                "tool": name,
                "setting": setting,
                "call": "hessian(...).eigenvalues(), .trace(), .density() (no wrapper)",
                **_safe(lambda: tools.pyhessian_defaults(ph, twin, args.seed, keep_train=False)),
            }
        )
    except Exception as err:  # a peer broken on this torch is a row, not a crash
        add(_missing(name, setting, tools.first_line(err)))


def _add_loss_landscapes(tools, peers, twin, init_twin, setting, sides, add, pitfalls, say):
    name = "loss-landscapes"
    ll = peers.get(name)
    if ll is None:
        add(_missing(name, setting, "not installed or not importable"))
        return
    for side in sides:
        add(
            Candidate(
                name,
                f"surface_{side}",
                setting,
                "random_plane(normalization='filter')",
                tools.loss_landscapes_fn(ll, twin, side),
                side * side,
            )
        )
    if setting == "bn-eval":
        return  # the weights of bn-train; its defaults there say it all
    say(f"{setting}: {name}: defaults")
    pitfalls.append(
        {
            "tool": name,
            "setting": setting,
            "call": f"random_plane(model, metric, steps={sides[0]})",
            **_safe(lambda: tools.loss_landscapes_defaults(ll, twin, sides[0])),
        }
    )
    # At initialisation every bias is exactly zero, as in a freshly built network.
    pitfalls.append(
        {
            "tool": name,
            "setting": setting,
            "call": "random_plane(model, metric, steps=3) at initialisation",
            **_safe(lambda: tools.loss_landscapes_defaults(ll, init_twin, 3)),
        }
    )


def _safe(fn: Callable[[], dict]) -> dict:
    try:
        return fn()
    except Exception as err:  # recorded as the peer's output
        return {
            "error": f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
        }


# --- timing ----------------------------------------------------------------------------------------


def measure(candidates: list[Candidate], rounds: int, say: Callable[[str], None]) -> None:
    """Calls every candidate once (its first answer, compile included), then ``rounds`` times in
    alternating order; fills in ``first_s``, ``times``, ``result`` or ``error``."""
    for c in candidates:
        if c.error:
            continue
        say(f"first call: {c.key}")
        try:
            c.first_s, out = _timed(c.run)
            c.result = _plain(out)
        except Exception as err:  # a peer that fails on this torch: the row says so
            c.error = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    # Importing torch and building the peers leaves many objects for the cyclic collector; a
    # collection landing inside a timed call would be charged to it (benchmarks/compare_torch.py).
    gc.collect()
    gc.freeze()
    for r in range(rounds):
        say(f"round {r + 1}/{rounds}")
        for c in candidates:
            if c.error:
                continue
            seconds, out = _timed(c.run)
            c.times.append(seconds)
            c.result = _plain(out)


def rows(candidates: list[Candidate], references: dict[str, Any]) -> list[dict]:
    """Returns one row per candidate: value, error against the reference, median and first-call
    seconds, compile seconds (first - median), and cost in gradient evaluations of its own
    framework (torch's gradient for the peers)."""
    gradient = {}
    for c in candidates:
        if c.task == "gradient" and c.times:
            gradient[(c.setting, c.tool)] = statistics.median(c.times)
    out = []
    for c in candidates:
        row: dict[str, Any] = {
            "setting": c.setting,
            "variant": SETTINGS[c.setting][0],
            "bn_mode": SETTINGS[c.setting][1] if SETTINGS[c.setting][0] == "batchnorm" else None,
            "task": c.task,
            "tool": c.tool,
            "method": c.method,
            "iterations": c.iterations,
            "note": c.note,
        }
        if c.error:
            out.append({**row, "error": c.error})
            continue
        median = statistics.median(c.times) if c.times else math.nan
        unit = gradient.get((c.setting, OURS if c.tool == OURS else "torch"))
        row.update(c.result)
        row.update(
            {
                "median_s": median,
                "first_s": c.first_s,
                "compile_s": max(c.first_s - median, 0.0) if c.tool == OURS else None,
                "gradient_evals": median / unit if unit else None,
                "times_s": c.times,
            }
        )
        if c.task == "lambda_max":
            ref = references[c.setting]["lambda_max"]
            row["rel_error"] = abs(row["value"] - ref) / abs(ref)
        out.append(row)
    return out


def trace_agreement(table: list[dict]) -> dict[str, dict[str, float]]:
    """Returns, per setting and peer, |ours - peer| / sqrt(se_ours^2 + se_peer^2) of the traces."""
    found: dict[str, dict[str, float]] = {}
    for setting in {r["setting"] for r in table}:
        traces = {
            r["tool"]: r
            for r in table
            if r["setting"] == setting and r["task"] == "trace" and "value" in r
        }
        if OURS not in traces:
            continue
        ours = traces[OURS]
        for tool, r in traces.items():
            if tool != OURS:
                spread = math.hypot(ours["stderr"], r["stderr"])
                found.setdefault(setting, {})[tool] = abs(ours["value"] - r["value"]) / spread
    return found


# --- output ----------------------------------------------------------------------------------------


def _fmt_s(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    return f"{seconds * 1e3:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def print_table(result: dict) -> None:
    """Prints one block per setting: every row, and ours / peer for each task."""
    table = result["rows"]
    for setting, (variant, mode) in result["settings"]["settings"].items():
        ref = result["references"][setting]
        mode_text = f"BatchNorm in {mode} mode" if variant == "batchnorm" else "no BatchNorm"
        print(
            f"\n{setting}: {mode_text}; reference lambda_max {ref['lambda_max']:.6g} ({ref['reference_iters']} Lanczos iterations)"
        )
        ours = {
            r["task"]: r
            for r in table
            if r["setting"] == setting and r["tool"] == OURS and "median_s" in r
        }
        for r in (r for r in table if r["setting"] == setting):
            if "error" in r:
                print(f"  {r['task']:<12} {r['tool']:<20} {r['method']:<38} FAILED: {r['error']}")
                continue
            value = f"{r['value']:.6g}"
            if r.get("stderr") is not None and math.isfinite(r["stderr"]):
                value += f" ± {r['stderr']:.2g}"
            if "rel_error" in r:
                value += f" (err {r['rel_error']:.1e})"
            if r.get("non_finite"):
                value += f" ({r['non_finite']} non-finite)"
            ratio = ""
            mine = ours.get(r["task"])
            if r["tool"] != OURS and mine:
                ratio = f"ours/peer {mine['median_s'] / r['median_s']:.2f}x, first {mine['first_s'] / r['first_s']:.2f}x"
            iters = f"{r['iterations']}" if r["iterations"] else ""
            evals = f"{r['gradient_evals']:.1f} grads" if r.get("gradient_evals") else ""
            compile_s = f"compile {r['compile_s']:.1f} s" if r.get("compile_s") is not None else ""
            print(
                f"  {r['task']:<12} {r['tool']:<20} {r['method'] + (' ' + iters if iters else ''):<38} "
                f"{value:<34} {_fmt_s(r['median_s']):>9} {evals:>11}  first {_fmt_s(r['first_s']):>8} {compile_s:<14} {ratio} {r['note']}"
            )
    for setting, peers in result["trace_agreement"].items():
        text = ", ".join(f"{tool} {z:.2f}" for tool, z in peers.items())
        print(f"trace agreement ({setting}), |difference| in combined standard errors: {text}")
    for p in result["pitfalls"]:
        print(f"pitfall: {json.dumps(p)}")


TASK_ORDER = ("lambda_max", "trace", "surface", "hvp", "gradient")


def _value_text(r: dict) -> str:
    if r["task"] == "lambda_max":
        return f"{r['value']:.5g} (error {r['rel_error']:.0e})"
    if r["task"] == "trace":
        return f"{r['value']:.4g} ± {r['stderr']:.2g}"
    if r["task"].startswith("surface"):
        text = f"centre {r['value']:.4g}, range {r['min']:.3g}–{r['max']:.3g}"
        return text + (f", {r['non_finite']} non-finite" if r.get("non_finite") else "")
    if r["task"] == "gradient":
        return f"norm {r['value']:.5g}"
    return ""  # an HVP's norm: each framework draws its own random vector


def markdown_table(result: dict) -> list[str]:
    """Returns the result as the markdown table docs/performance.md shows: per setting and
    task, ours then the peers, with ours / peer for the median and the first answer."""
    lines = [
        "| setting | task | tool: method (iterations) | value | median | gradient evals "
        "| first answer | ours / tool: median, first |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    table = result["rows"]
    for setting in result["settings"]["settings"]:
        here = [r for r in table if r["setting"] == setting]
        ours = {r["task"]: r for r in here if r["tool"] == OURS and "median_s" in r}
        order = sorted(
            here,
            key=lambda r: (
                next((i for i, t in enumerate(TASK_ORDER) if r["task"].startswith(t)), 9),
                r["task"],
                r["tool"] != OURS,
            ),
        )
        for r in order:
            method = r["method"] + (f" ({r['iterations']})" if r["iterations"] else "")
            head = f"| {setting} | {r['task']} | {r['tool']}: {method} |"
            if "error" in r:
                lines.append(f"{head} fails: {r['error']} | | | | |")
                continue
            mine = ours.get(r["task"])
            ratio = ""
            if r["tool"] != OURS and mine:
                ratio = (
                    f"{mine['median_s'] / r['median_s']:.2f}x, "
                    f"{mine['first_s'] / r['first_s']:.2f}x"
                )
            evals = f"{r['gradient_evals']:.1f}" if r.get("gradient_evals") else ""
            note = f" ({r['note']})" if r["note"] else ""
            lines.append(
                f"{head} {_value_text(r)}{note} | {_fmt_s(r['median_s'])} | {evals} | "
                f"{_fmt_s(r['first_s'])} | {ratio} |"
            )
    return lines


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jax-only", action="store_true", help="only our rows (no torch)")
    parser.add_argument(
        "--network",
        default="quick",
        choices=("quick", "smoke", "paper"),
        help="the preset whose network and batch size are used",
    )
    parser.add_argument(
        "--data",
        default=None,
        help=f"synthetic or a CIFAR-10 path (default: ${CIFAR_JPEG_ENV} if set, else synthetic)",
    )
    parser.add_argument(
        "--settings",
        default=",".join(SETTINGS),
        help=f"comma-separated, from {', '.join(SETTINGS)}",
    )
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--tol", type=float, default=1e-3, help="lambda_max's relative accuracy")
    parser.add_argument(
        "--reference-iters", type=int, default=60, help="Lanczos iterations of the reference"
    )
    parser.add_argument(
        "--power-iters", type=int, default=100, help="most power iterations searched"
    )
    parser.add_argument("--probes", type=int, default=30, help="Hutchinson probes (every tool)")
    parser.add_argument("--grid", default="11", help="surface sides, e.g. 11 or 11,21")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    bad = [s for s in args.settings.split(",") if s not in SETTINGS]
    if bad:
        parser.error(f"unknown setting {', '.join(bad)}; choose from {', '.join(SETTINGS)}")
    if (
        min(args.train_steps, args.probes - 1, args.rounds, args.reference_iters - 1) < 0
        or args.probes < 2
    ):
        parser.error("--probes must be at least 2; --rounds, --train-steps and iterations positive")
    if args.data is None:
        args.data = os.environ.get(CIFAR_JPEG_ENV) or "synthetic"

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    load_before = os.getloadavg()[0]
    candidates, pitfalls, references, settings = build(args, say)
    measure(candidates, args.rounds, say)
    table = rows(candidates, references)
    result = {
        "machine": {
            **machine(runtime.describe()),
            "load_average_1m_before": load_before,
            "load_average_1m_after": os.getloadavg()[0],
            "torch_threads": None if args.jax_only else args.threads,
        },
        "settings": {**settings, "jax_only": args.jax_only},
        "references": references,
        "rows": table,
        "trace_agreement": trace_agreement(table),
        "pitfalls": pitfalls,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(result) + "\n")
    print_table(result)
    print("\nas in docs/performance.md:")
    print("\n".join(markdown_table(result)))
    print(f"\nappended to {args.out}")
    return result


if __name__ == "__main__":
    runtime.tune_xla_cpu()  # the command's CPU flags, before JAX starts a backend
    runtime.tune_malloc()
    main()
