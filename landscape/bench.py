"""Speed measurements: train step, probe strategies, compile times, checkpoint overhead, memory.

Everything is measured in one process, side by side: the candidates are timed in alternating
rounds and the median of each is reported, so a shared, noisy machine slows them alike and the
ratios stay meaningful. ``landscape bench`` and ``benchmarks/bench.py`` call ``run_bench``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jax
import numpy as np

from landscape.checkpoints import Checkpointer, gathers_by_default
from landscape.config import RunConfig
from landscape.data import Dataset
from landscape.results import repair_tail
from landscape.runs import Trainer, make_probe_step, make_train_probe_step, train_variant
from landscape.train import step_batch


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def machine(process: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Returns a description of where the numbers were taken.

    ``process`` holds the caller's process settings that change speed (the command passes
    ``landscape.app.runtime.describe()``); without it ``malloc_tuning`` is recorded as None.
    """
    device = jax.devices()[0]
    return {
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "backend": jax.default_backend(),
        "device": getattr(device, "device_kind", str(device)),
        "device_count": jax.device_count(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        # Other work on the machine changes absolute times and even ratios (PyTorch's threads
        # suffer more from sharing cores than XLA's): keep the load beside every figure.
        "load_average_1m": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        # Including the command's own CPU flags: the convolutions XLA uses depend on them.
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        # Whether glibc keeps XLA's scratch memory mapped between calls (app/runtime.py).
        "malloc_tuning": None,
        **(process or {}),
    }


def run_bench(
    config: RunConfig,
    dataset: Dataset,
    *,
    variant: str = "batchnorm",
    strategies: tuple[str, ...] = ("map", "unroll", "vmap"),
    repeats: int = 5,
    checkpoint_steps: int = 10,
    run_steps: int = 20,
    progress: Callable[[str], None] | None = None,
    process: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Measures one variant of ``config`` and returns the figures (seconds, ratios, bytes).

    Returns a dict with ``machine``, ``settings`` and ``results``: median seconds of one train
    step and one gradient evaluation, per probe strategy its compile and run seconds and its
    cost relative to K gradient evaluations, the checkpoint overhead ratio, peak memory, and
    (``run_steps`` > 0) the steps/s and memory over steps of the whole run loop (``whole_run``).
    ``process`` is recorded in ``machine`` (see ``machine``).
    """
    say = progress or (lambda message: None)
    trainer = Trainer(config, variant, dataset)
    state = trainer.initial_state()
    batch = trainer.train_source(0)
    etas = trainer.etas
    num_etas = int(etas.shape[0])

    say("compiling the train step")
    compile_train = _timed(lambda: trainer.train_step(state, batch)[1].loss)
    _, out = trainer.train_step(state, batch)
    grad_only = jax.jit(jax.grad(lambda p, s, b: trainer.loss_fn(p, s, b)[0]))
    # With the step's key, as the train step draws it: dropout and noisy layers need one.
    keyed = step_batch(state, batch)
    grad_only(state.params, state.batch_stats, keyed)

    probe_fns, compile_probe = {}, {}
    for strategy in strategies:
        say(f"compiling the probe ({strategy})")
        fn = make_probe_step(trainer.loss_fn, strategy, config.probe.map_batch_size)
        compile_probe[strategy] = _timed(lambda fn=fn: fn(state, batch, out.grads, out.loss, etas))
        probe_fns[strategy] = fn

    # The fused train+probe program (--fuse), with the first strategy, against the two separate
    # calls (train step, then probe) that a probed step makes without it.
    fused_strategy = strategies[0]
    fused = make_train_probe_step(
        trainer.train_step, trainer.loss_fn, fused_strategy, config.probe.map_batch_size
    )
    say(f"compiling the fused train step + probe ({fused_strategy})")
    compile_fused = _timed(lambda: fused(state, batch, etas))

    def separate():
        _, step_out = trainer.train_step(state, batch)
        return probe_fns[fused_strategy](state, batch, step_out.grads, step_out.loss, etas)

    candidates: dict[str, Callable[[], Any]] = {
        "train_step": lambda: trainer.train_step(state, batch)[1].loss,
        "gradient": lambda: grad_only(state.params, state.batch_stats, keyed),
        "separate": separate,
        "fused": lambda: fused(state, batch, etas),
    }
    for strategy, fn in probe_fns.items():
        candidates[f"probe_{strategy}"] = lambda fn=fn: fn(state, batch, out.grads, out.loss, etas)
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for round_ in range(repeats):
        say(f"timing round {round_ + 1}/{repeats}")
        for name, fn in candidates.items():
            times[name].append(_timed(fn))
    median = {name: statistics.median(ts) for name, ts in times.items()}

    say("checkpoint overhead")
    ckpt = checkpoint_overhead(trainer, state, checkpoint_steps, config)
    results: dict[str, Any] = {
        "train_step_s": median["train_step"],
        "gradient_s": median["gradient"],
        "compile_train_step_s": compile_train,
        "probe": {
            s: {
                "run_s": median[f"probe_{s}"],
                "compile_s": compile_probe[s],
                "per_gradient_ratio": median[f"probe_{s}"] / (num_etas * median["gradient"]),
            }
            for s in strategies
        },
        "fused": {
            "strategy": fused_strategy,
            "run_s": median["fused"],
            "separate_s": median["separate"],
            "ratio": median["fused"] / median["separate"],
            "compile_s": compile_fused,
        },
        "checkpoint": ckpt,
    }
    if run_steps:
        say(f"a whole run of {run_steps} probed steps")
        results["run"] = whole_run(config, variant, dataset, run_steps)
    results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    fastest = min(strategies, key=lambda s: results["probe"][s]["run_s"])
    results["fastest_strategy"] = fastest
    results["probed_step_s"] = median["train_step"] + results["probe"][fastest]["run_s"]
    return {
        "machine": machine(process),
        "settings": {
            "preset": config.preset,
            "variant": variant,
            "model": dataclasses.asdict(config.model_for(variant)),
            "batch_size": config.batch_size,
            "num_etas": num_etas,
            "data": dataset.name,
            "repeats": repeats,
        },
        "results": results,
    }


def checkpoint_overhead(trainer: Trainer, state, steps: int, config: RunConfig) -> dict[str, Any]:
    """Returns median step seconds without and with a checkpoint every step, per format.

    The formats (``npz``, ``orbax``), npz with the other way of copying to host, and the plain
    step are timed in alternating rounds on the same trajectory. Returns ``step_s``, and per
    format ``step_with_checkpoint_s`` and ``overhead_ratio`` (step with a save / plain step);
    the top-level ``overhead_ratio`` is the configured format's.
    """
    # npz as it runs here, npz with the other way of copying the state to host (gathered on the
    # device first, or leaf by leaf: docs/performance.md#on-a-gpu), and orbax.
    gathers = gathers_by_default(state)
    other = "npz, leaf by leaf" if gathers else "npz, gathered on the device"
    formats = ("npz", other, "orbax")
    times: dict[str, list[float]] = {"without": [], **{f: [] for f in formats}}
    with tempfile.TemporaryDirectory() as tmp:
        checkpointers = {
            f: Checkpointer(
                Path(tmp) / str(i),
                dataclasses.replace(config.checkpoint, format=f.split(",")[0]),
                gather=not gathers if f == other else None,
            )
            for i, f in enumerate(formats)
        }
        step = 0
        for _ in range(2):  # warm-up: writer threads start, the step is compiled
            for checkpointer in checkpointers.values():
                checkpointer.save(step, state)
            state, out = trainer.train_step(state, trainer.train_source(step))
            jax.block_until_ready(out.loss)
            step += 1
        for _ in range(steps):
            for kind in times:
                start = time.perf_counter()
                if kind in checkpointers:
                    checkpointers[kind].save(step, state)
                state, out = trainer.train_step(state, trainer.train_source(step))
                jax.block_until_ready(out.loss)
                times[kind].append(time.perf_counter() - start)
                step += 1
        for checkpointer in checkpointers.values():
            checkpointer.close()
    without = statistics.median(times["without"])
    per_format = {
        f: {
            "step_with_checkpoint_s": statistics.median(times[f]),
            "overhead_ratio": statistics.median(times[f]) / without,
        }
        for f in formats
    }
    chosen = per_format[config.checkpoint.format]
    return {"step_s": without, **chosen, "format": config.checkpoint.format, "formats": per_format}


def _rss_mib() -> float:
    """Returns the resident memory of this process now, in MiB (Linux; NaN elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


def whole_run(config: RunConfig, variant: str, dataset: Dataset, steps: int) -> dict[str, Any]:
    """Times the real ``landscape probe`` loop: train, probe and checkpoint every step.

    A short warm-up run compiles everything (the compiled programs are cached per process), then
    a run of ``steps`` steps into a temporary directory is timed. Returns ``steps_per_s`` (wall
    time of the loop, compilation excluded), the probe's and the checkpoints' share of it, and
    the resident memory after every training step: ``rss_mib`` (``first`` and ``last`` training
    step, ``max`` of all samples, ``after_final_eval``: after the run's closing evaluation over
    the whole test set) and ``rss_slope_kib`` (least-squares growth per step over the second
    half of the training steps, KiB; flat memory is about 0).
    """
    cfg = config.replace(
        variants=(variant,),
        steps=steps,
        eval_every=0,
        eval_batches=1,
        log_every=10,
        checkpoint=dataclasses.replace(config.checkpoint, every=1),
        probe=dataclasses.replace(config.probe, enabled=True, every=1),
    )
    rss: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        warm = Trainer(cfg.replace(steps=2), variant, dataset)
        train_variant(warm, Path(tmp) / "warm", probe_enabled=True)
        trainer = Trainer(cfg, variant, dataset)
        report = train_variant(
            trainer,
            Path(tmp) / "run",
            probe_enabled=True,
            on_step=lambda *_: rss.append(_rss_mib()),
        )
    loop_s = report.wall_s  # the warm-up run compiled every program this run calls
    # The last step's sample is taken after the run's final evaluation, which covers the whole
    # test set in chunks of 1,000 images: its buffers are a one-off, not growth per step. Left
    # in, that single jump at the end of n samples reads as a least-squares slope of about
    # 6 * jump / n^2 per step, a leak that is not there (docs/performance.md#memory).
    during = rss[:-1] or rss
    half = np.asarray(during[len(during) // 2 :])
    slope = float(np.polyfit(np.arange(half.size), half, 1)[0]) * 1024 if half.size > 1 else 0.0
    return {
        "steps": report.steps_run,
        "steps_per_s": report.steps_run / loop_s,
        "probe_share": report.probe_s / loop_s,
        "checkpoint_share": report.checkpoint_s / loop_s,
        "rss_mib": {
            "first": during[0],
            "last": during[-1],
            "max": max(rss),
            "after_final_eval": rss[-1],
        },
        "rss_slope_kib": slope,
    }


def write_results(result: dict[str, Any], out_dir: str | os.PathLike) -> Path:
    """Appends ``result`` as one JSON line to ``out_dir/bench.jsonl`` and returns the path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "bench.jsonl"
    repair_tail(path)  # a torn last line from a killed run: the new line must start its own
    with open(path, "a") as f:
        f.write(json.dumps(result, default=lambda o: np.asarray(o).tolist()) + "\n")
    return path


def result_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """Returns (quantity, value) rows of a result for a printed table."""
    r = result["results"]
    rows = [
        ("train step", f"{r['train_step_s'] * 1e3:.1f} ms"),
        ("one gradient evaluation", f"{r['gradient_s'] * 1e3:.1f} ms"),
        ("train step compile", f"{r['compile_train_step_s']:.1f} s"),
    ]
    for strategy, p in r["probe"].items():
        rows.append(
            (
                f"probe ({strategy})",
                f"{p['run_s'] * 1e3:.0f} ms = {p['per_gradient_ratio']:.2f} x K gradients; "
                f"compile {p['compile_s']:.1f} s",
            )
        )
    c = r["checkpoint"]
    rows += [
        ("fastest probe strategy", r["fastest_strategy"]),
        (
            f"fused train step + probe ({r['fused']['strategy']})",
            f"{r['fused']['ratio']:.2f} x the two separate calls; compile {r['fused']['compile_s']:.1f} s",
        ),
        ("probed step (train + probe)", f"{r['probed_step_s'] * 1e3:.0f} ms"),
        *(
            (f"checkpoint every step ({f})", f"{v['overhead_ratio']:.3f} x a step")
            for f, v in c["formats"].items()
        ),
        ("plain train step (checkpoint rounds)", f"{c['step_s'] * 1e3:.1f} ms"),
        ("peak memory (RSS)", f"{r['peak_rss_mib']:.0f} MiB"),
    ]
    if "run" in r:
        run = r["run"]
        rows += [
            (
                f"whole run, probed + checkpointed every step ({run['steps']} steps)",
                f"{run['steps_per_s']:.2f} steps/s; probe {run['probe_share']:.0%}, "
                f"checkpoints {run['checkpoint_share']:.1%} of the time",
            ),
            (
                "memory over the run",
                f"{run['rss_mib']['first']:.0f} -> {run['rss_mib']['last']:.0f} MiB, "
                f"{run['rss_slope_kib']:+.1f} KiB/step over the second half; "
                f"{run['rss_mib']['after_final_eval']:.0f} MiB after the final evaluation",
            ),
        ]
    return rows


def time_variants(
    config: RunConfig,
    dataset: Dataset,
    variants: tuple[str, ...],
    *,
    reference: str = "batchnorm",
    repeats: int = 7,
    progress: Callable[[str], None] | None = None,
    process: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Times one train step of each variant of ``config``, side by side in one process.

    The variants are timed in alternating rounds on the same batch (the noisy layers draw their
    noise inside the step, so that cost is included). Returns ``machine``, ``settings`` and
    ``results``: per variant the median seconds of one train step, its compile seconds and its
    ratio to ``reference``'s median.
    """
    say = progress or (lambda message: None)
    names = tuple(dict.fromkeys((reference, *variants)))
    steps, compile_s = {}, {}
    for name in names:
        say(f"compiling {name}")
        trainer = Trainer(config, name, dataset)
        state, batch = trainer.initial_state(), trainer.train_source(0)
        compile_s[name] = _timed(lambda t=trainer, s=state, b=batch: t.train_step(s, b)[1].loss)
        steps[name] = lambda t=trainer, s=state, b=batch: t.train_step(s, b)[1].loss
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        say(f"timing round {round_ + 1}/{repeats}")
        for name, fn in steps.items():
            times[name].append(_timed(fn))
    median = {name: statistics.median(ts) for name, ts in times.items()}
    return {
        "machine": machine(process),
        "settings": {
            "preset": config.preset,
            "arch": config.model.arch,
            "width": config.model.width,
            "placement": config.model.placement,
            "batch_size": config.batch_size,
            "repeats": repeats,
            "reference": reference,
        },
        "results": {
            name: {
                "train_step_s": median[name],
                "compile_s": compile_s[name],
                "ratio": median[name] / median[reference],
            }
            for name in names
        },
    }
