"""Sweeps: a grid of independent runs (seeds, variants, learning rates, batch sizes, widths).

A sweep directory holds ``sweep.json`` (the base configuration and the grid) and one ordinary
run directory per configuration, named from its grid values (``seed=0_lr=0.05``). Runs go one
after another, each over the devices ``--devices`` gives it (data parallel, ``sharding.py``), or
N at a time in worker processes with their own devices (``landscape.parallel``, ``--parallel``).
Running the sweep again skips the configurations whose records are complete and resumes an
interrupted one from its newest checkpoint (``runs.run(..., resume=True)``), so a sweep can be
stopped at any time. ``summarize_sweep`` gathers every run's medians and final accuracy into
one table, written to ``SWEEP_DIR/summary.csv`` after every finished run and at the end.
"""

from __future__ import annotations

import csv
import itertools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from landscape.config import (
    SETTINGS,
    ConfigError,
    RunConfig,
    check_setting,
    override,
    parse_value,
    setting_name,
)
from landscape.data import load_dataset
from landscape.files import atomic_open, atomic_write_text
from landscape.plots.sweep import write_sweep_figure
from landscape.results import (
    DIVERGED_FILE,
    METRICS_FILE,
    load,
    load_divergence,
    load_metrics,
    read_rows,
)
from landscape.summary import median_finite

SWEEP_FILE = "sweep.json"
SUMMARY_FILE = "summary.csv"
FIGURE_STEM = "sweep"  # SWEEP_DIR/sweep.png and .pdf
# The final training loss is the mean over the last steps trained, not the last step's loss
# alone, which one batch makes noisy.
FINAL_LOSS_STEPS = 50


class SweepError(Exception):
    """A user-facing problem with a sweep (the CLI prints the one-line message, exits 2)."""


# A grid may vary any setting of the configuration (``landscape.config.SETTINGS``, by its short
# name or dotted path), and ``variant``: each configuration then trains that one variant.
VARIANT_KEY = "variant"


def grid_keys() -> list[str]:
    """Returns the keys a grid may use: ``variant`` and every setting's short name."""
    return [VARIANT_KEY, *SETTINGS]


def _apply(config: RunConfig, key: str, value: Any) -> RunConfig:
    if key == VARIANT_KEY:
        return config.replace(variants=(value,))
    return override(config, {key: value})


def _grid_value(key: str, text: str) -> Any:
    """Returns one grid value parsed and checked by the setting's own rule."""
    if key == VARIANT_KEY:
        return text
    value = parse_value(key, text)
    check_setting(key, value)
    return value


def parse_grid(specs: list[str]) -> dict[str, list]:
    """Parses ``["seed=0,1", "lr=0.05,0.1"]`` into ``{"seed": [0, 1], "lr": [0.05, 0.1]}``.

    Raises SweepError (one line) for an unknown key, a key given twice, a value of the wrong
    type or sign, or a repeated value.
    """
    grid: dict[str, list] = {}
    for spec in specs:
        key, sep, text = spec.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not text.strip():
            raise SweepError(f"--grid {spec!r}: use KEY=V1,V2,... (e.g. seed=0,1)")
        if key != VARIANT_KEY:
            try:
                key = setting_name(key)
            except ConfigError:
                raise SweepError(
                    f"--grid: unknown key {key!r}; choose from {', '.join(grid_keys())}"
                ) from None
        if key in grid:
            raise SweepError(f"--grid: {key} is given twice; list all its values in one --grid")
        values = []
        for item in (v.strip() for v in text.split(",")):
            try:
                value = _grid_value(key, item)
            except ConfigError as err:
                raise SweepError(f"--grid {err}") from None
            if value in values:
                raise SweepError(f"--grid {key}: {item!r} is listed twice")
            values.append(value)
        grid[key] = values
    return grid


def _label(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def configurations(base: RunConfig, grid: dict[str, list]) -> list[tuple[str, dict, RunConfig]]:
    """Returns ``(name, values, config)`` for every point of the grid, in a fixed order.

    The order is the Cartesian product with the first key varying slowest; ``name`` is the run
    directory's name, ``key=value`` joined by ``_`` (``seed=0_lr=0.05``).
    """
    keys = list(grid)
    out = []
    for combo in itertools.product(*(grid[k] for k in keys)):
        values = dict(zip(keys, combo, strict=True))
        config = base
        for key, value in values.items():
            config = _apply(config, key, value)
        name = "_".join(f"{k}={_label(v)}" for k, v in values.items()) or "base"
        out.append((name, values, config))
    return out


def open_sweep(
    sweep_dir: str | os.PathLike, base: RunConfig | None = None, grid: dict | None = None
) -> tuple[RunConfig, dict[str, list]]:
    """Creates ``sweep.json`` or checks it; returns the sweep's (base config, grid).

    With ``base`` and ``grid`` None the saved sweep is continued as it was defined. Given, they
    must match a sweep already in the directory (running the same command again continues it);
    a directory holding something else is refused.
    """
    sweep_dir = Path(sweep_dir)
    path = sweep_dir / SWEEP_FILE
    if path.exists():
        saved = json.loads(path.read_text())
        saved_base, saved_grid = RunConfig.from_dict(saved["base"]), saved["grid"]
        if base is not None and (base != saved_base or grid != saved_grid):
            raise SweepError(
                f"{sweep_dir} holds a different sweep; continue it with --resume {sweep_dir} "
                "or choose another --out"
            )
        return saved_base, saved_grid
    if base is None:
        raise SweepError(f"cannot resume: {sweep_dir} has no {SWEEP_FILE} (not a landscape sweep)")
    # Hidden files are another process's sweep.json being written: the tasks of a scheduler's
    # array may all start the same sweep at once.
    if sweep_dir.exists() and any(not p.name.startswith(".") for p in sweep_dir.iterdir()):
        raise SweepError(f"{sweep_dir} already exists and is not a landscape sweep")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    runs = [{"name": n, "values": v} for n, v, _ in configurations(base, grid)]
    body = {"base": base.to_dict(), "grid": grid, "runs": runs}
    atomic_write_text(path, json.dumps(body, indent=2) + "\n")  # readers never see half of it
    return base, grid


def run_status(run_dir: Path, config: RunConfig) -> str:
    """Returns ``"done"`` (every variant evaluated at the last step, or stopped by its
    divergence), ``"partial"`` or ``"new"``."""
    if not (run_dir / "config.json").exists():
        return "new"
    for variant in config.variants:
        if (run_dir / variant / DIVERGED_FILE).exists():
            continue  # stopped where its loss stopped being finite: as done as it will get
        rows = read_rows(run_dir / variant / METRICS_FILE)
        if not any(r.get("step") == config.steps and "test_accuracy" in r for r in rows):
            return "partial"
    return "done"


def run_sweep(
    sweep_dir: str | os.PathLike,
    base: RunConfig | None = None,
    grid: dict[str, list] | None = None,
    *,
    probe_enabled: bool = True,
    progress: bool = True,
    devices: int | str | None = None,
    dataset: Any = None,
    on_run: Callable[[int, int, str, str], None] | None = None,
) -> list[dict[str, Any]]:
    """Runs every configuration of the grid that is not done yet, one after another.

    ``base``/``grid`` None continues the sweep saved in ``sweep_dir``. A finished run is
    skipped, an interrupted one resumed from its newest checkpoint. ``on_run(index, total,
    name, status)`` is called before each configuration (status: new, partial or done).
    Returns ``summarize_sweep(sweep_dir)`` (also written to ``SWEEP_DIR/summary.csv``).
    """
    sweep_dir = Path(sweep_dir)
    base, grid = open_sweep(sweep_dir, base, grid)
    points = configurations(base, grid)
    if dataset is None:  # the grid never changes the data: load it once for every run
        dataset = load_dataset(base.data, progress=progress)
    for index, (name, _, config) in enumerate(points):
        status = run_status(sweep_dir / name, config)
        if on_run is not None:
            on_run(index, len(points), name, status)
        if status == "done":
            continue
        run_configuration(
            sweep_dir,
            name,
            config,
            probe_enabled=probe_enabled,
            progress=progress,
            dataset=dataset,
            devices=devices,
        )
        summarize_sweep(sweep_dir)  # summary.csv is readable while the sweep goes on
    return summarize_sweep(sweep_dir)


def run_index(
    sweep_dir: str | os.PathLike,
    index: int,
    base: RunConfig | None = None,
    grid: dict[str, list] | None = None,
    *,
    probe_enabled: bool = True,
    progress: bool = True,
    devices: int | str | None = None,
) -> tuple[str, str]:
    """Runs configuration ``index`` (0-based, in ``configurations`` order) of the sweep, and
    no other; returns its ``(name, status before)``.

    For a scheduler's job array (SLURM, Ray...): every task gives the same grid and sweep
    directory and its own index. Tasks may start together: ``sweep.json`` is written whole,
    each run directory has one writer (its lock), and ``summary.csv``, rebuilt from the run
    directories after each run, is replaced whole.
    """
    sweep_dir = Path(sweep_dir)
    base, grid = open_sweep(sweep_dir, base, grid)
    points = configurations(base, grid)
    if not 0 <= index < len(points):
        raise SweepError(
            f"--index {index}: the grid has {len(points)} configurations, 0 to {len(points) - 1}"
        )
    name, _, config = points[index]
    status = run_configuration(
        sweep_dir, name, config, probe_enabled=probe_enabled, progress=progress, devices=devices
    )
    summarize_sweep(sweep_dir)
    return name, status


def run_configuration(
    sweep_dir: str | os.PathLike,
    name: str,
    config: RunConfig,
    *,
    probe_enabled: bool = True,
    progress: bool = True,
    dataset: Any = None,
    devices: int | str | None = None,
    say: Callable[[str], None] | None = None,
) -> str:
    """Runs one configuration of a sweep into ``SWEEP_DIR/name``: new, or resumed if partial.

    Returns the status it found (``"done"`` runs nothing). Shared by the sequential sweep and
    the worker processes of a parallel one (``landscape.parallel``), so both resume alike.
    ``say`` gets each trained variant's timing line (``VariantReport.timing_line``).
    """
    # Imported here, not at the top: a parallel sweep's parent process plans and summarises
    # with this module and must not start JAX before its workers pin their cores.
    from landscape.runs import run

    run_dir = Path(sweep_dir) / name
    status = run_status(run_dir, config)
    if status != "done":
        reports = run(
            config,
            run_dir,
            resume=status == "partial",
            overwrite=status == "new" and run_dir.exists(),
            probe_enabled=probe_enabled,
            progress=progress,
            dataset=dataset,
            devices=devices,
        )
        for report in reports:
            if say is not None and report.steps_run:
                say(report.timing_line())
    return status


def summarize_sweep(sweep_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Returns one row per configuration and variant, and writes them to ``summary.csv``.

    Each row: ``run`` (its directory name), the grid values, ``variant``, ``status`` (done,
    partial or new), ``steps`` (trained), ``probed`` (probed steps), the medians over probed
    steps of ``loss_band``, ``grad_dist_max`` (gradient predictiveness, the max over etas of
    ||grad L(x - eta g) - g||) and ``beta`` (effective beta-smoothness), and the last
    ``test_accuracy`` (fraction) and ``test_loss`` (nats), ``train_loss`` (nats: the mean
    training loss of the last ``FINAL_LOSS_STEPS`` steps trained, non-finite ones left out) and
    ``diverged_at`` (the first step whose training loss was not finite, for a run that
    diverged). BatchNorm runs in training mode during the probe, as the optimiser sees the loss.
    Missing values are empty. Also draws these against the grid's first axis into
    ``SWEEP_DIR/sweep.png`` (``plots.sweep``).
    """
    sweep_dir = Path(sweep_dir)
    base, grid = open_sweep(sweep_dir)
    rows = []
    for name, values, config in configurations(base, grid):
        run_dir = sweep_dir / name
        status = run_status(run_dir, config)
        records = load(run_dir) if status != "new" else {}
        metrics = load_metrics(run_dir) if status != "new" else {}
        divergence = load_divergence(run_dir) if status != "new" else {}
        for variant in config.variants:
            row: dict[str, Any] = {"run": name, **values, "variant": variant, "status": status}
            train = metrics.get(variant, {}).get("train", {})
            test = metrics.get(variant, {}).get("test", {})
            row["steps"] = int(train["step"].max()) + 1 if len(train.get("step", [])) else 0
            rec = records.get(variant, {})
            row["probed"] = len(rec.get("step", []))
            for key in ("loss_band", "grad_dist_max", "beta"):
                row[key] = median_finite(rec[key]) if row["probed"] else None
            for key in ("test_accuracy", "test_loss"):
                row[key] = float(test[key][-1]) if len(test.get(key, [])) else None
            row["train_loss"] = final_loss(train.get("loss", []))
            row["diverged_at"] = divergence.get(variant, {}).get("step")
            rows.append(row)
    write_csv(rows, sweep_dir / SUMMARY_FILE)
    write_sweep_figure(rows, list(grid), sweep_dir / FIGURE_STEM)
    return rows


def final_loss(losses: Any) -> float | None:
    """Returns the mean of the finite values among the last ``FINAL_LOSS_STEPS`` training losses
    (nats), or None when there are none."""
    last = np.asarray(losses, dtype=np.float64)[-FINAL_LOSS_STEPS:]
    finite = last[np.isfinite(last)]
    return float(finite.mean()) if finite.size else None


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """Writes ``rows`` (dicts with the same keys) as CSV; None becomes an empty cell."""
    if not rows:
        return
    with atomic_open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
