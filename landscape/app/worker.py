"""A parallel sweep's worker process: ``python -m landscape.app.worker SWEEP_DIR NAME`` runs one
configuration of a saved sweep (``landscape.parallel`` starts these).

The worker tunes its own process before JAX starts: it pins itself to the cores its slot names,
asks to be stopped with its parent, applies the malloc settings and the compilation cache
(``runtime``). XLA's CPU flags arrive through the environment it inherits from the command.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from landscape.app import runtime
from landscape.data import DataError
from landscape.parallel import CPUS_ENV, SLOT_ENV
from landscape.sweep import SweepError, configurations, open_sweep, run_configuration


class _InterruptOnce:
    """A SIGTERM/SIGINT handler: the first signal stops the run (KeyboardInterrupt, which keeps
    its checkpoints); later ones are ignored so its clean-up is not interrupted. It stays a
    Python handler: switching to SIG_IGN inside it would turn a signal already on its way into
    "OSError: Signal 15 ignored due to race condition"."""

    def __init__(self) -> None:
        self.seen = False

    def __call__(self, signum: int, frame: Any) -> None:
        if not self.seen:
            self.seen = True
            raise KeyboardInterrupt


def worker_main(argv: Sequence[str] | None = None) -> int:
    """Runs one configuration of a saved sweep (``python -m landscape.app.worker DIR NAME``).

    Returns the exit code: 0 done, 1 failed (the reason is the last line printed), 130
    interrupted (the run keeps its checkpoints and resumes on the next sweep).
    """
    parser = argparse.ArgumentParser(prog="python -m landscape.app.worker", description=__doc__)
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("name")
    parser.add_argument("--devices", default="all")
    parser.add_argument("--no-probe", dest="probe", action="store_false")
    args = parser.parse_args(argv)
    runtime.pin_cpus(os.environ.get(CPUS_ENV, ""))
    runtime.stop_with_parent()
    handler = _InterruptOnce()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    start = time.perf_counter()
    devices = int(args.devices) if args.devices.isdigit() else args.devices
    try:
        # JAX is imported only now, once the process is pinned to its cores.
        from landscape.rundir import RunError
    except KeyboardInterrupt:
        return 130
    try:
        where = os.environ.get(SLOT_ENV, "the default devices")
        print(f"pid {os.getpid()}, {where}, cores {sorted(os.sched_getaffinity(0))}", flush=True)
        runtime.tune_malloc()
        runtime.enable_compilation_cache()
        runtime.cache_small_programs()
        base, grid = open_sweep(args.sweep_dir)
        configs = {name: config for name, _, config in configurations(base, grid)}
        if args.name not in configs:
            raise SweepError(f"{args.name!r} is not a configuration of {args.sweep_dir}")
        status = run_configuration(
            args.sweep_dir,
            args.name,
            configs[args.name],
            probe_enabled=args.probe,
            progress=False,
            devices=devices,
            say=lambda line: print(line, flush=True),  # the log carries each variant's speed
        )
    except KeyboardInterrupt:
        print("interrupted; the run resumes from its newest checkpoint next time", flush=True)
        return 130
    except (DataError, RunError, SweepError) as err:
        print(f"error: {err}", flush=True)
        return 1
    print(f"{args.name}: {status} -> done in {time.perf_counter() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(worker_main())
