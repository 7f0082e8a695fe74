"""Times a data-parallel train step and the eta-split probe on N devices against one device.

Usage (CPU: N host "devices" forced, which share the same cores, so no speed-up is expected;
the point is the overhead of the split and that the numbers agree):

    python benchmarks/sharding.py --devices 2 [--width 0.25 --batch-size 128 --repeats 5]

On a machine with N accelerators drop nothing: the flag only forces host devices when the
backend is the CPU. Both candidates run in one process in alternating rounds and the medians
are reported; a JSON line goes to benchmarks/results/sharding.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=2, help="devices of the sharded run")
    parser.add_argument("--width", type=float, default=0.25, help="VGG-11 width multiplier")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--etas", type=int, default=8, help="probe grid length")
    parser.add_argument("--repeats", type=int, default=5, help="alternating timing rounds")
    parser.add_argument("--variant", default="batchnorm")
    args = parser.parse_args()
    os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={args.devices}")
    from landscape.app import runtime

    runtime.tune_process()  # as the landscape command tunes itself, before JAX starts
    sys.path.insert(0, str(ROOT))

    import jax
    import numpy as np

    from landscape import mesh as meshes
    from landscape.bench import machine
    from landscape.config import ModelConfig, ProbeConfig, preset
    from landscape.data import synthetic_dataset
    from landscape.runs import Trainer

    config = preset("quick").replace(
        data="synthetic",
        batch_size=args.batch_size,
        model=ModelConfig(width=args.width),
        probe=ProbeConfig(num_etas=args.etas),
    )
    dataset = synthetic_dataset(seed=0, num_train=2048, num_test=256)
    mesh = meshes.make_mesh(args.devices)
    trainers = {
        1: Trainer(config, args.variant, dataset),
        args.devices: Trainer(config, args.variant, dataset, mesh),
    }
    states = {n: t.initial_state() for n, t in trainers.items()}
    batches = {n: t.train_source(0) for n, t in trainers.items()}

    def train(n):
        return trainers[n].train_step(states[n], batches[n])

    def probe(n, out):
        t = trainers[n]
        return t.probe_step(states[n], batches[n], out.grads, out.loss, t.etas)

    compile_s, outs = {}, {}
    for n in trainers:  # the first calls compile
        start = time.perf_counter()
        outs[n] = jax.block_until_ready(train(n))[1]
        jax.block_until_ready(probe(n, outs[n]))
        compile_s[n] = time.perf_counter() - start
    times = {("train", n): [] for n in trainers} | {("probe", n): [] for n in trainers}
    for _ in range(args.repeats):
        for n in trainers:
            start = time.perf_counter()
            jax.block_until_ready(train(n))
            times["train", n].append(time.perf_counter() - start)
            start = time.perf_counter()
            jax.block_until_ready(probe(n, outs[n]))
            times["probe", n].append(time.perf_counter() - start)
    medians = {f"{what}_{n}dev_s": statistics.median(v) for (what, n), v in times.items()}
    p1, pn = probe(1, outs[1]), probe(args.devices, outs[args.devices])
    agreement = {
        "loss_abs_diff": abs(float(outs[1].loss) - float(outs[args.devices].loss)),
        "probe_loss_max_rel_diff": float(
            np.max(np.abs(np.asarray(p1.loss) - np.asarray(pn.loss)) / np.abs(np.asarray(p1.loss)))
        ),
    }
    result = {
        "machine": machine(),
        "load_average_1min": os.getloadavg()[0],
        "config": {"width": args.width, "batch_size": args.batch_size, "etas": args.etas,
                   "variant": args.variant, "devices": args.devices, "repeats": args.repeats},
        "compile_s": {f"{n}dev": v for n, v in compile_s.items()},
        **medians,
        **agreement,
    }  # fmt: skip
    out = ROOT / "benchmarks" / "results" / "sharding.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(result) + "\n")
    n = args.devices
    print(f"{jax.default_backend()} ({result['machine']['cpu_count']} CPUs, load {result['load_average_1min']:.1f}), "
          f"VGG-11 width {args.width} {args.variant}, batch {args.batch_size}, {args.etas} etas")  # fmt: skip
    for what in ("train", "probe"):
        one, many = medians[f"{what}_1dev_s"], medians[f"{what}_{n}dev_s"]
        print(
            f"{what:6s} 1 device {one * 1e3:8.1f} ms | {n} devices {many * 1e3:8.1f} ms | ratio {many / one:.2f}"
        )
    print(f"compile: 1 device {compile_s[1]:.1f} s, {n} devices {compile_s[n]:.1f} s; agreement {agreement}")  # fmt: skip
    print(f"appended to {out}")


if __name__ == "__main__":
    main()
