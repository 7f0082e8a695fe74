"""Parallel sweeps: several configurations of a grid at once, each in its own worker process.

``run_parallel`` is ``sweep.run_sweep`` with N workers: every configuration that is not done
runs as ``python -m landscape.app.worker SWEEP_DIR NAME`` (a fresh interpreter: JAX must not be
forked once initialised), with its own devices, and its output goes to
``SWEEP_DIR/logs/NAME.log``. The parent never imports JAX. The run directories, ``sweep.json``
and ``summary.csv`` are the sequential sweep's, and each worker calls the same
``sweep.run_configuration``, so a parallel sweep resumes, skips and summarises exactly as a
sequential one, and either can continue the other.

Devices (``plan_slots``): on GPUs each worker sees its own ``count // N`` devices through
``CUDA_VISIBLE_DEVICES`` (``HIP_VISIBLE_DEVICES`` on ROCm; TPUs: ``TPU_VISIBLE_CHIPS`` and the
process bounds); on a CPU each worker is pinned to its own ``cores // N`` cores. Pinning is what
limits XLA's CPU threads in JAX 0.10.2: its intra-op pool is sized from the process's CPU
affinity, while ``--xla_cpu_multi_thread_eigen=false`` leaves both pool threads busy
(docs/devices.md#parallel-sweeps; docs/performance.md#parallel-sweeps says when parallel workers
pay). A failing configuration does not stop the others; it is returned, with its log, for the
caller to report.

Numbers: on a CPU, XLA's runtime splits an operation among the threads it has, so a worker
pinned to fewer cores than a sequential sweep's process sums in another order: records agree
with the sequential sweep to float32 rounding at first, and can drift apart once a max-pool or
ReLU switches on that rounding; they agree bit for bit with any run given the same number of
cores (a sequential sweep under ``taskset -c 0`` reproduces 1-core workers exactly; tested).
The compiled programs are the same (one compilation-cache entry serves both).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from landscape.config import RunConfig
from landscape.data import load_dataset
from landscape.results import METRICS_FILE
from landscape.sweep import SweepError, configurations, open_sweep, run_status, summarize_sweep

LOG_DIR = "logs"
CPUS_ENV = "LANDSCAPE_WORKER_CPUS"  # the cores a CPU worker pins itself to, before JAX starts
SLOT_ENV = "LANDSCAPE_WORKER_SLOT"  # the slot's description, for the log
# The worker processes' entry point: the application layer, which tunes the worker's process.
WORKER_MODULE = "landscape.app.worker"
# numpy's BLAS (data preparation) would otherwise start one thread per core in every worker.
THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
GPU_VISIBLE = {"cuda": "CUDA_VISIBLE_DEVICES", "rocm": "HIP_VISIBLE_DEVICES"}
TPU_BOUNDS = {
    1: "1,1,1",
    2: "1,2,1",
    4: "2,2,1",
}  # chips per process -> TPU_CHIPS_PER_PROCESS_BOUNDS
TPU_PORT = 8476  # each TPU worker gets its own port from here up


@dataclass(frozen=True)
class Backend:
    """What the workers will run on: ``platform`` (cpu, cuda, rocm, tpu), its device count
    (cores for the CPU) and ``how`` it was found."""

    platform: str
    device_count: int
    how: str


@dataclass(frozen=True)
class Slot:
    """Where one worker runs: the environment variables it starts with and a description."""

    index: int
    label: str  # e.g. "cuda devices 0,1" or "cpu cores 1"
    devices: int  # devices (GPU/TPU) or cores (CPU) it owns
    env: dict[str, str]


@dataclass(frozen=True)
class SweepEvent:
    """One thing that happened in a parallel sweep, for the caller's progress lines.

    ``kind``: ``skipped`` (already done), ``started``, ``finished`` or ``failed``. ``finished``
    counts the configurations done so far (skipped ones included) out of ``total``;
    ``seconds`` is the worker's wall time; ``message`` is a failure's last log line.
    """

    kind: str
    name: str
    total: int
    finished: int
    status: str = ""  # the status the configuration had when it was picked: new, partial, done
    slot: str = ""
    log: Path | None = None
    seconds: float = 0.0
    returncode: int | None = None
    message: str = ""


def _accelerator_files() -> bool:
    dev = Path("/dev")
    return (
        any(dev.glob("nvidia[0-9]*"))
        or (dev / "kfd").exists()  # ROCm
        or any(dev.glob("accel[0-9]*"))  # TPU v2-v4
        or any(p.name.isdigit() for p in dev.glob("vfio/*"))  # TPU v5 and later
    )


def detect_backend(env: Mapping[str, str] | None = None) -> Backend:
    """Returns the backend the workers will get, without initialising JAX in this process.

    ``JAX_PLATFORMS=cpu``, or no accelerator device files under /dev, means the CPU (its cores
    counted from this process's affinity). Otherwise one short child process initialises JAX
    (memory preallocation off) only to count the devices, and exits before any worker starts.
    """
    env = dict(os.environ if env is None else env)
    cores = len(os.sched_getaffinity(0))
    platforms = env.get("JAX_PLATFORMS", "").strip().lower()
    if platforms.split(",")[0] == "cpu":
        return Backend("cpu", cores, "JAX_PLATFORMS=cpu")
    if not platforms and not _accelerator_files():
        return Backend("cpu", cores, "no accelerator under /dev")
    script = (
        "import json, jax; d = jax.local_devices(); "
        "v = str(getattr(d[0].client, 'platform_version', '')).lower(); "
        "p = d[0].platform if d[0].platform != 'gpu' else ('rocm' if 'rocm' in v else 'cuda'); "
        "print(json.dumps({'platform': p, 'count': len(d)}))"
    )
    child_env = {**env, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
    try:
        done = subprocess.run(
            [sys.executable, "-c", script],
            env=child_env,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise SweepError("--parallel: counting the devices took over 10 minutes") from None
    try:
        found = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise SweepError(f"--parallel: could not count the devices ({last})") from None
    if found["platform"] == "cpu":
        return Backend("cpu", cores, "JAX found no accelerator")
    return Backend(found["platform"], int(found["count"]), "counted by a JAX child process")


def plan_slots(
    parallel: int,
    backend: Backend,
    *,
    oversubscribe: bool = False,
    env: Mapping[str, str] | None = None,
    cpus: Sequence[int] | None = None,
) -> list[Slot]:
    """Splits the devices (or CPU cores) between ``parallel`` workers; returns one Slot each.

    Each worker gets ``count // parallel`` of them, disjoint, in order; the rest stay idle.
    More workers than devices is refused unless ``oversubscribe``: then each worker gets one
    device (or core), shared round-robin, and on GPUs each preallocates only its share of the
    memory (``XLA_PYTHON_CLIENT_MEM_FRACTION``). TPU chips cannot be shared between processes.
    ``env`` is the parent's environment (its ``CUDA_VISIBLE_DEVICES`` are the ids split);
    ``cpus`` the cores (default: this process's affinity).
    """
    env = os.environ if env is None else env
    if parallel < 1:
        raise SweepError(f"--parallel {parallel}: use a positive number of workers")
    if backend.platform == "cpu":
        units = [str(c) for c in sorted(os.sched_getaffinity(0) if cpus is None else cpus)]
        what = "CPU cores"
    else:
        var = GPU_VISIBLE.get(backend.platform, "TPU_VISIBLE_CHIPS")
        given = [v.strip() for v in env.get(var, "").split(",") if v.strip()]
        units = given[: backend.device_count]
        if len(units) < backend.device_count:
            units = [str(i) for i in range(backend.device_count)]
        what = f"{backend.platform} devices"
    if parallel > len(units) and (not oversubscribe or backend.platform == "tpu"):
        hint = "TPU chips cannot be shared" if backend.platform == "tpu" else "--oversubscribe"
        raise SweepError(
            f"--parallel {parallel}: only {len(units)} {what} here; use at most {len(units)} "
            f"workers (or {hint})"
        )
    per = max(len(units) // parallel, 1)
    if backend.platform == "tpu":
        per = max(n for n in TPU_BOUNDS if n <= per)
    sharing = math.ceil(parallel / len(units))
    slots = []
    for i in range(parallel):
        group = (
            units[i * per : (i + 1) * per] if parallel <= len(units) else [units[i % len(units)]]
        )
        ids = ",".join(group)
        if backend.platform == "cpu":
            label = f"cpu cores {ids}"
            slot_env = {CPUS_ENV: ids, **{v: str(len(group)) for v in THREAD_ENV}}
        elif backend.platform == "tpu":
            label = f"tpu chips {ids}"
            slot_env = {
                "TPU_VISIBLE_CHIPS": ids,
                "TPU_CHIPS_PER_PROCESS_BOUNDS": TPU_BOUNDS[per],
                "TPU_PROCESS_BOUNDS": "1,1,1",
                "TPU_PROCESS_PORT": str(TPU_PORT + i),
            }
        else:
            label = f"{backend.platform} devices {ids}"
            slot_env = {GPU_VISIBLE[backend.platform]: ids}
            if sharing > 1:
                slot_env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / sharing:.3f}"
        if sharing > 1:
            label += f" (shared by {sharing} workers)"
        slots.append(Slot(i, label, len(group), {**slot_env, SLOT_ENV: label}))
    return slots


def log_path(sweep_dir: str | os.PathLike, name: str) -> Path:
    """Returns where a parallel sweep's worker writes the output of configuration ``name``.

    Outside the run directory: a new run may replace its directory, and the log must survive.
    """
    return Path(sweep_dir) / LOG_DIR / f"{name}.log"


def worker_command(
    sweep_dir: Path, name: str, *, probe_enabled: bool, devices: int | str | None
) -> list[str]:
    """Returns the command line of the worker that runs configuration ``name``."""
    command = [sys.executable, "-m", WORKER_MODULE, str(sweep_dir), name]
    if devices is not None:
        command += ["--devices", str(devices)]
    return command + ([] if probe_enabled else ["--no-probe"])


@dataclass
class _Worker:
    """A running worker: its configuration, slot, start time, log and step counter."""

    name: str
    status: str
    steps: int  # steps of the whole run, all variants
    slot: Slot
    start: float
    log: Path
    handle: Any
    counter: _StepCounter


class _StepCounter:
    """Counts the training steps recorded in a run's metrics files, reading only new bytes."""

    def __init__(self, run_dir: Path, variants: Sequence[str]):
        self.files = {v: run_dir / v / METRICS_FILE for v in variants}
        self.offsets = dict.fromkeys(variants, 0)
        self.steps = dict.fromkeys(variants, 0)
        self.inodes: dict[str, int | None] = dict.fromkeys(variants)

    def __call__(self) -> int:
        for variant, path in self.files.items():
            try:
                with open(path, "rb") as f:
                    inode = os.fstat(f.fileno()).st_ino
                    if inode != self.inodes[variant]:
                        # A new file, or the old one replaced: a resumed run rewrites it
                        # without the rows past its checkpoint (results.truncate_rows).
                        self.inodes[variant] = inode
                        self.offsets[variant] = self.steps[variant] = 0
                    f.seek(self.offsets[variant])
                    chunk = f.read()
            except FileNotFoundError:
                continue
            complete = chunk[: chunk.rfind(b"\n") + 1]  # a torn last line waits for the next call
            self.offsets[variant] += len(complete)
            for line in complete.splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if "loss" in row:
                    self.steps[variant] = max(self.steps[variant], int(row["step"]) + 1)
        return sum(self.steps.values())


def _tail(path: Path) -> str:
    """Returns the last non-empty line of a log (a failure's message), or ''."""
    try:
        with open(path, "rb") as f:
            f.seek(max(f.seek(0, os.SEEK_END) - 4096, 0))
            lines = f.read().decode("utf-8", "replace").strip().splitlines()
    except FileNotFoundError:
        return ""
    return lines[-1].strip() if lines else ""


def _stop(running: Mapping[subprocess.Popen, Any], grace_s: float = 30.0) -> None:
    """Asks every worker to stop (SIGTERM: it keeps what it has written), then kills stragglers."""
    for proc in running:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for proc in running:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def run_parallel(
    sweep_dir: str | os.PathLike,
    base: RunConfig | None = None,
    grid: dict[str, list] | None = None,
    *,
    parallel: int,
    probe_enabled: bool = True,
    devices: int | str | None = None,
    oversubscribe: bool = False,
    backend: Backend | None = None,
    prepare_data: bool = True,
    on_event: Callable[[SweepEvent], None] | None = None,
    on_poll: Callable[[dict[str, tuple[int, int]]], None] | None = None,
    poll_s: float = 0.25,
) -> tuple[list[dict[str, Any]], list[SweepEvent]]:
    """Runs the configurations that are not done, ``parallel`` at a time, each in a worker.

    ``base``/``grid`` None continues the sweep saved in ``sweep_dir``. ``on_event`` is called
    for every skipped, started, finished and failed configuration; ``on_poll`` with
    ``{name: (steps recorded, steps in total)}`` of the running ones, a few times a second.
    ``summary.csv`` is rewritten after every finished configuration. ``prepare_data`` loads the
    data once here first (a download or decoding happens once, not in every worker; a bad
    ``--data`` fails before any worker starts). On an exception (Ctrl-C) the workers are
    stopped, keeping their checkpoints, and it is re-raised.

    Returns ``(summarize_sweep(sweep_dir), failures)``: the summary rows and the ``failed``
    events (name, exit code, log path, last log line).
    """
    sweep_dir = Path(sweep_dir)
    # Bad --parallel/--devices are refused before the sweep directory is touched.
    backend = backend or detect_backend()
    slots = plan_slots(parallel, backend, oversubscribe=oversubscribe)
    # On a CPU --devices counts XLA host devices (forced with XLA_FLAGS), not the cores split.
    if backend.platform != "cpu" and isinstance(devices, int) and devices > slots[-1].devices:
        raise SweepError(
            f"--devices {devices}: each of the {parallel} workers has only "
            f"{slots[-1].devices} ({slots[-1].label})"
        )
    base, grid = open_sweep(sweep_dir, base, grid)
    points = configurations(base, grid)
    total, finished, failures = len(points), 0, []

    def emit(event: SweepEvent) -> None:
        if on_event is not None:
            on_event(event)

    pending: deque[tuple[str, RunConfig, str]] = deque()
    for name, _, config in points:
        status = run_status(sweep_dir / name, config)
        if status == "done":
            finished += 1
            emit(SweepEvent("skipped", name, total, finished, status))
        else:
            pending.append((name, config, status))
    summarize_sweep(sweep_dir)
    if not pending:
        return summarize_sweep(sweep_dir), failures
    if prepare_data:
        load_dataset(base.data, progress=False)
    package_root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    free = deque(slots)
    running: dict[subprocess.Popen, _Worker] = {}
    try:
        while pending or running:
            while pending and free:
                name, config, status = pending.popleft()
                slot = free.popleft()
                log = log_path(sweep_dir, name)
                log.parent.mkdir(parents=True, exist_ok=True)
                handle = open(log, "ab")  # noqa: SIM115 (closed when the worker ends)
                stamp = time.strftime("%Y-%m-%d %H:%M:%S")
                handle.write(f"=== {stamp}: {name} ({status}) on {slot.label}\n".encode())
                handle.flush()
                env = {**os.environ, **slot.env, "PYTHONPATH": path}
                command = worker_command(
                    sweep_dir, name, probe_enabled=probe_enabled, devices=devices
                )
                proc = subprocess.Popen(
                    command, env=env, stdin=subprocess.DEVNULL, stdout=handle, stderr=handle
                )
                running[proc] = _Worker(
                    name, status, config.steps * len(config.variants), slot, time.monotonic(),
                    log, handle, _StepCounter(sweep_dir / name, config.variants),
                )  # fmt: skip
                emit(SweepEvent("started", name, total, finished, status, slot.label, log))
            time.sleep(poll_s)
            if on_poll is not None:
                on_poll({w.name: (w.counter(), w.steps) for w in running.values()})
            for proc in [p for p in running if p.poll() is not None]:
                w = running.pop(proc)
                w.handle.close()
                free.append(w.slot)
                config = next(c for n, _, c in points if n == w.name)
                ok = proc.returncode == 0 and run_status(sweep_dir / w.name, config) == "done"
                finished += ok
                message = "" if ok else _tail(w.log) or f"exit code {proc.returncode}"
                event = SweepEvent(
                    "finished" if ok else "failed", w.name, total, finished, w.status,
                    w.slot.label, w.log, time.monotonic() - w.start, proc.returncode, message,
                )  # fmt: skip
                if not ok:
                    failures.append(event)
                emit(event)
                summarize_sweep(sweep_dir)  # readable while the others go on
    finally:
        if running:
            _stop(running)
            for w in running.values():
                w.handle.close()
    return summarize_sweep(sweep_dir), failures


# ---- the worker ------------------------------------------------------------------------------
