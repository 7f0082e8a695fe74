"""A training step and a probed step of each built-in network against VGG-11 of a similar size.

    python benchmarks/networks.py [--repeats 5] [--batch-size 128]

Each network beside VGG-11 at the width whose parameter count is nearest to it (widths in
steps of 1/64), both with the same normalisation where VGG has it (BatchNorm for the
convolutional networks and the MLP, LayerNorm for the Vision Transformer, whose VGG twin then
uses LayerNorm too). Synthetic data of CIFAR-10's shape, batch 128: speed does not depend on
the pixels, and the MLP then sees 3,072 inputs rather than MNIST's 784. Timings are medians of
alternating rounds in one process (the machine is shared and noisy); the probe is the default
of 8 step sizes with the machine's default strategy, reusing the training gradient as runs do.
Appends one JSON line to ``benchmarks/results/networks.jsonl`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import numpy as np

from landscape.app import runtime
from landscape.bench import machine
from landscape.config import ModelConfig, preset
from landscape.data import synthetic_dataset
from landscape.runs import Trainer

RESULTS = Path(__file__).resolve().parent / "results" / "networks.jsonl"
# (network, width, variant): each is timed beside VGG-11 of a similar size with the same variant.
NETWORKS = (
    ("resnet20", 1.0, "batchnorm"),
    ("resnet20_noshort", 1.0, "batchnorm"),
    ("resnet56", 1.0, "batchnorm"),
    ("vit", 1.0, "layernorm"),
    ("mlp", 1.0, "batchnorm"),
)


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def _trainer(config, arch: str, width: float, variant: str, dataset) -> Trainer:
    model = ModelConfig(arch=arch, width=width)
    return Trainer(config.replace(model=model, variants=(variant,)), variant, dataset)


def parameter_count(trainer: Trainer) -> int:
    """Returns the number of trainable parameters of ``trainer``'s network."""
    return sum(int(np.size(p)) for p in jax.tree.leaves(trainer.initial_state().params))


def matching_vgg_width(config, variant: str, target: int, dataset) -> tuple[float, int]:
    """Returns the VGG-11 width (a multiple of 1/64) whose parameter count is nearest to
    ``target``, and that count."""
    best = None
    for sixty_fourths in range(4, 65):
        width = sixty_fourths / 64
        count = parameter_count(_trainer(config, "vgg11", width, variant, dataset))
        if best is None or abs(count - target) < abs(best[1] - target):
            best = (width, count)
        if count > 2 * target:
            break
    assert best is not None
    return best


def time_pairs(repeats: int, batch_size: int) -> dict[str, Any]:
    """Times every network of ``NETWORKS`` and its VGG-11 twin; returns the JSON record."""
    config = preset("quick").replace(batch_size=batch_size)
    dataset = synthetic_dataset(seed=0, num_train=max(1024, batch_size), num_test=100)
    entries: dict[str, dict[str, Any]] = {}
    calls: dict[str, dict[str, Callable[[], Any]]] = {}
    pairs: list[dict[str, str]] = []
    for arch, width, variant in NETWORKS:
        trainer = _trainer(config, arch, width, variant, dataset)
        count = parameter_count(trainer)
        vgg_width, vgg_count = matching_vgg_width(config, variant, count, dataset)
        pairs.append({"network": f"{arch}/{variant}", "vgg": f"vgg11@{vgg_width:g}/{variant}"})
        for name, t, w, n in (
            (f"{arch}/{variant}", trainer, width, count),
            (f"vgg11@{vgg_width:g}/{variant}", None, vgg_width, vgg_count),
        ):
            if name in entries:
                continue
            t = t or _trainer(config, "vgg11", w, variant, dataset)
            state, batch = t.initial_state(), t.train_source(0)
            print(f"compiling {name} ({n:,} parameters)", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            _, out = jax.block_until_ready(t.train_step(state, batch))
            jax.block_until_ready(t.probe_step(state, batch, out.grads, out.loss, t.etas))
            entries[name] = {
                "arch": t.config.model.arch,
                "width": w,
                "variant": variant,
                "parameters": n,
                "compile_s": time.perf_counter() - t0,
                "probe_strategy": t.probe_strategy,
            }
            calls[name] = {
                "train": lambda t=t, s=state, b=batch: t.train_step(s, b)[1].loss,
                "probe": lambda t=t, s=state, b=batch, o=out: t.probe_step(
                    s, b, o.grads, o.loss, t.etas
                ),
            }
    times = {name: {"train": [], "probe": []} for name in calls}
    for round_ in range(repeats):
        print(f"timing round {round_ + 1}/{repeats}", file=sys.stderr, flush=True)
        for name, fns in calls.items():
            for kind, fn in fns.items():
                times[name][kind].append(_timed(fn))
    for name, entry in entries.items():
        entry["train_step_s"] = statistics.median(times[name]["train"])
        entry["probe_s"] = statistics.median(times[name]["probe"])
        entry["probed_step_s"] = entry["train_step_s"] + entry["probe_s"]
    for pair in pairs:
        ours, vgg = entries[pair["network"]], entries[pair["vgg"]]
        pair["train_step_ratio"] = ours["train_step_s"] / vgg["train_step_s"]
        pair["probed_step_ratio"] = ours["probed_step_s"] / vgg["probed_step_s"]
    return {
        "machine": machine(runtime.describe()),
        "settings": {"batch_size": batch_size, "repeats": repeats, "data": "synthetic"},
        "results": entries,
        "pairs": pairs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    record = time_pairs(args.repeats, args.batch_size)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(record) + "\n")
    entries = record["results"]
    print(f"{record['machine']['backend']} ({record['machine']['cpu_count']} CPUs), batch "
          f"{args.batch_size}, medians of {args.repeats} alternating rounds")  # fmt: skip
    print(f"{'network':26s} {'params':>9s} {'train step':>11s} {'probed step':>12s}   / VGG-11")
    for pair in record["pairs"]:
        for name in (pair["network"], pair["vgg"]):
            e = entries[name]
            ratios = (
                f"{pair['train_step_ratio']:.2f}x / {pair['probed_step_ratio']:.2f}x"
                if name == pair["network"]
                else ""
            )
            print(
                f"{name:26s} {e['parameters']:9,d} {e['train_step_s'] * 1e3:9.1f}ms "
                f"{e['probed_step_s'] * 1e3:10.1f}ms   {ratios}"
            )
    print(f"appended to {args.out}")


if __name__ == "__main__":
    runtime.tune_process()  # as the landscape command tunes itself, before JAX starts
    main()
