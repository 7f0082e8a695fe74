"""Experiments: one file per paper figure group, run step by step through the public CLI.

An experiment file (TOML, in ``experiments/``) lists the ``landscape`` commands that make a group
of the paper's figures, with ``{placeholders}`` filled from the chosen preset::

    title = "Figure 2: noisy BatchNorm"
    [presets.smoke]
    variants = "standard,batchnorm,noisy_batchnorm"
    [[steps]]
    name = "train"
    run = ["probe", "--preset", "{preset}", "--data", "{data}", "--out", "{out}/vgg"]

``run_experiment`` runs each step as its own ``python -m landscape ...`` process (exactly what a
user would type) and records in ``OUT/experiment.jsonl`` when each step started and how it
ended. A step is done only when that log says its command exited 0: an output file that exists
proves nothing, since most are written from a step's first moment. Running an interrupted
experiment again skips the finished steps and continues the interrupted one: a training run
with ``--resume``, every other command by running it again (they skip their own finished
work, or rewrite their output whole). ``write_combined_report`` then gathers every run
directory below ``OUT`` into one HTML page.
"""

from __future__ import annotations

import base64
import html
import json
import os
import shutil
import string
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from landscape import report as run_report
from landscape.files import atomic_write_text
from landscape.results import LOCK_FILE, read_rows, repair_tail

PLAN_FILE = "experiment.json"
LOG_FILE = "experiment.jsonl"
REPORT_FILE = "report.html"


class ExperimentError(Exception):
    """A problem with an experiment file or its variables (the CLI prints one line, exits 2)."""


STEP_KEYS = ("name", "run", "description")
# Commands that train into ``--out DIR`` and continue an interrupted run with ``--resume DIR``.
RESUMABLE = ("train", "probe")


@dataclass(frozen=True)
class Step:
    """One command of an experiment: ``landscape <run...>``."""

    name: str
    run: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True)
class Experiment:
    """A parsed experiment file."""

    path: Path
    title: str
    description: str
    steps: tuple[Step, ...]
    variables: dict[str, str] = field(default_factory=dict)  # defaults for every preset
    presets: dict[str, dict[str, str]] = field(default_factory=dict)  # per-preset overrides


def load_experiment(path: str | os.PathLike) -> Experiment:
    """Returns the experiment described by the TOML file at ``path``.

    Raises ExperimentError with a one-line reason for a missing file, bad TOML or a step
    without a command.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ExperimentError(f"no experiment file {path}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ExperimentError(f"{path} is not valid TOML: {err}") from None
    steps = []
    for i, step in enumerate(raw.get("steps", [])):
        if not isinstance(step, dict):
            raise ExperimentError(f"{path}: each [[steps]] entry must be a table")
        run = step.get("run")
        if not run or not isinstance(run, list) or not all(isinstance(a, str) for a in run):
            raise ExperimentError(f'{path}: step {i + 1} needs run = ["command", "args", ...]')
        unknown = sorted(set(step) - set(STEP_KEYS))
        if "done" in unknown:
            raise ExperimentError(
                f"{path}: step {i + 1} has done = ...; remove it: a step is done when its "
                "command finished, which the experiment records itself"
            )
        if unknown:
            raise ExperimentError(
                f"{path}: step {i + 1} has an unknown key {unknown[0]!r}; a step has "
                f"{', '.join(STEP_KEYS)}"
            )
        steps.append(
            Step(
                name=str(step.get("name", f"step{i + 1}")),
                run=tuple(run),
                description=str(step.get("description", "")),
            )
        )
    if not steps:
        raise ExperimentError(f"{path} defines no [[steps]]")
    names = [s.name for s in steps]
    if len(set(names)) != len(names):
        raise ExperimentError(f"{path}: step names must be unique ({', '.join(names)})")
    as_text = lambda table: {str(k): str(v) for k, v in table.items()}  # noqa: E731
    return Experiment(
        path=path,
        title=str(raw.get("title", path.stem)),
        description=str(raw.get("description", "")),
        steps=tuple(steps),
        variables=as_text(raw.get("vars", {})),
        presets={str(k): as_text(v) for k, v in raw.get("presets", {}).items()},
    )


def variables_for(
    experiment: Experiment,
    preset: str,
    out: str | os.PathLike,
    data: str | None,
    overrides: dict[str, str] | None = None,
) -> dict[str, str]:
    """Returns the placeholder values: file defaults < the preset's < ``overrides``.

    ``{preset}``, ``{out}``, ``{root}`` (the folder holding ``out``, where sibling experiments
    write by default) and ``{data}`` are always defined; ``data`` defaults to the preset's value
    or, failing that, to ``cifar10`` (the CLI's own resolution: $LANDSCAPE_DATA, cache). Other
    variables may use those four in their values.
    """
    if experiment.presets and preset not in experiment.presets:
        raise ExperimentError(
            f"{experiment.path.name} has no preset {preset!r}; choose one of "
            f"{', '.join(experiment.presets)}"
        )
    fixed_by_runner = sorted({"out", "root"} & set(overrides or {}))
    if fixed_by_runner:
        raise ExperimentError(
            f"--set {fixed_by_runner[0]}=...: the output folder is chosen with --out"
        )
    unused = sorted(set(overrides or {}) - placeholders(experiment))
    if unused:
        raise ExperimentError(
            f"--set {unused[0]}=...: {experiment.path.name} has no placeholder {{{unused[0]}}}; "
            f"it has {', '.join(sorted(placeholders(experiment) - {'out', 'root'}))}"
        )
    values = {"preset": preset, "data": "cifar10", **experiment.variables}
    values.update(experiment.presets.get(preset, {}))
    values.update(overrides or {})
    if data is not None:
        values["data"] = data
    values["out"] = str(out)
    values["root"] = str(Path(out).parent)
    # A variable may itself name the fixed ones, e.g. reuse = "{root}/figure1_4_smoothness-{preset}/vgg".
    fixed = {k: values[k] for k in ("preset", "data", "out", "root")}
    for key, value in values.items():
        if key not in fixed and "{" in value:
            values[key] = _fill(value, fixed, f"{experiment.path.name}, variable {key!r}")
    return values


def _names(text: str) -> list[str]:
    """Returns the ``{placeholder}`` names in ``text``; raises ExperimentError on bad braces or
    an empty or positional placeholder (``{}``, ``{0}``)."""
    try:
        names = [name for _, name, _, _ in string.Formatter().parse(text) if name is not None]
    except ValueError as err:
        raise ExperimentError(f"{text!r}: {err} (write a literal brace as {{{{ or }}}})") from None
    for name in names:
        if not name or name.isdigit():
            raise ExperimentError(
                f"{text!r}: {{{name}}} names no placeholder; use {{NAME}} with a name under "
                "[vars], or write a literal brace as {{ or }}"
            )
    return names


def placeholders(experiment: Experiment) -> set[str]:
    """Returns every name ``--set`` may give: those the steps and variables use, the file's
    variables, and the four always defined."""
    texts = [arg for step in experiment.steps for arg in step.run]
    texts += list(experiment.variables.values())
    texts += [v for preset in experiment.presets.values() for v in preset.values()]
    used = {name for text in texts for name in _names(text)}
    defined = set(experiment.variables) | {k for p in experiment.presets.values() for k in p}
    return used | defined | {"preset", "data", "out", "root"}


def _fill(text: str, values: dict[str, str], where: str) -> str:
    names = _names(text)
    missing = sorted(set(names) - set(values))
    if missing:
        raise ExperimentError(
            f"{where}: no value for {{{missing[0]}}}; define it under [vars] or pass --set "
            f"{missing[0]}=..."
        )
    return text.format(**values)


def resolve(experiment: Experiment, values: dict[str, str]) -> list[Step]:
    """Returns the steps with every placeholder filled in."""
    resolved = []
    for step in experiment.steps:
        where = f"{experiment.path.name}, step {step.name!r}"
        resolved.append(
            Step(
                name=step.name,
                run=tuple(_fill(arg, values, where) for arg in step.run),
                description=step.description,
            )
        )
    return resolved


def _run_cli(args: Sequence[str]) -> int:
    """Runs ``python -m landscape ARGS`` with this interpreter; returns its exit code."""
    return subprocess.run([sys.executable, "-m", "landscape", *args], check=False).returncode


def finished_steps(out: str | os.PathLike) -> set[tuple[str, tuple[str, ...]]]:
    """Returns the (name, command) of every step that ``OUT/experiment.jsonl`` says exited 0."""
    rows = read_rows(Path(out) / LOG_FILE)
    return {(r["name"], tuple(r["run"])) for r in rows if r.get("status") == "ok" and "run" in r}


def _started_steps(out: Path) -> set[tuple[str, tuple[str, ...]]]:
    return {(r["name"], tuple(r["run"])) for r in read_rows(out / LOG_FILE) if "run" in r}


def _option(args: Sequence[str], name: str) -> str | None:
    """Returns the value of ``--name VALUE`` or ``--name=VALUE`` in ``args`` (the last one)."""
    value = None
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
    return value


def continue_command(args: Sequence[str]) -> list[str]:
    """Returns the command that continues an interrupted step ``args``.

    A training run (``train``/``probe`` into ``--out DIR``) whose directory holds a run goes on
    with ``--resume DIR``; a directory the interrupted step created but never wrote into is
    removed so the step starts again. Every other command runs again as it is: the analyses
    skip their finished steps, and re-probes, figures and reports are rewritten whole.
    """
    args = list(args)
    if not args or args[0] not in RESUMABLE or _option(args, "--from") or "--resume" in args:
        return args
    out = _option(args, "--out")
    if out is None:
        return args
    run_dir = Path(out)
    if (run_dir / "config.json").exists():
        return [*args, "--resume", out]
    if run_dir.is_dir() and all(p.name == LOCK_FILE for p in run_dir.iterdir()):
        shutil.rmtree(run_dir)
    return args


def _log(out: Path, row: dict[str, Any]) -> None:
    repair_tail(out / LOG_FILE)  # a runner killed mid-append: the next row starts its own line
    with open(out / LOG_FILE, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run_experiment(
    experiment: Experiment,
    values: dict[str, str],
    *,
    runner: Callable[[Sequence[str]], int] = _run_cli,
    say: Callable[[str], None] = print,
) -> list[dict[str, Any]]:
    """Runs the experiment's steps in order into ``values['out']``; returns one row per step.

    Each step is logged in ``OUT/experiment.jsonl`` when it starts and when it ends (name,
    command, exit code, seconds). A step whose command exited 0 before is skipped; one that was
    started but never finished is continued (``continue_command``). The first failing step stops
    the experiment: ExperimentError names it.
    """
    out = Path(values["out"])
    out.mkdir(parents=True, exist_ok=True)
    steps = resolve(experiment, values)
    plan = {
        "experiment": str(experiment.path),
        "title": experiment.title,
        "values": values,
        "steps": [{"name": s.name, "run": list(s.run)} for s in steps],
    }
    atomic_write_text(out / PLAN_FILE, json.dumps(plan, indent=2) + "\n")
    finished, started = finished_steps(out), _started_steps(out)
    rows = []
    for number, step in enumerate(steps, 1):
        key = (step.name, step.run)
        if key in finished:
            say(f"[{number}/{len(steps)}] {step.name}: done already")
            rows.append({"name": step.name, "status": "skipped"})
            continue
        args = continue_command(step.run) if key in started else list(step.run)
        command = "landscape " + " ".join(args)
        again = " (continuing)" if key in started else ""
        say(f"[{number}/{len(steps)}] {step.name}{again}: {command}")
        _log(out, {"name": step.name, "run": list(step.run), "status": "started"})
        start = time.perf_counter()
        code = runner(args)
        row = {
            "name": step.name,
            "run": list(step.run),
            "ran": args,
            "exit_code": code,
            "seconds": round(time.perf_counter() - start, 1),
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "status": "ok" if code == 0 else "failed",
        }
        _log(out, row)
        rows.append(row)
        if code != 0:
            raise ExperimentError(
                f"step {step.name!r} failed (exit code {code}): {command}; fix it and run the "
                "experiment again to continue from there"
            )
    return rows


# --- the combined report ----------------------------------------------------------------------


def _run_dirs(out: Path) -> list[Path]:
    """Returns the landscape run directories below ``out`` (those with a config.json)."""
    return sorted(p.parent for p in out.rglob("config.json") if p.parent != out)


def write_combined_report(out: str | os.PathLike, title: str = "", description: str = "") -> Path:
    """Writes ``OUT/report.html``: every run's figures and summary below ``out`` on one page.

    The page is self-contained (figures inline as base64 PNG). Returns its path.
    """
    out = Path(out)
    plan_path = out / PLAN_FILE
    plan = json.loads(plan_path.read_text()) if plan_path.exists() else {}
    title = title or plan.get("title", "landscape experiment")
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{run_report._CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    if description:
        parts.append(f"<p class='sub'>{html.escape(description)}</p>")
    if plan.get("steps"):
        parts.append("<h2>Commands</h2><ol>")
        parts += [
            f"<li><code>{html.escape('landscape ' + ' '.join(s['run']))}</code></li>"
            for s in plan["steps"]
        ]
        parts.append("</ol>")
    runs = _run_dirs(out)
    if not runs:
        parts.append("<p>No run has finished yet.</p>")
    for run_dir in runs:
        rel = run_dir.relative_to(out)
        parts.append(f"<h2>{html.escape(str(rel))}</h2>")
        if (run_dir / run_report.REPORT_FILE).exists():
            link = html.escape(f"{rel}/{run_report.REPORT_FILE}")
            parts.append(f"<p><a href='{link}'>full report of this run</a></p>")
        try:
            records = {v: r for v, r in run_report.load(run_dir).items() if len(r.get("step", ()))}
            config = json.loads((run_dir / "config.json").read_text())
            rows = run_report.summary_rows(records, config.get("steps"))
            if rows:
                parts.append(run_report._summary_table(rows))
        except Exception as err:  # a run still in progress or without probes: say so
            parts.append(f"<p class='sub'>no summary: {html.escape(str(err))}</p>")
        for png in sorted((run_dir / "figures").glob("*.png")):
            data = base64.b64encode(png.read_bytes()).decode("ascii")
            parts.append(
                f"<figure><img alt='{html.escape(png.stem)}' src='data:image/png;base64,{data}'>"
                f"<figcaption>{html.escape(png.stem)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    # Whole or not at all: a full disk never leaves a truncated page that looks finished.
    return atomic_write_text(out / REPORT_FILE, "\n".join(parts))
