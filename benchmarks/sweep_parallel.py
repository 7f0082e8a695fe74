"""Times the same sweep with ``--parallel 1`` and ``--parallel N`` side by side, and measures
what limits XLA's CPU threads.

Usage (from a checkout; a few minutes on 2 CPU cores):

    python benchmarks/sweep_parallel.py [--parallel 2 --configs 4 --steps 20 --rounds 1]

Each candidate is the real command, ``landscape sweep --preset smoke --data synthetic --grid
seed=0,...`` in a fresh process into a fresh directory, timed from outside (start-up, data,
workers and the summary included). Both use one warmed compilation cache (a first small sweep
compiles the programs; every configuration compiles the same ones), so the figure is the
steady state of a sweep, not compilation. Rounds alternate the order (1, N, then N, 1, ...) and
the medians are compared. A JSON line goes to benchmarks/results/sweep_parallel.jsonl.

The thread check runs a jitted matmul + convolution in three child processes and counts the
CPU time of each thread: unpinned, pinned to one core (``os.sched_setaffinity``, what a
``--parallel`` worker does) and with ``XLA_FLAGS=--xla_cpu_multi_thread_eigen=false``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

THREAD_PROBE = r"""
import json, os, sys
if sys.argv[1] == "pinned":
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
import jax, jax.numpy as jnp
x = jnp.ones((1024, 1024)); k = jnp.ones((3, 3, 64, 64)); im = jnp.ones((64, 32, 32, 64))
f = jax.jit(lambda a: (a @ a).sum())
g = jax.jit(lambda i: jax.lax.conv_general_dilated(
    i, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")).sum())
f(x).block_until_ready(); g(im).block_until_ready()
def cpu():
    out = {}
    for t in os.listdir("/proc/self/task"):
        name = open(f"/proc/self/task/{t}/comm").read().strip()
        stat = open(f"/proc/self/task/{t}/stat").read().rsplit(")", 1)[1].split()
        out[t] = (name, (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK"))
    return out
before = cpu()
for _ in range(20):
    f(x).block_until_ready(); g(im).block_until_ready()
after = cpu()
busy = sorted(((n, round(s - before.get(t, (n, 0))[1], 2)) for t, (n, s) in after.items()
               if s - before.get(t, (n, 0))[1] >= 0.03), key=lambda p: -p[1])
pool = sum(1 for n, _ in after.values() if n.endswith("XLAEigen"))
print(json.dumps({"pool_threads": pool, "busy_threads": busy}))
"""


def thread_check() -> dict:
    """Returns, per setting, XLA's intra-op pool size and the threads that did the work."""
    settings = {
        "unpinned": ("free", {}),
        "pinned to 1 core": ("pinned", {}),
        "xla_cpu_multi_thread_eigen=false": (
            "free",
            {"XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false"},
        ),
    }
    out = {}
    for label, (mode, extra) in settings.items():
        env = {**os.environ, "JAX_PLATFORMS": "cpu", **extra}
        done = subprocess.run(
            [sys.executable, "-c", THREAD_PROBE, mode],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        out[label] = json.loads(done.stdout.strip().splitlines()[-1])
    return out


def sweep(out: Path, parallel: int, args, cache: Path, seeds: int) -> float:
    """Runs one sweep as the CLI does and returns its wall time in seconds."""
    command = [sys.executable, "-m", "landscape", "sweep", "--preset", "smoke", "--data",
               "synthetic", "--variants", args.variant, "--steps", str(args.steps),
               "--grid", "seed=" + ",".join(map(str, range(seeds))), "--out", str(out),
               "--parallel", str(parallel), "--no-progress"]  # fmt: skip
    env = {**os.environ, "LANDSCAPE_JAX_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"sweep --parallel {parallel} failed:\n{done.stdout}\n{done.stderr}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parallel", type=int, default=2, help="workers of the parallel sweep")
    parser.add_argument("--configs", type=int, default=4, help="configurations (seeds)")
    parser.add_argument("--steps", type=int, default=20, help="steps per configuration")
    parser.add_argument("--variant", default="batchnorm")
    parser.add_argument("--rounds", type=int, default=1, help="alternating timing rounds")
    parser.add_argument("--no-thread-check", dest="thread_check", action="store_false")
    args = parser.parse_args()

    load_before = os.getloadavg()
    threads = thread_check() if args.thread_check else None
    times: dict[int, list[float]] = {1: [], args.parallel: []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "jax-cache"
        warm = sweep(tmp / "warm", 1, argparse.Namespace(**{**vars(args), "steps": 2}), cache, 1)
        for r in range(args.rounds):
            order = (1, args.parallel) if r % 2 == 0 else (args.parallel, 1)
            for n in order:
                times[n].append(sweep(tmp / f"r{r}-p{n}", n, args, cache, args.configs))
                print(f"round {r + 1}: --parallel {n}: {times[n][-1]:.1f} s", flush=True)
    medians = {n: statistics.median(v) for n, v in times.items()}
    result = {
        "machine": {
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "backend": "cpu (the workers' JAX_PLATFORMS as given)",
            "jax": metadata.version("jax"),
            "python": platform.python_version(),
            "load_average_1m_before": load_before[0],
            "load_average_1m_after": os.getloadavg()[0],
        },
        "settings": {
            "preset": "smoke",
            "data": "synthetic",
            "variant": args.variant,
            "configs": args.configs,
            "steps": args.steps,
            "parallel": args.parallel,
            "rounds": args.rounds,
        },
        "warmup_s": warm,
        "sweep_s": {f"parallel_{n}": v for n, v in times.items()},
        "median_s": {f"parallel_{n}": v for n, v in medians.items()},
        "speedup": medians[1] / medians[args.parallel],
        "threads": threads,
    }
    out = ROOT / "benchmarks" / "results" / "sweep_parallel.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(result) + "\n")
    print(f"{args.configs} smoke configurations ({args.variant}, {args.steps} steps), "
          f"{os.cpu_count()} CPUs, load {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"--parallel 1: {medians[1]:.1f} s | --parallel {args.parallel}: "
          f"{medians[args.parallel]:.1f} s | speed-up {result['speedup']:.2f}x")  # fmt: skip
    if threads:
        for label, found in threads.items():
            print(
                f"threads, {label}: XLA pool {found['pool_threads']}, busy {found['busy_threads']}"
            )
    print(f"appended to {out}")


if __name__ == "__main__":
    main()
