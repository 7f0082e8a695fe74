"""Speed of a loss-landscape picture: seconds per grid point against one loss evaluation.

``python benchmarks/surfaces_bench.py [--preset quick] [--variant batchnorm] [--points 16]``
times, side by side in one process, a plain Python loop over a jitted point function and the
chunked evaluation (``lax.map`` and ``vmap``) of ``landscape.surfaces``, on synthetic data of
the preset's shape, and appends one JSON line to ``benchmarks/results/surfaces.jsonl``.
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--variant", default="batchnorm")
    parser.add_argument("--points", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results"))
    args = parser.parse_args()
    from landscape.app import runtime

    runtime.tune_process()  # as the landscape command tunes itself, before JAX starts

    from landscape.analyses.pictures import time_grid
    from landscape.bench import machine
    from landscape.config import preset
    from landscape.data import load_dataset

    config = preset(args.preset).replace(data="synthetic")
    dataset = load_dataset("synthetic", progress=False)
    result = time_grid(
        config,
        dataset,
        variant=args.variant,
        points=args.points,
        chunk=args.chunk,
        repeats=args.repeats,
        say=lambda message: print(message, file=sys.stderr),
    )
    result = {"machine": machine(), **result}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "surfaces.jsonl", "a") as f:
        f.write(json.dumps(result) + "\n")
    print(f"one loss evaluation: {result['loss_s'] * 1e3:.1f} ms")
    for name, seconds in result["per_point_s"].items():
        ratio = result["per_point_over_loss"][name]
        first = result["first_call_s"][name]
        print(
            f"{name:>5}: {seconds * 1e3:.1f} ms per point = {ratio:.2f} x one loss evaluation "
            f"(first call, with compilation: {first:.1f} s)"
        )


if __name__ == "__main__":
    main()
