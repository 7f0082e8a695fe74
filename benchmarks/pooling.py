"""The 2x2 max-pool as reduce_window (flax) against three element-wise comparisons (ours).

    python benchmarks/pooling.py [--norm batchnorm] [--repeats 7]

On the quick preset's network (VGG-11 at width 1/4, batch 128, the backend's default
convolution) it times, side by side in one process (alternating rounds, medians), one gradient
evaluation and one probe over 8 step sizes (the default strategy) with each pooling. Both give
the same numbers: the script checks the gradients are identical. Appends a JSON line to
``benchmarks/results/pooling.jsonl`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import flax.linen as nn
import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landscape import models
from landscape.app import runtime
from landscape.bench import machine
from landscape.probe import default_strategy, probe
from landscape.train import make_loss_fn

RESULTS = Path(__file__).resolve().parent / "results" / "pooling.jsonl"
POOLS = {
    "reduce_window": lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)),
    "comparisons": models.max_pool_2x2,
}


def build(pool_name: str, norm: str, batch: dict):
    """Returns jitted (gradient, probe) functions of the quick network using ``pool_name``."""
    model = models.create_model("vgg11", width=0.25, norm=norm, conv_impl="auto")
    variables = models.init_variables(model, jax.random.key(0))
    loss_fn = make_loss_fn(model)
    pool = POOLS[pool_name]
    etas = np.linspace(0.05, 0.4, 8, dtype=np.float32)
    strategy = default_strategy()

    def grad_fn(params, stats):
        return jax.grad(lambda p: loss_fn(p, stats, batch)[0])(params)

    def probe_fn(params, stats, grads):
        return probe(loss_fn, params, batch, etas, model_state=stats, grad=grads, strategy=strategy)

    # The pooling is looked up when the model is traced, so each function is traced (compiled)
    # while its pooling is in place.
    saved = models.max_pool_2x2
    models.max_pool_2x2 = pool
    try:
        params, stats = variables["params"], variables.get("batch_stats", {})
        grad_jit = jax.jit(grad_fn)
        grads = jax.block_until_ready(grad_jit(params, stats))
        probe_jit = jax.jit(probe_fn)
        jax.block_until_ready(probe_jit(params, stats, grads))
    finally:
        models.max_pool_2x2 = saved
    return grad_jit, probe_jit, (params, stats, grads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--norm", default="batchnorm")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--note", default="")
    args = parser.parse_args()
    runtime.tune_process()  # as the landscape command tunes itself, before JAX starts
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.standard_normal((128, 32, 32, 3), dtype=np.float32),
        "label": rng.integers(0, 10, 128).astype(np.int32),
    }
    built = {name: build(name, args.norm, batch) for name in POOLS}
    grads = [jax.tree.leaves(b[2][2]) for b in built.values()]
    for a, b in zip(*grads, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    times: dict[str, list[float]] = {f"{n}_{w}": [] for n in POOLS for w in ("grad", "probe")}
    for _ in range(args.repeats):
        for name, (grad_jit, probe_jit, (params, stats, g)) in built.items():
            t0 = time.perf_counter()
            jax.block_until_ready(grad_jit(params, stats))
            t1 = time.perf_counter()
            jax.block_until_ready(probe_jit(params, stats, g))
            t2 = time.perf_counter()
            times[f"{name}_grad"].append(t1 - t0)
            times[f"{name}_probe"].append(t2 - t1)
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "machine": {**machine(), **({"note": args.note} if args.note else {})},
        "settings": {"norm": args.norm, "width": 0.25, "batch_size": 128, "etas": 8},
        "median_s": med,
        "grad_ratio_ours_over_flax": med["comparisons_grad"] / med["reduce_window_grad"],
        "probe_ratio_ours_over_flax": med["comparisons_probe"] / med["reduce_window_probe"],
        "times_s": times,
    }
    RESULTS.parent.mkdir(exist_ok=True)
    with open(RESULTS, "a") as f:
        f.write(json.dumps(result) + "\n")
    print(f"{'':28s}{'reduce_window':>15s}{'comparisons':>15s}{'ratio':>8s}")
    for what in ("grad", "probe"):
        a, b = med[f"reduce_window_{what}"], med[f"comparisons_{what}"]
        print(f"{what + ' (ms)':28s}{1e3 * a:15.1f}{1e3 * b:15.1f}{b / a:8.2f}")


if __name__ == "__main__":
    main()
