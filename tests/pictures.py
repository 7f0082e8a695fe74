"""Picture records written by hand, for tests of figures and reports: a 2D surface, a 1D slice
and a trajectory with its path."""

import numpy as np

from landscape import surface_records as records
from landscape.results import RecordWriter


def fake_record(run_dir, variant, name, kind, axes, settings, values, info=None):
    """Writes ``RUN_DIR/<variant>/surfaces/<name>.jsonl`` holding ``values`` on ``axes``."""
    path = records.record_path(run_dir, variant, name)
    header = {"kind": kind, "settings": {**settings, "accuracy": False}, "axes": axes}
    if info is not None:
        header["info"] = info
    records.open_record(path, header)
    flat = np.ravel(values)
    points = [p for p in range(flat.size) if np.isfinite(flat[p])]
    with RecordWriter(path) as writer:
        writer.write([{"points": points, "loss": flat[points].tolist()}])
    return path


def fake_pictures(run_dir, variants=("standard", "batchnorm")) -> None:
    """A 2D surface ("bowl"), a 1D slice ("line") and a trajectory per variant."""
    a = np.linspace(-1, 1, 5)
    for k, variant in enumerate(variants):
        bowl = 2.0 + (1 + k) * (a[:, None] ** 2 + 0.5 * a[None, :] ** 2)
        settings = {"step": 10, "direction": "random", "seed": 0, "variant": variant}
        fake_record(run_dir, variant, "bowl", "surface", [[-1, 1, 5], [-1, 1, 5]], settings, bowl)
        fake_record(run_dir, variant, "line", "surface", [[-1, 1, 5]], settings, 2.0 + a**2)
        path = {"a": [0.8, 0.4, 0.1, 0.0], "b": [0.2, -0.1, 0.05, 0.0], "steps": [0, 5, 10, 15]}
        info = {"explained_variance_ratio": [0.9, 0.08], "path": path}
        fake_record(run_dir, variant, "trajectory", "trajectory", [[-1, 1, 5], [-1, 1, 5]],
                    {"variant": variant}, bowl, info)  # fmt: skip


def fake_run(run_dir, variants=("standard", "batchnorm")):
    """A run directory with a config, a few training metrics and the pictures above."""
    import json
    from pathlib import Path

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"preset": "test", "data": "synthetic", "steps": 20, "variants": list(variants)}
    (run_dir / "config.json").write_text(json.dumps(config))
    for variant in variants:
        (run_dir / variant).mkdir(exist_ok=True)
        rows = [{"step": s, "loss": 2.0 - 0.05 * s, "accuracy": 0.1} for s in range(20)]
        text = "".join(json.dumps(r) + "\n" for r in rows)
        (run_dir / variant / "metrics.jsonl").write_text(text)
    fake_pictures(run_dir, variants)
    return run_dir
