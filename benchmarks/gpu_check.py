"""The Python half of ``benchmarks/gpu_check.sh``: what is easier to say in Python than in bash.

    python benchmarks/gpu_check.py devices OUT/devices.json
    python benchmarks/gpu_check.py timed [--logs GLOB] NAME STEPS OUT/paper_runs.jsonl -- COMMAND...
    python benchmarks/gpu_check.py extrapolate OUT --preset paper --short NAME --long NAME
        [--to FILE] [--concurrent]
    python benchmarks/gpu_check.py summary OUT --mode gpu

``devices`` records what JAX sees; ``timed`` runs a ``landscape probe`` command, timing it and
reading the per-variant timings it prints (or, for a parallel sweep, those its workers' logs
hold); ``extrapolate`` turns a short and a long run into the wall time of a preset's whole
protocol; ``summary`` gathers every stage's results into ``summary.json`` and exits non-zero
when a stage failed or the GPU's records differ from the CPU's. Only ``devices`` imports JAX;
nothing here imports torch.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landscape.config import preset  # imports no JAX

# What ``landscape probe`` prints per variant (landscape/app/cli/run.py).
VARIANT_LINE = re.compile(
    r"^(?P<variant>\S+): (?P<steps>\d+) steps in (?P<wall>[\d.]+) s \([\d.]+ steps/s\), "
    r"probe (?P<probe_pct>\d+)% of it \((?P<probed>\d+) probed steps\), "
    r"checkpoints (?P<checkpoint>[\d.]+) s"
)
# Stages without which there is no check at all; they must be in stages.jsonl and have passed.
REQUIRED_STAGES = ("devices", "smoke_compare")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut off by a timeout
    return rows


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def devices(out: Path) -> int:
    """Writes what JAX sees (backend, devices, versions, memory) to ``out``; prints it. Returns 0."""
    # Imported here: the other subcommands, the summary above all, must work where JAX is broken.
    import jax

    info: dict[str, Any] = {
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "device_kinds": sorted({getattr(d, "device_kind", "?") for d in jax.devices()}),
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
    }
    try:
        import jaxlib

        info["jaxlib"] = jaxlib.__version__
    except ImportError:
        pass
    try:
        stats = jax.devices()[0].memory_stats() or {}
        info["memory_bytes_limit"] = stats.get("bytes_limit")
    except Exception:  # memory_stats is backend-specific; its absence is not a failure
        info["memory_bytes_limit"] = None
    # Whether the eager PyTorch side of the probe's target could be measured here (not imported:
    # only asked for, so the check never depends on it).
    info["torch_installed"] = _has_module("torch")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(info, indent=1) + "\n")
    print(f"jax.devices(): {info['devices']}")
    print(json.dumps(info, indent=1))
    return 0


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def parse_variant_lines(text: str) -> dict[str, dict[str, float]]:
    """Returns per variant what ``landscape probe`` printed: steps, wall, probe share and
    checkpoint seconds (``VARIANT_LINE``); variants it did not print are absent."""
    found = {}
    for line in text.splitlines():
        m = VARIANT_LINE.match(line.strip())
        if m:
            found[m["variant"]] = {
                "steps": int(m["steps"]),
                "wall_s": float(m["wall"]),
                "probe_share": int(m["probe_pct"]) / 100,
                "probed_steps": int(m["probed"]),
                "checkpoint_s": float(m["checkpoint"]),
            }
    return found


def timed(name: str, steps: int, results: Path, command: list[str], logs: str | None = None) -> int:
    """Runs ``command``, echoing its output, and appends ``{name, steps, seconds, rc,
    variants}`` to ``results``; returns the command's exit status. The variants' lines are read
    from the output and, after the command, from the files matching ``logs`` (a glob)."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        lines.append(line)
    rc = proc.wait()
    for path in sorted(glob.glob(logs)) if logs else []:
        lines.append(Path(path).read_text(errors="replace"))
    row = {
        "name": name,
        "steps": steps,
        "seconds": time.perf_counter() - start,
        "rc": rc,
        "variants": parse_variant_lines("".join(lines)),
        "command": command,
    }
    results.parent.mkdir(parents=True, exist_ok=True)
    with open(results, "a") as f:
        f.write(json.dumps(row) + "\n")
    return rc


def extrapolate_protocol(
    short: dict[str, Any],
    long: dict[str, Any],
    protocol_steps: int,
    variants: list[str],
    *,
    concurrent: bool = False,
) -> dict[str, Any]:
    """Returns the wall time of a protocol of ``protocol_steps`` steps for each of ``variants``,
    from a short and a long run of the same command (rows of ``timed``), in seconds.
    ``concurrent``: the variants ran at the same time (a parallel sweep), so a step of the
    protocol takes as long as the slowest variant's, not the sum of theirs.

    The long run's whole time (start-up, data, compilation, its steps, the final evaluation) plus
    the remaining steps at the marginal rate: per variant, (long wall - short wall) / (long
    steps - short steps), which leaves out every fixed cost; from the whole commands' times when
    a variant's line is missing. When noise makes a marginal rate non-positive (runs too short
    for the machine's jitter), the long run's average rate, compilation included, stands in:
    an upper bound, and ``rate_from`` says so. Raises ValueError when the runs cannot give a rate.
    """
    extra = long["steps"] - short["steps"]
    if extra <= 0:
        raise ValueError("the long run must have more steps than the short one")
    if long.get("rc") or short.get("rc"):
        raise ValueError("a timed run failed")
    per_variant: dict[str, float] = {}
    source = "per-variant lines"
    for variant in variants:
        a, b = short["variants"].get(variant), long["variants"].get(variant)
        if a is None or b is None:
            per_variant = {}
            break
        per_variant[variant] = (b["wall_s"] - a["wall_s"]) / extra
    # Without per-variant lines a step of the whole command is shared out among the variants
    # that ran in turn; variants that ran at once each took all of it.
    share = 1 if concurrent else len(variants)
    if not per_variant:
        source = "whole commands"
        whole = (long["seconds"] - short["seconds"]) / extra
        per_variant = {v: whole / share for v in variants}
    if min(per_variant.values()) <= 0:
        source = "the long run's average (an upper bound: the marginal rate was lost in noise)"
        average = long["seconds"] / long["steps"]
        per_variant = {v: average / share for v in variants}
    step_s = max(per_variant.values()) if concurrent else sum(per_variant.values())
    remaining = protocol_steps - long["steps"]
    protocol_s = long["seconds"] + remaining * step_s
    return {
        "protocol_steps": protocol_steps,
        "variants": variants,
        "concurrent": concurrent,
        "marginal_step_s": per_variant,
        "rate_from": source,
        "long_run_s": long["seconds"],
        "short_run_s": short["seconds"],
        "protocol_s": protocol_s,
        "protocol_min": protocol_s / 60,
        "under_10_min": protocol_s < 600,
    }


def extrapolate(
    out: Path,
    preset_name: str,
    short_name: str,
    long_name: str,
    to: str = "paper_protocol.json",
    concurrent: bool = False,
) -> int:
    """Writes ``out/<to>`` from the timed runs in ``out/paper_runs.jsonl``; returns 0, or 1 when
    the runs cannot give an estimate (said in one line). Runs whose variants ran at once (a
    parallel sweep) are ``concurrent``."""
    config = preset(preset_name)
    runs = {r["name"]: r for r in _read_jsonl(out / "paper_runs.jsonl")}
    if short_name not in runs or long_name not in runs:
        print(f"extrapolate: no timed run {short_name!r} and {long_name!r} in {out}")
        return 1
    try:
        result = extrapolate_protocol(
            runs[short_name],
            runs[long_name],
            config.steps,
            list(config.variants),
            concurrent=concurrent,
        )
    except ValueError as err:
        print(f"extrapolate: {err}")
        return 1
    # The timed runs probe every step; a preset that probes less often (smoke) is overestimated.
    result = {"preset": preset_name, "preset_probe_every": config.probe.every, **result}
    result["runs"] = [short_name, long_name]
    (out / to).write_text(json.dumps(result, indent=1) + "\n")
    per_step = ", ".join(f"{v} {s * 1e3:.1f} ms" for v, s in result["marginal_step_s"].items())
    print(
        f"{preset_name} protocol ({config.steps} steps x {len(config.variants)} variants, probed "
        f"every step; runs {short_name}, {long_name}): {result['protocol_min']:.1f} min; per "
        f"probed step {per_step} (from the {result['rate_from']})"
    )
    return 0


def _bench_figures(out: Path) -> dict[str, Any] | None:
    rows = _read_jsonl(out / "bench" / "bench.jsonl")
    if not rows:
        return None
    r = rows[-1]["results"]
    return {
        "train_step_s": r["train_step_s"],
        "gradient_s": r["gradient_s"],
        "probed_step_s": r["probed_step_s"],
        "fastest_strategy": r["fastest_strategy"],
        "probe": r["probe"],
        "compile_train_step_s": r["compile_train_step_s"],
        "whole_run_steps_per_s": r.get("run", {}).get("steps_per_s"),
        # A step with a checkpoint against a plain one, per format and way of copying to host.
        "checkpoint_overhead": {
            f: v["overhead_ratio"] for f, v in r.get("checkpoint", {}).get("formats", {}).items()
        },
        "device": rows[-1]["machine"]["device"],
    }


def _peer_figures(out: Path) -> list[dict[str, Any]]:
    lines = _read_jsonl(out / "peers.jsonl")
    if not lines:
        return []
    keep = ("setting", "task", "tool", "method", "iterations", "value", "stderr", "rel_error")
    keep += ("median_s", "first_s", "compile_s", "gradient_evals", "error")
    return [{k: r[k] for k in keep if k in r} for r in lines[-1]["rows"]]


def first_step_of_tolerance(compare: dict[str, Any]) -> float | None:
    """Returns the largest difference at the first compared step, as a fraction of the allowed
    one, over every record file of ``compare_records``' result; None when it has no per-step
    figures. A defect shows from that step on; rounding drift starts far below 1 and grows."""
    firsts = []
    for record in compare.get("records", {}).values():
        by_step = record.get("of_tolerance_by_step") or {}
        if by_step:
            firsts.append(by_step[min(by_step, key=int)])
    return max(firsts) if firsts else None


def _torch_figures(out: Path) -> list[dict[str, Any]]:
    keep = ("torch_probed_step_s", "jax_probed_step_s", "probed_step_ratio_torch_over_jax")
    keep += ("train_step_ratio_torch_over_jax", "probe_ratio_torch_over_jax")
    keep += ("agreement_max_rel_diff",)
    return [
        {
            "variant": row["settings"]["variant"],
            "torch_device": row["machine"].get("torch_device"),
            **{k: row["results"][k] for k in keep},
        }
        for row in _read_jsonl(out / "torch_vs_jax.jsonl")
    ]


def summary(out: Path, mode: str, data_note: str) -> int:
    """Writes ``out/summary.json`` from the stages' results; prints it in short. Returns 0 when
    every stage that ran passed, the required ones ran and the records agreed, else 1."""
    stages = {row["stage"]: row for row in _read_jsonl(out / "stages.jsonl")}
    compare = _read_json(out / "compare.json")
    report: dict[str, Any] = {
        "mode": mode,
        "data": data_note,
        "stages": stages,
        "devices": _read_json(out / "devices.json"),
        "records_agree": None if compare is None else compare["ok"],
        "records_at_first_step_of_tolerance": None
        if compare is None
        else first_step_of_tolerance(compare),
        "compare": None
        if compare is None
        else {k: compare[k] for k in ("ok", "rtol", "max_abs_diff", "max_rel_diff", "mismatches")},
        "compare_default_precision": None,
        "paper_protocol": _read_json(out / "paper_protocol.json"),
        "paper_protocol_shared": _read_json(out / "paper_protocol_shared.json"),
        "bench": _bench_figures(out),
        "peers_jax": _peer_figures(out),
        "eager_torch": _torch_figures(out),
    }
    loose = _read_json(out / "compare_default_precision.json")
    if loose is not None:
        report["compare_default_precision"] = {
            k: loose[k] for k in ("ok", "rtol", "max_abs_diff", "max_rel_diff", "mismatches")
        }
    failed = [n for n in REQUIRED_STAGES if stages.get(n, {}).get("status") != "ok"]
    report["failed_required_stages"] = failed
    # A stage that failed or ran out of its time fails the check; one the budget left no time
    # to start did not run at all, which is said, not counted against the GPU path.
    report["incomplete_stages"] = [
        n for n, s in stages.items() if s["status"] not in ("ok", "skipped")
    ]
    report["skipped_stages"] = [n for n, s in stages.items() if s["status"] == "skipped"]
    report["ok"] = not failed and not report["incomplete_stages"] and bool(report["records_agree"])
    (out / "summary.json").write_text(json.dumps(report, indent=1) + "\n")

    print(f"gpu_check ({mode}): {'OK' if report['ok'] else 'FAILED'}; data: {data_note}")
    for name, s in stages.items():
        print(f"  {name:<18} {s['status']:<8} {s['seconds']:6.1f} s")
    if report["skipped_stages"]:
        print(
            f"  skipped, the time budget spent: {', '.join(report['skipped_stages'])} "
            "(a larger $GPU_CHECK_BUDGET_S runs them)"
        )
    if compare is not None:
        print(
            f"  records agree: {compare['ok']} (max abs diff {compare['max_abs_diff']:.3g}, "
            f"max rel diff {compare['max_rel_diff']:.3g}, rtol {compare['rtol']:g})"
        )
        first = report["records_at_first_step_of_tolerance"]
        if first is not None:
            print(
                f"  at the first step the largest difference is {first:.2g} of the allowed one "
                "(a defect shows from the first step; rounding drift grows along the run)"
            )
    for key in ("paper_protocol", "paper_protocol_shared"):
        protocol = report[key]
        if protocol:
            how = "at once" if protocol.get("concurrent") else "one after the other"
            print(
                f"  {protocol['preset']} protocol: {protocol['protocol_min']:.1f} min "
                f"({protocol['protocol_steps']} steps x {len(protocol['variants'])} variants, "
                f"{how})"
            )
    for row in report["eager_torch"]:
        print(
            f"  eager torch ({row['torch_device']}) / ours, {row['variant']} probed step: "
            f"{row['probed_step_ratio_torch_over_jax']:.2f}"
        )
    print(f"  written: {out / 'summary.json'}")
    return 0 if report["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("devices")
    p.add_argument("out", type=Path)
    p = sub.add_parser("timed")
    p.add_argument("name")
    p.add_argument("steps", type=int)
    p.add_argument("results", type=Path)
    # Before the positionals: everything after them is the command.
    p.add_argument("--logs", help="a glob of log files that also hold variant lines")
    p.add_argument("command", nargs=argparse.REMAINDER)
    p = sub.add_parser("extrapolate")
    p.add_argument("out", type=Path)
    p.add_argument("--preset", default="paper")
    p.add_argument("--short", required=True)
    p.add_argument("--long", required=True)
    p.add_argument("--to", default="paper_protocol.json", help="file name in OUT")
    p.add_argument("--concurrent", action="store_true", help="the variants ran at once")
    p = sub.add_parser("summary")
    p.add_argument("out", type=Path)
    p.add_argument("--mode", default="gpu")
    p.add_argument("--data-note", default="")
    args = parser.parse_args(argv)
    if args.what == "devices":
        return devices(args.out)
    if args.what == "timed":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        return timed(args.name, args.steps, args.results, command, args.logs)
    if args.what == "extrapolate":
        return extrapolate(args.out, args.preset, args.short, args.long, args.to, args.concurrent)
    return summary(args.out, args.mode, args.data_note)


if __name__ == "__main__":
    sys.exit(main())
