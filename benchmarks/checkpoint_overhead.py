"""Checkpoint overhead: training-step time with and without a checkpoint every step.

Both are measured in one process, alternating blocks of steps, and the median per-step time of
each is reported with their ratio (these machines are shared and noisy: only ratios measured
side by side mean anything). Run:

    python benchmarks/checkpoint_overhead.py --preset quick --data synthetic --blocks 6

Writes a JSON line with the machine, versions, settings and figures to
``benchmarks/results/checkpoint_overhead.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import jax

from landscape.checkpoints import Checkpointer
from landscape.config import preset
from landscape.data import load_dataset
from landscape.runs import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--data", default="synthetic")
    parser.add_argument("--variant", default="batchnorm")
    parser.add_argument("--blocks", type=int, default=6, help="alternating blocks of each kind")
    parser.add_argument("--steps", type=int, default=10, help="steps per block")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()

    config = preset(args.preset)
    dataset = load_dataset(args.data, progress=False)
    trainer = Trainer(config, args.variant, dataset)
    state = trainer.initial_state()
    step = 0
    times: dict[str, list[float]] = {"no_checkpoint": [], "checkpoint": []}
    with tempfile.TemporaryDirectory() as tmp:
        checkpointer = Checkpointer(Path(tmp) / "ckpt", config.checkpoint)
        # Warm up: compile, and let orbax start its threads.
        for _ in range(3):
            checkpointer.save(step, state)
            state, out = trainer.train_step(state, trainer.train_source(step))
            jax.block_until_ready(out.loss)
            step += 1
        for _ in range(args.blocks):
            for kind in ("no_checkpoint", "checkpoint"):
                for _ in range(args.steps):
                    t0 = time.perf_counter()
                    if kind == "checkpoint":
                        checkpointer.save(step, state)
                    state, out = trainer.train_step(state, trainer.train_source(step))
                    jax.block_until_ready(out.loss)
                    times[kind].append(time.perf_counter() - t0)
                    step += 1
        t0 = time.perf_counter()
        checkpointer.close()
        drain = time.perf_counter() - t0
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "benchmark": "checkpoint_overhead",
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "cpu_count": __import__("os").cpu_count(),
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0]),
        "jax": jax.__version__,
        "preset": args.preset,
        "variant": args.variant,
        "width": config.model.width,
        "batch_size": config.batch_size,
        "data": dataset.name,
        "steps_each": len(times["checkpoint"]),
        "median_step_s": med["no_checkpoint"],
        "median_step_with_checkpoint_s": med["checkpoint"],
        "overhead_ratio": med["checkpoint"] / med["no_checkpoint"],
        "final_drain_s": drain,
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "checkpoint_overhead.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    print(
        f"{args.preset}/{args.variant} ({result['backend']}): step {med['no_checkpoint'] * 1e3:.1f} ms, "
        f"with a checkpoint every step {med['checkpoint'] * 1e3:.1f} ms, "
        f"ratio {result['overhead_ratio']:.3f}"
    )


if __name__ == "__main__":
    main()
