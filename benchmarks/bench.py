"""Benchmarks from a checkout: ``python benchmarks/bench.py [landscape bench options]``.

Results are appended to ``benchmarks/results/bench.jsonl`` unless ``--out`` says otherwise.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landscape.app import runtime
from landscape.app.cli import app

if __name__ == "__main__":
    args = sys.argv[1:]
    if "--out" not in args:
        args += ["--out", str(Path(__file__).parent / "results")]
    runtime.tune_process()  # as the landscape command does, before JAX starts
    app(["bench", *args])
