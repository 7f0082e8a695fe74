"""``landscape bench`` on two checkouts of the project, side by side: did a change cost speed?

    python benchmarks/before_after.py BEFORE_DIR [AFTER_DIR] [--rounds 3] [-- BENCH OPTIONS]

Each round runs ``python -m landscape bench`` once from each checkout (``PYTHONPATH`` points at
it), alternating which goes first, so load on a shared machine falls on both alike. Each run is
a fresh process tuned as the command tunes itself. The medians over rounds of each quantity and
their ratio after/before are printed, and one JSON line goes to
``benchmarks/results/before_after.jsonl`` with both commits.

Make the "before" checkout with ``git worktree add /tmp/before REV`` (or ``git archive REV``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# (label, path into bench.jsonl's "results") of the quantities compared.
QUANTITIES = (
    ("train step (s)", ("train_step_s",)),
    ("gradient (s)", ("gradient_s",)),
    ("probe, map (s)", ("probe", "map", "run_s")),
    ("probed step (s)", ("probed_step_s",)),
    ("checkpoint overhead (ratio)", ("checkpoint", "overhead_ratio")),
    ("whole run (steps/s)", ("run", "steps_per_s")),
    ("compile train step (s)", ("compile_train_step_s",)),
    ("compile probe, map (s)", ("probe", "map", "compile_s")),
    ("peak memory (MiB)", ("peak_rss_mib",)),
)


def _commit(checkout: Path) -> str:
    """Returns the checkout's short commit, with "+changes" when its package or benchmarks
    differ from that commit (the figures were then measured on code no commit holds)."""

    def git(*args: str) -> str:
        out = subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True)
        return out.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    if git("status", "--porcelain", "--", "landscape", "benchmarks/*.py"):
        commit += "+changes"
    return commit


def _bench(checkout: Path, out: Path, options: list[str]) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout)}
    command = [sys.executable, "-m", "landscape", "bench", "--out", str(out), *options]
    # Run from the checkout: ``python -m`` puts the working directory first on sys.path.
    subprocess.run(command, env=env, cwd=checkout, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "bench.jsonl").read_text().splitlines()[-1])


def _get(results: dict, path: tuple[str, ...]) -> float:
    for key in path:
        results = results[key]
    return float(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path, nargs="?", default=ROOT)
    parser.add_argument("--rounds", type=int, default=3)
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.bench_options = argv[split + 1 :]  # after --: options for landscape bench
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            order = ("before", "after") if i % 2 == 0 else ("after", "before")
            for label in order:
                checkout = args.before if label == "before" else args.after
                out = Path(tmp) / f"{label}-{i}"
                print(f"round {i + 1}/{args.rounds}: {label} ({checkout})", flush=True)
                runs[label].append(_bench(checkout.resolve(), out, args.bench_options))
    rows = []
    print(f"\n{'quantity':<30}{'before':>12}{'after':>12}{'after/before':>14}")
    for name, path in QUANTITIES:
        before = statistics.median(_get(r["results"], path) for r in runs["before"])
        after = statistics.median(_get(r["results"], path) for r in runs["after"])
        rows.append({"quantity": name, "before": before, "after": after, "ratio": after / before})
        print(f"{name:<30}{before:>12.4g}{after:>12.4g}{after / before:>14.3f}")
    record = {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "before": _commit(args.before),
        "after": _commit(args.after),
        "bench_options": args.bench_options,
        "rounds": args.rounds,
        "machine": {k: runs["after"][-1]["machine"][k] for k in ("processor", "cpu_count")},
        "machine_settings": {
            label: {k: runs[label][-1]["machine"].get(k) for k in ("xla_flags", "malloc_tuning")}
            for label in runs
        },
        "load_average_1m": [r["machine"]["load_average_1m"] for r in runs["after"]],
        "rows": rows,
    }
    path = ROOT / "benchmarks" / "results" / "before_after.jsonl"
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"\nappended to {path}")


if __name__ == "__main__":
    main()
