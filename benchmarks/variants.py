"""Train-step time of each normalisation variant relative to BatchNorm, side by side in one process.

``python benchmarks/variants.py [--preset quick] [--batch-size 128] [--repeats 7]
[--placement before]``: the quick preset's network (VGG-11 at width 1/4, batch 128) on synthetic
data of CIFAR's shape (speed does not depend on the pixels). Appends one JSON line to
``benchmarks/results/variants.jsonl`` and prints the table.
"""

import argparse
import dataclasses
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landscape.app import runtime

VARIANTS = ("standard", "batchnorm", "noisy_batchnorm", "noisy_none", "l1", "l2", "linf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--placement", default="before")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    args = parser.parse_args()
    runtime.tune_process()  # as the landscape command tunes itself, before JAX starts

    from landscape.bench import time_variants
    from landscape.config import preset
    from landscape.data import synthetic_dataset

    config = preset(args.preset)
    config = config.replace(model=dataclasses.replace(config.model, placement=args.placement))
    if args.batch_size:
        config = config.replace(batch_size=args.batch_size)
    dataset = synthetic_dataset(seed=0, num_train=max(1024, config.batch_size), num_test=100)
    result = time_variants(
        config,
        dataset,
        tuple(args.variants.split(",")),
        repeats=args.repeats,
        progress=lambda m: print(m, file=sys.stderr, flush=True),
    )
    out = Path(__file__).parent / "results" / "variants.jsonl"
    out.parent.mkdir(exist_ok=True)
    with open(out, "a") as f:
        f.write(json.dumps(result) + "\n")
    m = result["machine"]
    print(f"{m['backend']} ({m['cpu_count']} CPUs), {result['settings']}")
    for name, r in result["results"].items():
        print(
            f"{name:16s} {r['train_step_s'] * 1e3:8.1f} ms  x{r['ratio']:.3f} of BN  "
            f"(compile {r['compile_s']:.1f} s)"
        )


if __name__ == "__main__":
    main()
