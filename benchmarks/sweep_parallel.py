"""Times the same sweep with ``--parallel 1`` and ``--parallel N`` side by side, and measures
what limits XLA's CPU threads.

Usage (from a checkout; a few minutes on 2 CPU cores):

    python benchmarks/sweep_parallel.py [--parallel 2 --configs 4 --steps 20 --rounds 1]

Each candidate is the real command, ``landscape sweep --preset smoke --data synthetic --grid
seed=0,...`` in a fresh process into a fresh directory, timed from outside (start-up, data,
workers and the summary included). Both use one warmed compilation cache (a first small sweep
with each setting compiles the programs; every configuration compiles the same ones), so the
figure is the steady state of a sweep, not compilation. Rounds alternate the order (1, N, then N, 1, ...) and
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
import resource
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


def sweep(out: Path, parallel: int, args, cache: Path, seeds: int) -> tuple[float, float]:
    """Runs one sweep as the CLI does; returns its wall time and the CPU time (user + system)
    of the process and all its workers, in seconds."""
    command = [sys.executable, "-m", "landscape", "sweep", "--preset", "smoke", "--data",
               "synthetic", "--variants", args.variant, "--steps", str(args.steps),
               "--grid", "seed=" + ",".join(map(str, range(seeds))), "--out", str(out),
               "--parallel", str(parallel), "--no-progress"]  # fmt: skip
    env = {**os.environ, "LANDSCAPE_JAX_CACHE": str(cache), "PYTHONPATH": str(ROOT)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)  # waited-for descendants: the workers
    if done.returncode != 0:
        sys.exit(f"sweep --parallel {parallel} failed:\n{done.stdout}\n{done.stderr}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parallel", type=int, default=2, help="workers of the parallel sweep")
    parser.add_argument("--configs", type=int, default=4, help="configurations (seeds)")
    parser.add_argument("--steps", type=int, default=60, help="steps (the smoke preset's 60)")
    parser.add_argument("--variant", default="batchnorm")
    parser.add_argument("--rounds", type=int, default=1, help="alternating timing rounds")
    parser.add_argument("--no-thread-check", dest="thread_check", action="store_false")
    args = parser.parse_args()

    load_before = os.getloadavg()
    threads = thread_check() if args.thread_check else None
    times: dict[int, list[float]] = {1: [], args.parallel: []}
    cpus: dict[int, list[float]] = {1: [], args.parallel: []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cache = tmp / "jax-cache"
        # Both settings load the same cached programs (checked: one entry per program whatever
        # the core count); each warms once so neither pays for compilation or a cold disk.
        short = argparse.Namespace(**{**vars(args), "steps": 2})
        warm = sweep(tmp / "warm-1", 1, short, cache, 1)[0]
        warm += sweep(tmp / f"warm-{args.parallel}", args.parallel, short, cache, args.parallel)[0]
        for r in range(args.rounds):
            order = (1, args.parallel) if r % 2 == 0 else (args.parallel, 1)
            for n in order:
                wall, cpu = sweep(tmp / f"r{r}-p{n}", n, args, cache, args.configs)
                times[n].append(wall)
                cpus[n].append(cpu)
                print(f"round {r + 1}: --parallel {n}: {wall:.1f} s, CPU {cpu:.1f} s", flush=True)
    medians = {n: statistics.median(v) for n, v in times.items()}
    cpu_medians = {n: statistics.median(v) for n, v in cpus.items()}
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
        # CPU seconds of the whole sweep (workers included) and CPU/wall: on a shared machine
        # the wall-clock ratio mostly shows the share the scheduler gave, the CPU time the work.
        "cpu_s": {f"parallel_{n}": v for n, v in cpus.items()},
        "median_cpu_s": {f"parallel_{n}": v for n, v in cpu_medians.items()},
        "cores_used": {f"parallel_{n}": cpu_medians[n] / medians[n] for n in medians},
        "threads": threads,
    }
    out = ROOT / "benchmarks" / "results" / "sweep_parallel.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(result) + "\n")
    print(f"{args.configs} smoke configurations ({args.variant}, {args.steps} steps), "
          f"{os.cpu_count()} CPUs, load {load_before[0]:.1f} -> {os.getloadavg()[0]:.1f}")  # fmt: skip
    for n in medians:
        print(f"--parallel {n}: {medians[n]:.1f} s, CPU {cpu_medians[n]:.1f} s "
              f"({cpu_medians[n] / medians[n]:.2f} cores busy on average)")  # fmt: skip
    print(f"speed-up {result['speedup']:.2f}x (wall clock)")
    if threads:
        for label, found in threads.items():
            print(
                f"threads, {label}: XLA pool {found['pool_threads']}, busy {found['busy_threads']}"
            )
    print(f"appended to {out}")


if __name__ == "__main__":
    main()
