"""A user's network against the built-in VGG at a similar parameter count: one train step and one
probe (8 step sizes) of ResNet-20 (examples/resnet20.py, 0.27M parameters) and of VGG-11 at
width 3/16 (0.33M), with and without BatchNorm, side by side in one process.

    python benchmarks/own_model_step.py [--repeats 5] [--batch-size 128]

Rounds alternate between the networks, so load on a shared machine falls on all alike; medians
are reported, compilation excluded. One JSON line goes to benchmarks/results/own_models.jsonl.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from landscape.app import runtime  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    runtime.tune_process()  # as the landscape command tunes itself, before JAX starts

    import jax

    from landscape.bench import machine
    from landscape.config import ModelConfig, ProbeConfig, preset
    from landscape.data import synthetic_dataset
    from landscape.models import count_params
    from landscape.runs import Trainer

    base = preset("quick").replace(
        data="synthetic", batch_size=args.batch_size, probe=ProbeConfig(every=1)
    )
    networks = {
        "resnet20": base.replace(
            model=ModelConfig(factory="examples.resnet20:resnet20", variant_arg="norm"),
            variants=("batchnorm", "none"),
        ),
        "vgg11 x3/16": base.replace(model=ModelConfig(width=0.1875)),
    }
    dataset = synthetic_dataset()
    cases = {}
    for name, config in networks.items():
        for variant in config.variants:
            trainer = Trainer(config, variant, dataset)
            state = trainer.initial_state()
            batch = trainer.train_source(0)
            label = f"{name} {'BN' if variant == 'batchnorm' else 'no BN'}"
            cases[label] = (trainer, state, batch, count_params(state.params))

    def train(case):
        trainer, state, batch, _ = case
        return trainer.train_step(state, batch)

    def probe(case, out):
        trainer, state, batch, _ = case
        return trainer.probe_step(state, batch, out.grads, out.loss, trainer.etas)

    times = {label: {"train": [], "probe": []} for label in cases}
    outs = {}
    for label, case in cases.items():  # compile, excluded from the timings
        outs[label] = jax.block_until_ready(train(case))[1]
        jax.block_until_ready(probe(case, outs[label]))
    for _ in range(args.repeats):
        for label, case in cases.items():
            start = time.perf_counter()
            jax.block_until_ready(train(case))
            times[label]["train"].append(time.perf_counter() - start)
            start = time.perf_counter()
            jax.block_until_ready(probe(case, outs[label]))
            times[label]["probe"].append(time.perf_counter() - start)
    reference = "vgg11 x3/16 BN"
    rows = []
    ref_step = None
    print(
        f"{'network':<22}{'params':>10}{'train (ms)':>12}{'probe (ms)':>12}{'probed step':>13}{'vs VGG BN':>11}"
    )
    for label, case in cases.items():
        step = statistics.median(times[label]["train"]) + statistics.median(times[label]["probe"])
        if label == reference:
            ref_step = step
        rows.append(
            {
                "network": label,
                "params": case[3],
                "train_step_s": statistics.median(times[label]["train"]),
                "probe_s": statistics.median(times[label]["probe"]),
                "probed_step_s": step,
            }
        )
    for row in rows:
        row["ratio_to_vgg_bn"] = row["probed_step_s"] / ref_step
        print(f"{row['network']:<22}{row['params']:>10}{1e3 * row['train_step_s']:>12.1f}"
              f"{1e3 * row['probe_s']:>12.1f}{1e3 * row['probed_step_s']:>13.1f}{row['ratio_to_vgg_bn']:>11.2f}")  # fmt: skip
    record = {
        "machine": machine(runtime.describe()),
        "batch_size": args.batch_size,
        "repeats": args.repeats,
        "rows": rows,
    }
    path = ROOT / "benchmarks" / "results" / "own_models.jsonl"
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"appended to {path}")


if __name__ == "__main__":
    main()
