"""Lanczos cost and compile time: the loop before issue 18 against the current one, side by side.

    python benchmarks/lanczos_cost.py [--preset quick] [--variant batchnorm] [--data synthetic]
        [--train-steps 20] [--iterations 20] [--tolerance 1e-3] [--rounds 7] [--compile-rounds 2]

On the preset's network after ``--train-steps`` SGD steps (the Hessian at initialisation is not
the one anybody studies), on the batch of the next step, BatchNorm in train mode, in one process:

1. λ_max to ``--tolerance`` relative: a long reference run (``--reference-iterations``) gives the
   Lanczos matrix, whose leading blocks are what shorter runs from the same start compute; the
   fewest iterations whose top Ritz value stays within the tolerance is the count both loops
   need (their arithmetic is the same up to rounding). The estimates at that count are printed
   beside the reference.
2. Timing, in alternating rounds, medians: one gradient, one Hessian-vector product, the same
   product iterated ``--iterations`` times in a bare ``fori_loop`` (the floor for a Lanczos
   iteration), and the top-eigenvalue estimator of each loop (``make_hessian_estimator(top_k=1)``)
   at ``--iterations`` and at that count. Cost per iteration = estimate / iterations / gradient;
   "λ_max to tolerance" = the estimate at that count / gradient (gradient-evaluation
   equivalents, fixed costs included).
3. Compile time, alternating, ``--compile-rounds`` times, of each loop's estimator for λ_max
   alone and with ``--trace-probes`` Hutchinson probes (the ``hessian`` command's default):
   ``lower()`` + ``compile()`` (wall and CPU seconds) and the first answer (those and one run).
4. The current estimator's first answer in a fresh process with an empty persistent compilation
   cache and again with the cache it filled (``landscape.enable_compilation_cache``).

The old loop is kept below verbatim (``old_*``, from the commit before the change), so both run
in the same process on the same weights. The process is tuned as the ``landscape`` command
tunes itself. One JSON line is appended to ``benchmarks/results/lanczos.jsonl``. On a shared
machine single figures are noisy; the ratios of candidates timed side by side are what carry.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landscape.app import runtime

RESULTS = Path(__file__).resolve().parent / "results" / "lanczos.jsonl"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--variant", default="batchnorm")
    parser.add_argument("--data", default="synthetic", help="synthetic, or a CIFAR-10 path")
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--iterations", type=int, default=20, help="the hessian default")
    parser.add_argument("--reference-iterations", type=int, default=60)
    parser.add_argument("--tolerance", type=float, default=1e-3)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--inner", type=int, default=5, help="calls of gradient/HVP per round")
    parser.add_argument("--compile-rounds", type=int, default=2)
    parser.add_argument("--trace-probes", type=int, default=10, help="the hessian default")
    parser.add_argument(
        "--no-cache-check",
        dest="cache_check",
        action="store_false",
        help="skip the first answer in fresh processes with an empty and a warm cache",
    )
    parser.add_argument("--first-answer", metavar="CACHE_DIR", help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    runtime.tune_process()  # as the landscape command does, before JAX starts a backend
    if args.first_answer:  # the child process of the cache check
        print(json.dumps(first_answer(args)))
        return
    result = measure(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(result) + "\n")
    print_table(result)


# --- the loop before the change (verbatim but for names) ----------------------------------


def old_hessian_operator(loss_fn, params, batches, *, model_state=None):
    """The old ``hessian_operator`` on all parameters (no block): a scan of jvp-of-grad."""
    import jax
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    from landscape.probe import _scalar_loss

    f = _scalar_loss(loss_fn, model_state)
    flat, unravel = ravel_pytree(params)
    num_batches = jax.tree.leaves(batches)[0].shape[0]

    def hvp_on(batch, vector):
        return jax.jvp(lambda p: jax.grad(f)(p, batch), (params,), (vector,))[1]

    def matvec(v):
        vector = unravel(v)

        def add(total, batch):
            return total + ravel_pytree(hvp_on(batch, vector))[0], None

        total, _ = jax.lax.scan(add, jnp.zeros_like(v), batches)
        return total / num_batches

    return matvec, int(flat.size), flat.dtype


def _old_orthogonalise(w, basis):
    w = w - basis.T @ (basis @ w)
    return w - basis.T @ (basis @ w)


def old_lanczos(matvec, start, num_iters, key):
    import jax
    import jax.numpy as jnp

    dim = start.shape[0]
    dtype = start.dtype
    tiny = jnp.finfo(dtype).tiny
    tol = 100 * jnp.finfo(dtype).eps
    basis = jnp.zeros((num_iters + 1, dim), dtype).at[0].set(start / jnp.linalg.norm(start))

    def body(i, carry):
        basis, alphas, betas = carry
        v = basis[i]
        w = matvec(v)
        alpha = jnp.vdot(v, w)
        scale = jnp.linalg.norm(w)
        w = _old_orthogonalise(w, basis)
        beta = jnp.linalg.norm(w)

        def restart(_):
            r = jax.random.normal(jax.random.fold_in(key, i), (dim,), dtype)
            r = _old_orthogonalise(r, basis)
            return r / jnp.maximum(jnp.linalg.norm(r), tiny), jnp.zeros((), dtype)

        def proceed(_):
            return w / beta, beta

        nxt, beta = jax.lax.cond(beta > tol * scale, proceed, restart, None)
        return basis.at[i + 1].set(nxt), alphas.at[i].set(alpha), betas.at[i].set(beta)

    init = (basis, jnp.zeros(num_iters, dtype), jnp.zeros(num_iters, dtype))
    _, alphas, betas = jax.lax.fori_loop(0, num_iters, body, init)
    return alphas, betas[:-1]


def old_hutchinson(matvec, key, dim, num_probes, dtype):
    """The old trace: its own ``lax.map`` over the probes, a second copy of the HVP."""
    import jax
    import jax.numpy as jnp

    keys = jax.random.split(key, num_probes)

    def sample(k):
        z = jax.random.rademacher(k, (dim,), dtype)
        return jnp.vdot(z, matvec(z))

    samples = jax.lax.map(sample, keys)
    return samples.mean(), jnp.std(samples, ddof=1) / jnp.sqrt(num_probes)


def make_old_estimator(loss_fn, num_iters: int, trace_probes: int = 0) -> Callable:
    """The old ``make_hessian_estimator(top_k=1, trace_probes=...)``: its program, returning
    the top eigenvalue (and the trace when asked)."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def estimate(params, model_state, batches, key):
        matvec, dim, dtype = old_hessian_operator(loss_fn, params, batches, model_state=model_state)
        k_lanczos, k_restart, _, k_trace, _ = jax.random.split(key, 5)
        start = jax.random.normal(k_lanczos, (dim,), dtype)
        alphas, betas = old_lanczos(matvec, start, min(num_iters, dim), k_restart)
        t = jnp.diag(alphas) + jnp.diag(betas, 1) + jnp.diag(betas, -1)
        top = jnp.linalg.eigvalsh(t)[::-1][:1]
        if not trace_probes:
            return top
        trace, _ = old_hutchinson(matvec, k_trace, dim, trace_probes, dtype)
        return jnp.concatenate([top, trace[None]])

    return estimate


# --- measurement ----------------------------------------------------------------------------


def make_new_estimator(loss_fn, num_iters: int, trace_probes: int = 0) -> Callable:
    """``make_hessian_estimator(top_k=1, trace_probes=...)``, returning what the old one does."""
    import jax
    import jax.numpy as jnp

    from landscape.curvature import make_hessian_estimator

    estimate = make_hessian_estimator(
        loss_fn, top_k=1, num_iters=num_iters, trace_probes=trace_probes
    )

    @jax.jit
    def top(params, model_state, batches, key):
        est = estimate(params, model_state, batches, key)
        if not trace_probes:
            return est.top_eigenvalues
        return jnp.concatenate([est.top_eigenvalues, est.trace[None]])

    return top


BUILDERS = {"old": make_old_estimator, "new": make_new_estimator}


def _timed(fn: Callable[[], Any]) -> float:
    import jax

    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def iterations_to(ritz_top: Callable[[int], float], reference: float, tol: float, most: int) -> int:
    """Returns the fewest iterations m such that every run of m' >= m iterations (up to
    ``most``) gives a top Ritz value within ``tol`` relative of ``reference``."""
    need = most
    for m in range(most, 0, -1):
        if abs(ritz_top(m) - reference) > tol * abs(reference):
            break
        need = m
    return need


def setup(args: argparse.Namespace) -> tuple[Any, ...]:
    """Returns ``(loss_fn, params, batch_stats, batch, stacked batch, key)``: the network after
    ``--train-steps`` steps and the batch of the next step."""
    import jax

    from landscape.config import preset
    from landscape.curvature import stack_batches
    from landscape.data import load_dataset
    from landscape.runs import Trainer
    from landscape.train import step_batch

    config = preset(args.preset).replace(data=args.data)
    dataset = load_dataset(args.data, progress=False)
    trainer = Trainer(config, args.variant, dataset)
    state = trainer.initial_state()
    for step in range(args.train_steps):
        state, _ = trainer.train_step(state, trainer.train_source(step))
    batch = step_batch(state, trainer.train_source(args.train_steps))
    stacked = stack_batches([batch])
    return trainer.loss_fn, state.params, state.batch_stats, batch, stacked, jax.random.key(0)


def first_answer(args: argparse.Namespace) -> dict[str, float]:
    """In this (fresh) process: the persistent cache on in ``args.first_answer``, the seconds
    of the current top-eigenvalue estimator's first call (trace, compile or load, run)."""
    import landscape

    landscape.enable_compilation_cache(args.first_answer)
    loss_fn, params, stats, _, stacked, key = setup(args)
    estimate = make_new_estimator(loss_fn, args.iterations)
    return {"first_answer_s": _timed(lambda: estimate(params, stats, stacked, key))}


def _in_fresh_process(args: argparse.Namespace, folder: str) -> float:
    command = [sys.executable, __file__, "--first-answer", folder]
    for name in ("preset", "variant", "data", "train_steps", "iterations"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["first_answer_s"]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from landscape.bench import machine
    from landscape.curvature import hessian_operator, lanczos
    from landscape.probe import hessian_vector_product

    say = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    loss_fn, params, stats, batch, stacked, key = setup(args)

    # 1. The reference and the iterations each loop needs, from the estimator's own start.
    say(f"reference: {args.reference_iterations} Lanczos iterations")

    @jax.jit
    def reference_run(params, stats, batches, key):
        op = hessian_operator(loss_fn, params, batches, model_state=stats)
        k_lanczos, k_restart, *_ = jax.random.split(key, 5)  # as make_hessian_estimator splits
        start = jax.random.normal(k_lanczos, (op.dim,), op.dtype)
        return lanczos(op.matvec, start, args.reference_iterations, k_restart)

    tri = jax.device_get(reference_run(params, stats, stacked, key))
    alphas, betas = np.asarray(tri.alphas, np.float64), np.asarray(tri.betas, np.float64)

    def ritz_top(m: int) -> float:
        t = np.diag(alphas[:m]) + np.diag(betas[: m - 1], 1) + np.diag(betas[: m - 1], -1)
        return float(np.linalg.eigvalsh(t)[-1])

    reference = ritz_top(args.reference_iterations)
    needed = iterations_to(ritz_top, reference, args.tolerance, args.reference_iterations)
    say(f"lambda_max {reference:.6g}; {needed} iterations reach {args.tolerance:g} relative")

    # 2. Timing, side by side.
    grad = jax.jit(jax.grad(lambda p, s, b: loss_fn(p, s, b)[0]))
    hvp = jax.jit(lambda p, s, b, v: hessian_vector_product(loss_fn, p, b, v, model_state=s))
    candidates: dict[str, Callable[[], Any]] = {
        "gradient": lambda: grad(params, stats, batch),
        "hvp": lambda: hvp(params, stats, batch, params),
    }
    for name, build in BUILDERS.items():
        for m in sorted({args.iterations, needed}):
            est = build(loss_fn, m)
            candidates[f"{name}@{m}"] = lambda est=est: est(params, stats, stacked, key)

    @jax.jit
    def bare_loop(params, stats, batches, key):
        # The floor: the same HVP, iterated with nothing but a normalisation.
        op = hessian_operator(loss_fn, params, batches, model_state=stats)
        step = lambda _, v: (lambda w: w / jnp.linalg.norm(w))(op.matvec(v))  # noqa: E731
        start = jax.random.normal(key, (op.dim,), op.dtype)
        return jax.lax.fori_loop(0, args.iterations, step, start)

    candidates["bare"] = lambda: bare_loop(params, stats, stacked, key)
    say("warming up")
    values = {}
    for label, fn in candidates.items():
        out = jax.block_until_ready(fn())
        if "@" in label:
            values[label] = float(np.asarray(out)[0])
    times: dict[str, list[float]] = {label: [] for label in candidates}
    for r in range(args.rounds):
        say(f"round {r + 1}/{args.rounds}")
        order = list(candidates) if r % 2 == 0 else list(reversed(candidates))
        for label in order:
            # A single call of a 30 ms program right after a 1 s one is not yet in its stride:
            # the short ones are called a few times in a row and their median kept.
            calls = args.inner if label in ("gradient", "hvp") else 1
            times[label].append(statistics.median(_timed(candidates[label]) for _ in range(calls)))

    def ratio(label: str, to: str = "gradient") -> float:
        # Per round first, then the median: the load changes between rounds, and candidates
        # timed in the same round share it.
        return statistics.median(a / b for a, b in zip(times[label], times[to], strict=True))

    g = statistics.median(times["gradient"])

    # 3. Compile time and the first answer (lower + compile + first run), fresh estimators,
    # alternating: the top eigenvalue alone, and with the trace (landscape hessian's default).
    kinds = {"lambda_max": 0, "lambda_max_and_trace": args.trace_probes}
    compiles: dict[str, dict[str, dict[str, list[float]]]] = {
        name: {
            kind: {"lower_s": [], "compile_s": [], "compile_cpu_s": [], "first_answer_s": []}
            for kind in kinds
        }
        for name in BUILDERS
    }
    outputs: dict[str, dict[str, list[float]]] = {name: {} for name in BUILDERS}
    for r in range(args.compile_rounds):
        for kind, probes in kinds.items():
            for name in list(BUILDERS) if r % 2 == 0 else list(reversed(BUILDERS)):
                say(f"compile {name} {kind} ({r + 1}/{args.compile_rounds})")
                wall = time.perf_counter()
                lowered = BUILDERS[name](loss_fn, args.iterations, probes).lower(
                    params, stats, stacked, key
                )
                lowered_at, cpu = time.perf_counter(), time.process_time()
                compiled = lowered.compile()
                compiled_at, cpu = time.perf_counter(), time.process_time() - cpu
                out = jax.block_until_ready(compiled(params, stats, stacked, key))
                record = compiles[name][kind]
                record["lower_s"].append(lowered_at - wall)
                record["compile_s"].append(compiled_at - lowered_at)
                record["compile_cpu_s"].append(cpu)
                record["first_answer_s"].append(time.perf_counter() - wall)
                outputs[name][kind] = np.asarray(out, np.float64).tolist()

    warm = {}
    if args.cache_check:
        with tempfile.TemporaryDirectory() as folder:
            say("first answer in a fresh process, empty cache, then warm")
            warm = {
                "cold_cache_first_answer_s": _in_fresh_process(args, folder),
                "warm_cache_first_answer_s": _in_fresh_process(args, folder),
            }

    per_loop = {}
    for name in BUILDERS:
        at_iters, at_needed = f"{name}@{args.iterations}", f"{name}@{needed}"
        marginal = None
        if args.iterations != needed:
            marginal = statistics.median(
                (a - b) / (args.iterations - needed) / c
                for a, b, c in zip(
                    times[at_iters], times[at_needed], times["gradient"], strict=True
                )
            )
        per_loop[name] = {
            "per_iteration_gradients": ratio(at_iters) / args.iterations,
            "marginal_iteration_gradients": marginal,
            "lambda_max_to_tolerance_gradients": ratio(at_needed),
            "per_iteration_over_bare_loop": ratio(at_iters, "bare"),
            "lambda_max_at_needed": values[f"{name}@{needed}"],
            "lambda_max_at_iterations": values[f"{name}@{args.iterations}"],
            "estimate_s": statistics.median(times[at_iters]),
            "compile": {
                kind: {field: statistics.median(v) for field, v in fields.items()}
                for kind, fields in compiles[name].items()
            },
            "outputs": outputs[name],
        }
    return {
        "machine": machine(runtime.describe()),
        "commit": _commit(),
        "settings": {
            key: getattr(args, key)
            for key in (
                "preset",
                "variant",
                "data",
                "train_steps",
                "iterations",
                "reference_iterations",
                "tolerance",
                "trace_probes",
                "rounds",
                "inner",
                "compile_rounds",
            )
        },
        "results": {
            "gradient_s": g,
            "hvp_gradients": ratio("hvp"),
            "bare_hvp_loop_iteration_gradients": ratio("bare") / args.iterations,
            "new_over_old_per_iteration": ratio(f"new@{args.iterations}", f"old@{args.iterations}"),
            "lambda_max_reference": reference,
            "iterations_to_tolerance": needed,
            "old": per_loop["old"],
            "new": per_loop["new"],
            **warm,
            "raw_seconds": times,
        },
    }


def _commit() -> str:
    out = subprocess.run(
        ["git", "-C", str(Path(__file__).resolve().parents[1]), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
    )
    return out.stdout.strip() or "unknown"


def print_table(result: dict[str, Any]) -> None:
    r, s = result["results"], result["settings"]
    load = result["machine"]["load_average_1m"]
    old, new = r["old"], r["new"]
    print(
        f"{s['preset']} {s['variant']}, {s['data']}, after {s['train_steps']} steps: "
        f"lambda_max {r['lambda_max_reference']:.6g}, {r['iterations_to_tolerance']} iterations "
        f"to {s['tolerance']:g}; one gradient {r['gradient_s'] * 1e3:.1f} ms, one HVP "
        f"{r['hvp_gradients']:.2f} gradients, in a bare loop "
        f"{r['bare_hvp_loop_iteration_gradients']:.2f} (load {load:.1f})"
    )
    rows = [
        ("one Lanczos iteration (gradients)", ("per_iteration_gradients",), "{:.2f}"),
        ("  without fixed costs (gradients)", ("marginal_iteration_gradients",), "{:.2f}"),
        ("  over the bare HVP loop", ("per_iteration_over_bare_loop",), "{:.2f}"),
        ("lambda_max to tolerance (gradients)", ("lambda_max_to_tolerance_gradients",), "{:.1f}"),
        ("  its lambda_max", ("lambda_max_at_needed",), "{:.6g}"),
    ]
    for kind, label in (("lambda_max", "lambda_max"), ("lambda_max_and_trace", "+ trace")):
        rows += [
            (f"compile {label} (s)", ("compile", kind, "compile_s"), "{:.1f}"),
            (f"compile {label}, CPU (s)", ("compile", kind, "compile_cpu_s"), "{:.1f}"),
            (f"first answer {label} (s)", ("compile", kind, "first_answer_s"), "{:.1f}"),
        ]
    print(f"{'':<40}{'old':>10}{'new':>10}{'new/old':>10}")
    for label, path, fmt in rows:
        a, b = old, new
        for key in path:
            a, b = a[key], b[key]
        if a is None or b is None:
            continue
        ratio = "" if "its" in label else f"{b / a:.2f}"
        print(f"{label:<40}{fmt.format(a):>10}{fmt.format(b):>10}{ratio:>10}")
    print(f"new / old per iteration, per round: {r['new_over_old_per_iteration']:.2f}")
    if "warm_cache_first_answer_s" in r:
        print(
            f"first answer in a fresh process, new: {r['cold_cache_first_answer_s']:.1f} s with "
            f"an empty compilation cache, {r['warm_cache_first_answer_s']:.1f} s with a warm one"
        )


if __name__ == "__main__":
    main()
