"""Our JAX probe against the eager PyTorch reference: same weights, same batch, same machine.

    python benchmarks/compare_torch.py --preset quick --variant batchnorm --data synthetic

1. Cross-check: the JAX probe and ``torch_reference.torch_probe`` on identical weights and batch
   (the initial state and the batch of step 0); prints the largest relative differences.
2. Timing, side by side in one process, alternating rounds, medians (as ``landscape.bench``):
   a JAX train step, the JAX probe (the trainer's default strategy), a torch train step
   (forward, backward, SGD step) and the torch probe. Both probes reuse the training gradient,
   so each costs K gradient evaluations and a probed step is train step + probe.
   The process runs with the ``landscape`` command's glibc malloc settings
   (``landscape.app.runtime``; ``--no-malloc-tuning`` leaves glibc's defaults), which PyTorch
   then shares.
3. Appends one JSON line to ``benchmarks/results/torch_vs_jax.jsonl`` and prints a table.

Needs the ``bench`` extra (torch); ``landscape`` itself never imports torch.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from torch_reference import (
    TorchVGG,
    load_flax_params,
    nhwc_to_nchw,
    torch_probe,
    torch_train_step,
)

from landscape.app import runtime
from landscape.bench import machine
from landscape.config import norm_for_variant, preset
from landscape.data import load_dataset
from landscape.models import resolved_conv_impls
from landscape.runs import Trainer

RESULTS = Path(__file__).resolve().parent / "results" / "torch_vs_jax.jsonl"
COMPARED = ("loss", "grad_dist", "step_norm", "loss0", "grad_norm")


def max_relative_difference(ours, reference) -> float:
    """Returns max |ours - reference| / |reference| over the elements (float64)."""
    ours = np.asarray(ours, np.float64)
    reference = np.asarray(reference, np.float64)
    return float(np.max(np.abs(ours - reference) / np.maximum(np.abs(reference), 1e-30)))


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def _torch_timer(device: torch.device) -> Callable[[Callable[[], Any]], float]:
    """Returns a timer for torch work on ``device``: CUDA runs asynchronously, so the clock stops
    only after the device has finished what the call queued."""

    def timed(fn: Callable[[], Any]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return timed


def compare(
    config,
    variant: str,
    *,
    data: str | None = None,
    repeats: int = 5,
    threads: int | None = None,
    device: str = "cpu",
    cudnn_benchmark: bool = False,
) -> dict[str, Any]:
    """Cross-checks and times one variant; returns ``machine``, ``settings`` and ``results``.

    ``device`` is torch's device (``cpu`` or ``cuda``); JAX uses its default backend, so on a GPU
    machine both sides run on the GPU. ``cudnn_benchmark`` lets cuDNN pick its fastest
    convolution algorithms, as many PyTorch training scripts do.
    """
    threads = threads or os.cpu_count() or 1
    torch.set_num_threads(threads)
    torch_device = torch.device(device)
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch_timed = _torch_timer(torch_device)
    dataset = load_dataset(data or config.data, progress=False)
    trainer = Trainer(config, variant, dataset)
    state = trainer.initial_state()
    batch = trainer.train_source(0)
    etas = trainer.etas

    # The torch model on the same weights, the same batch in NCHW.
    model = TorchVGG(config.model.arch, config.model.width, norm_for_variant(variant))
    load_flax_params(model, jax.device_get(state.params), jax.device_get(state.batch_stats))
    model.to(torch_device)
    images = nhwc_to_nchw(jax.device_get(batch["image"])).to(torch_device)
    labels = torch.from_numpy(np.asarray(batch["label"]).astype(np.int64)).to(torch_device)
    etas_np = np.asarray(etas)

    # 1. Cross-check (the first calls also compile the JAX programs).
    t0 = time.perf_counter()
    _, out = jax.block_until_ready(trainer.train_step(state, batch))
    compile_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = jax.device_get(
        jax.block_until_ready(trainer.probe_step(state, batch, out.grads, out.loss, etas))
    )
    compile_probe = time.perf_counter() - t0
    reference = torch_probe(model, images, labels, etas_np)
    agreement = {k: max_relative_difference(getattr(ours, k), reference[k]) for k in COMPARED}

    # 2. Timing. The torch train step runs on a copy reset to x before each call (untimed), so
    # every call starts where the JAX step starts; its gradient at x feeds the torch probe.
    stepped = copy.deepcopy(model)
    optimizer = torch.optim.SGD(stepped.parameters(), lr=config.optimizer.learning_rate)
    start_state = copy.deepcopy(model.state_dict())
    loss0, grads = torch_train_step(stepped, optimizer, images, labels)
    grads = [g.clone() for g in grads]

    def torch_step():
        stepped.load_state_dict(start_state)
        return torch_timed(lambda: torch_train_step(stepped, optimizer, images, labels))

    candidates: dict[str, Callable[[], float]] = {
        "jax_train_step": lambda: _timed(lambda: trainer.train_step(state, batch)),
        "jax_probe": lambda: _timed(
            lambda: trainer.probe_step(state, batch, out.grads, out.loss, etas)
        ),
        "torch_train_step": torch_step,
        "torch_probe": lambda: torch_timed(
            lambda: torch_probe(model, images, labels, etas_np, grads=grads, loss0=loss0)
        ),
    }
    for fn in candidates.values():  # warm-up: caches, thread pools, allocator
        fn()
    # Importing torch leaves ~140,000 objects for Python's cyclic garbage collector: a full
    # collection took ~45 ms, and one landing inside a timed call doubled a 36 ms JAX train step in
    # some rounds. Freeze them (neither side's work creates cycles worth collecting here).
    gc.collect()
    gc.freeze()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            times[name].append(fn())
    median = {name: statistics.median(ts) for name, ts in times.items()}
    jax_probed = median["jax_train_step"] + median["jax_probe"]
    torch_probed = median["torch_train_step"] + median["torch_probe"]
    results = {
        "agreement_max_rel_diff": agreement,
        "jax_train_step_s": median["jax_train_step"],
        "jax_probe_s": median["jax_probe"],
        "torch_train_step_s": median["torch_train_step"],
        "torch_probe_s": median["torch_probe"],
        "jax_probed_step_s": jax_probed,
        "torch_probed_step_s": torch_probed,
        "train_step_ratio_torch_over_jax": median["torch_train_step"] / median["jax_train_step"],
        "probe_ratio_torch_over_jax": median["torch_probe"] / median["jax_probe"],
        "probed_step_ratio_torch_over_jax": torch_probed / jax_probed,
        "jax_compile_train_step_s": compile_train,
        "jax_compile_probe_s": compile_probe,
        "times_s": times,
    }
    return {
        "machine": {
            **machine(runtime.describe()),
            "torch": torch.__version__,
            "torch_threads": threads,
            "torch_device": str(torch_device),
            "torch_device_name": torch.cuda.get_device_name(torch_device)
            if torch_device.type == "cuda"
            else None,
            "jax_backend": jax.default_backend(),
            "cudnn_benchmark": cudnn_benchmark,
        },
        "settings": {
            "preset": config.preset,
            "variant": variant,
            "data": dataset.name,
            "model": dataclasses.asdict(config.model_for(variant)),
            "conv_impl_resolved": resolved_conv_impls(config.model.arch, config.model.conv_impl),
            "batch_size": config.batch_size,
            "etas": etas_np.tolist(),
            "probe_strategy": trainer.probe_strategy,
            "repeats": repeats,
        },
        "results": results,
    }


def result_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """Returns (quantity, value) rows for the printed table."""
    r = result["results"]
    ms = 1e3
    rows = [(f"max rel. diff {k}", f"{v:.2e}") for k, v in r["agreement_max_rel_diff"].items()] + [
        ("JAX train step", f"{r['jax_train_step_s'] * ms:.1f} ms"),
        (
            f"JAX probe ({result['settings']['probe_strategy']})",
            f"{r['jax_probe_s'] * ms:.1f} ms",
        ),
        ("torch train step", f"{r['torch_train_step_s'] * ms:.1f} ms"),
        ("torch probe", f"{r['torch_probe_s'] * ms:.1f} ms"),
        ("JAX probed step (train + probe)", f"{r['jax_probed_step_s'] * ms:.1f} ms"),
        ("torch probed step (train + probe)", f"{r['torch_probed_step_s'] * ms:.1f} ms"),
        ("torch / JAX, train step", f"{r['train_step_ratio_torch_over_jax']:.2f}"),
        ("torch / JAX, probe", f"{r['probe_ratio_torch_over_jax']:.2f}"),
        ("torch / JAX, probed step", f"{r['probed_step_ratio_torch_over_jax']:.2f}"),
        (
            "JAX compile (train step, probe)",
            f"{r['jax_compile_train_step_s']:.1f} s, {r['jax_compile_probe_s']:.1f} s",
        ),
    ]
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--variant", default="batchnorm", choices=("batchnorm", "standard"))
    parser.add_argument("--data", default="synthetic", help="synthetic, cifar10 or a path")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads")
    parser.add_argument("--device", default="cpu", help="torch's device: cpu or cuda")
    parser.add_argument(
        "--cudnn-benchmark",
        action="store_true",
        help="let cuDNN choose its fastest convolution algorithms (torch.backends.cudnn.benchmark)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--no-malloc-tuning",
        dest="malloc_tuning",
        action="store_false",
        help="keep glibc's default malloc (the landscape command tunes it; both sides share it)",
    )
    args = parser.parse_args(argv)
    if args.malloc_tuning:
        # As the landscape command does (landscape/app/runtime.py). It is process-wide, so
        # PyTorch runs under it too (docs/performance.md says what it changes for each side).
        runtime.tune_malloc()

    config = preset(args.preset).replace(data=args.data)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.exit(2, f"compare_torch: torch {torch.__version__} sees no CUDA device\n")
    result = compare(
        config,
        args.variant,
        data=args.data,
        repeats=args.repeats,
        threads=args.threads,
        device=args.device,
        cudnn_benchmark=args.cudnn_benchmark,
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a") as f:
        f.write(json.dumps(result) + "\n")
    s = result["settings"]
    print(
        f"{s['preset']} / {s['variant']} / {s['data']}: batch {s['batch_size']}, "
        f"{len(s['etas'])} etas, {s['repeats']} rounds, medians"
    )
    rows = result_rows(result)
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    print(f"appended to {args.out}")
    return result


if __name__ == "__main__":
    runtime.tune_xla_cpu()  # the command's CPU flags, before JAX starts a backend
    main()
