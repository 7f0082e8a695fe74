"""Do two runs of the same configuration record the same numbers, to float32 tolerance?

    python benchmarks/compare_records.py RUN_A RUN_B [--rtol 1e-3] [--out result.json]

``benchmarks/gpu_check.sh`` runs the smoke preset on the GPU and on the CPU and compares the
two run directories with this script: every variant's ``probe.jsonl`` (the probe's per-step
losses, gradient distances, norms and their reductions) and ``metrics.jsonl`` (training loss and
accuracy, test loss and accuracy). Rows are matched by step; every number of A must be close to
the same number of B, and every number of either must have a partner in the other.

"Close" is ``|a - b| <= rtol * (|b| + scale)``, where ``scale`` is the largest magnitude of
that field in B: a relative tolerance for every entry, with entries near zero (a loss band at a
flat step, a gradient distance at a small step size) held to the field's own size instead of to
their own. Two runs on different backends sum in different orders, and 30 steps of SGD carry
those float32 roundings forward; the default ``rtol`` leaves room for that and no more
(docs/performance.md#a-gpu-ready-the-first-time).

Exits 0 when the runs agree, 1 when they do not, 2 on bad input (one line, no traceback).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

RECORD_FILES = ("probe.jsonl", "metrics.jsonl")
DEFAULT_RTOL = 1e-3
# Effective beta is max over eta of grad_dist / step_norm, computed on the host from two compared
# fields. Late in a run both can be a hundredth of their early size, where the tolerance (scaled
# to the field's largest value) lets each drift by a few percent of itself; their ratio then
# drifts as much, against a tolerance scaled to beta's own largest value. Its inputs are checked.
DERIVED_FIELDS = frozenset({"beta"})

Key = tuple[str, int, str, int, int]  # (file, step, field, occurrence of (step, field), index)


class RecordError(Exception):
    """A run directory that cannot be compared (missing, empty, unreadable)."""


def read_rows(path: Path) -> list[dict[str, Any]]:
    """Returns the JSON rows of a JSON-lines file; raises RecordError on a line that is not JSON."""
    rows = []
    with open(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise RecordError(f"{path}:{number} is not JSON ({err.msg})") from None
    return rows


def flatten(rows: list[dict[str, Any]], name: str) -> dict[Key, Any]:
    """Returns every value of ``rows`` keyed by (file, step, field, occurrence, list index).

    A field appears once per step in a probe record; ``occurrence`` tells apart the rows of a
    step that carry the same field twice (none today, but a resumed run may). Lists give one
    entry per element; scalars have index -1. ``DERIVED_FIELDS`` are left out.
    """
    flat: dict[Key, Any] = {}
    seen: dict[tuple[int, str], int] = defaultdict(int)
    for row in rows:
        step = int(row.get("step", -1))
        for field, value in row.items():
            if field == "step" or field in DERIVED_FIELDS:
                continue
            occurrence = seen[(step, field)]
            seen[(step, field)] += 1
            if isinstance(value, list):
                for i, item in enumerate(value):
                    flat[(name, step, field, occurrence, i)] = item
            else:
                flat[(name, step, field, occurrence, -1)] = value
    return flat


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    if value is None:
        return math.nan
    return None


def compare_values(
    a: dict[Key, Any], b: dict[Key, Any], rtol: float = DEFAULT_RTOL
) -> dict[str, Any]:
    """Compares two flattened records (``flatten``); B is the reference.

    Returns ``values`` (how many were compared), ``max_abs_diff``, ``max_rel_diff`` (|a - b| /
    |b| over entries with b != 0), ``worst`` (the key and both values of the entry furthest
    outside, or nearest to, the tolerance), ``of_tolerance_by_step``, ``mismatches`` (how many entries are not close),
    ``missing`` (keys in only one of them, up to 10 listed, with ``missing_count``) and ``ok``.
    NaN matches NaN and an infinity the same infinity; non-numbers must be equal.
    """
    scale: dict[tuple[str, str], float] = defaultdict(float)
    for key, value in b.items():
        number = _number(value)
        if number is not None and math.isfinite(number):
            scale[(key[0], key[2])] = max(scale[(key[0], key[2])], abs(number))
    max_abs = max_rel = 0.0
    worst: dict[str, Any] | None = None
    worst_ratio = -1.0
    mismatches = compared = 0
    by_step: dict[int, float] = defaultdict(float)
    for key in sorted(set(a) & set(b), key=str):
        x, y = _number(a[key]), _number(b[key])
        compared += 1
        if x is None or y is None:
            ratio = 0.0 if a[key] == b[key] else math.inf
        elif math.isnan(x) or math.isnan(y) or math.isinf(x) or math.isinf(y):
            same = (math.isnan(x) and math.isnan(y)) or x == y
            ratio = 0.0 if same else math.inf
        else:
            diff = abs(x - y)
            max_abs = max(max_abs, diff)
            if y != 0:
                max_rel = max(max_rel, diff / abs(y))
            allowed = rtol * (abs(y) + scale[(key[0], key[2])])
            ratio = diff / allowed if allowed > 0 else (0.0 if diff == 0 else math.inf)
        by_step[key[1]] = max(by_step[key[1]], ratio)
        if ratio > 1:
            mismatches += 1
        if ratio > worst_ratio:
            worst_ratio = ratio
            worst = {"key": list(key), "a": a[key], "b": b[key], "of_tolerance": ratio}
    only = sorted((set(a) ^ set(b)), key=str)
    return {
        "values": compared,
        "max_abs_diff": max_abs,
        "max_rel_diff": max_rel,
        "rtol": rtol,
        "worst": worst,
        # How rounding differences grow along the run: per step, the largest |a - b| as a
        # fraction of its tolerance.
        "of_tolerance_by_step": {str(step): by_step[step] for step in sorted(by_step)},
        "mismatches": mismatches,
        "missing_count": len(only),
        "missing": [list(k) for k in only[:10]],
        "ok": mismatches == 0 and not only and compared > 0,
    }


def variants_of(run_dir: Path) -> list[str]:
    """Returns the variant folders of a run directory (those holding a record file), sorted."""
    if not run_dir.is_dir():
        raise RecordError(f"{run_dir} is not a run directory")
    found = sorted(
        d.name
        for d in run_dir.iterdir()
        if d.is_dir() and any((d / f).exists() for f in RECORD_FILES)
    )
    if not found:
        raise RecordError(f"{run_dir} holds no variant with {' or '.join(RECORD_FILES)}")
    return found


def compare_runs(run_a: Path, run_b: Path, rtol: float = DEFAULT_RTOL) -> dict[str, Any]:
    """Compares the records of two run directories; B is the reference.

    Returns ``ok``, ``max_abs_diff``, ``max_rel_diff``, ``mismatches`` and ``rtol`` over all of
    them, and ``records``: per ``variant/file`` the result of ``compare_values``. A variant or
    record file present in only one run is a mismatch (``ok`` False, listed in ``missing``).
    Raises RecordError when either directory has no records at all.
    """
    variants_a, variants_b = variants_of(run_a), variants_of(run_b)
    records: dict[str, Any] = {}
    missing = sorted(set(variants_a) ^ set(variants_b))
    for variant in sorted(set(variants_a) & set(variants_b)):
        for name in RECORD_FILES:
            path_a, path_b = run_a / variant / name, run_b / variant / name
            if not path_a.exists() and not path_b.exists():
                continue
            if not (path_a.exists() and path_b.exists()):
                missing.append(f"{variant}/{name}")
                continue
            records[f"{variant}/{name}"] = compare_values(
                flatten(read_rows(path_a), name), flatten(read_rows(path_b), name), rtol
            )
    return {
        "ok": not missing and bool(records) and all(r["ok"] for r in records.values()),
        "rtol": rtol,
        "max_abs_diff": max((r["max_abs_diff"] for r in records.values()), default=0.0),
        "max_rel_diff": max((r["max_rel_diff"] for r in records.values()), default=0.0),
        "mismatches": sum(r["mismatches"] for r in records.values()),
        "missing": missing,
        "records": records,
    }


def describe(result: dict[str, Any]) -> list[str]:
    """Returns the printed lines: one per record file, then the verdict."""
    lines = []
    for name, r in result["records"].items():
        state = "ok" if r["ok"] else f"{r['mismatches']} mismatches, {r['missing_count']} missing"
        lines.append(
            f"{name}: {r['values']} values, max abs diff {r['max_abs_diff']:.3g}, "
            f"max rel diff {r['max_rel_diff']:.3g} ({state})"
        )
    for name in result["missing"]:
        lines.append(f"{name}: in only one of the runs")
    verdict = "agree" if result["ok"] else "DO NOT agree"
    lines.append(
        f"the runs {verdict} to rtol {result['rtol']:g}: max abs diff "
        f"{result['max_abs_diff']:.3g}, max rel diff {result['max_rel_diff']:.3g}"
    )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path, help="the run to check (e.g. the GPU's)")
    parser.add_argument("run_b", type=Path, help="the reference run (e.g. the CPU's)")
    parser.add_argument("--rtol", type=float, default=DEFAULT_RTOL)
    parser.add_argument("--out", type=Path, help="also write the result here as JSON")
    args = parser.parse_args(argv)
    if not args.rtol > 0:
        print("compare_records: --rtol must be positive", file=sys.stderr)
        return 2
    try:
        result = compare_runs(args.run_a, args.run_b, args.rtol)
    except (RecordError, OSError) as err:
        print(f"compare_records: {err}", file=sys.stderr)
        return 2
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    for line in describe(result):
        print(line)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
